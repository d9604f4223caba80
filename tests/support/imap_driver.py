"""A fake IMAP driver for the sans-IO machine: a MemoryStore, canned accounts, and the real
executor (server/imap_commands.py), all without sockets or an event loop.

MemoryStore's coroutines never suspend, so each executor call is run to completion with
one send(None): the transcripts and hypothesis properties stay synchronous and fast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailkeep.config.model import SpecialUseConfig
from mailkeep.proto.imap.events import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    ClientId,
    Close,
    Execute,
    Idle,
    IdleDone,
    Reply,
    StartCompression,
    StartTls,
)
from mailkeep.proto.imap.machine import AUTHENTICATIONFAILED, ImapMachine
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.server.imap_commands import ImapExecutor
from mailkeep.server.imap_folders import ImapOptions
from mailkeep.store.memory import MemoryStore
from mailkeep.store.quota import Quota

T = TypeVar("T")
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
WHEN = dt.datetime(2026, 7, 17, 9, 44, 25, tzinfo=dt.UTC)
MESSAGES: list[tuple[bytes, tuple[str, ...]]] = [
    (b"From: Fred Foobar <foobar@example.test>\r\nTo: mooch@example.test\r\n"
     b"Subject: afternoon meeting\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
     b"Message-Id: <B27397-0100000@example.test>\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
     b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n", ("\\Seen",)),
    (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: lunch\r\n\r\n"
     b"Pizza at noon.\r\n", ()),
    (b"From: carol@example.test\r\nTo: alice@example.test\r\nSubject: report\r\n"
     b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
     b"Content-Type: text/plain\r\n\r\nSee the attachment.\r\n--XX\r\n"
     b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     b"AAECAw==\r\n--XX--\r\n", ("\\Flagged",)),
]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (MemoryStore) to completion. It may give the loop a
    turn (asyncio.sleep(0) yields None: the executor's time slices); nothing else."""
    while True:
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if yielded is not None:
            coro.close()
            raise RuntimeError("the coroutine suspended: not a MemoryStore call?")


def seeded_store(messages: Iterable[tuple[bytes, tuple[str, ...]]] = MESSAGES) -> MemoryStore:
    store = MemoryStore(uidvalidity=3857529045)
    for data, flags in messages:
        run_sync(store.append("alice", "INBOX", data, flags, WHEN))
    run_sync(store.create_folder("alice", "Archive"))
    run_sync(store.create_folder("alice", "Archive.2026"))
    run_sync(store.subscribe("alice", "INBOX"))
    return store


@dataclass
class FakeImapDriver:
    machine: ImapMachine
    store: MemoryStore
    out: bytearray = field(default_factory=bytearray)
    closed: str | None = None
    tls_upgrades: int = 0
    executor: ImapExecutor | None = None
    # Transcripts keep their folders as seeded unless they ask for the default folders
    # (%options provision=1); a quota only when they set one.
    options: ImapOptions = field(default_factory=lambda: ImapOptions(
        special_use=SpecialUseConfig(create=False)))
    client_ids: list[object] = field(default_factory=list)
    compressing: bool = False

    def pump(self) -> None:
        m = self.machine
        while True:
            ev = m.next_event()
            if ev is NEED_DATA:
                return
            if ev is PAUSED:
                raise AssertionError("fake driver left a request unanswered")
            if isinstance(ev, Reply):
                self.out += ev.data
            elif isinstance(ev, AuthRequest):
                creds = ev.credentials
                if PASSWORDS.get(creds.login) != creds.password:
                    m.auth_failed(ev.tag, AUTHENTICATIONFAILED, "Authentication failed.")
                else:
                    self.executor = ImapExecutor(self.store, creds.login, MimeCache(),
                                                 self.out.extend, self._flush,
                                                 options=self.options)
                    m.auth_succeeded(ev.tag, creds.login)
            elif isinstance(ev, StartTls):
                self.out += ev.reply
                self.tls_upgrades += 1
                m.tls_started()
            elif isinstance(ev, Execute):
                assert self.executor is not None
                outcome = run_sync(self.executor.run(ev.command, ev.session))
                m.executed(outcome)
            elif isinstance(ev, StartCompression):
                # No DEFLATE here (tests/integration/test_imap_compress.py has the real
                # thing): the machine's side of the switch only.
                self.out += ev.reply
                self.compressing = True
                m.compression_started()
            elif isinstance(ev, ClientId):
                self.client_ids.append(ev.fields)
            elif isinstance(ev, Idle | IdleDone):
                pass  # no change feed here: the transcript sends DONE itself
            elif isinstance(ev, Close):
                self.closed = ev.reason
                return

    async def _flush(self) -> None:
        return None

    def feed(self, data: bytes) -> None:
        self.machine.receive_data(data)
        self.pump()


def new_driver(*, tls: bool = True, starttls: bool = False, max_errors: int = 20,
               max_line: int = 65_536, max_literal: int = 25 * 1024 * 1024,
               store: MemoryStore | None = None, provision: bool = False,
               quota: Quota | None = None) -> FakeImapDriver:
    m = ImapMachine(tls_active=tls, starttls_offered=starttls, max_errors=max_errors,
                    max_line=max_line, max_literal=max_literal)
    d = FakeImapDriver(m, store if store is not None else seeded_store())
    d.options = ImapOptions(quota=quota or Quota(),
                            special_use=SpecialUseConfig(create=provision))
    d.out += m.greeting()
    return d
