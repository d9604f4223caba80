"""A fake POP3 driver for the sans-IO machine: canned accounts, messages and answers.

Runs Pop3Machine without sockets: the transcripts and the hypothesis properties use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailkeep.proto.pop3 import (
    AUTH,
    IN_USE,
    NEED_DATA,
    PAUSED,
    SYS_TEMP,
    AuthRequest,
    Close,
    Entry,
    MessageEncoder,
    Pop3Machine,
    Reply,
    Retrieve,
    StartTls,
    Update,
)

MESSAGES: dict[str, bytes] = {
    "k1": b"Subject: one\r\nFrom: a@example.test\r\n\r\nfirst body\r\nsecond line\r\n",
    "k2": b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n",
    "k3": b"Subject: bare lf\n\nline one\nline two\n",
}
ENTRIES = [
    Entry("k1", len(MESSAGES["k1"]), "0000000100000064"),
    Entry("k2", len(MESSAGES["k2"]), "0000000200000064"),
    Entry("k3", len(MESSAGES["k3"]) + MESSAGES["k3"].count(b"\n"), "0000000300000064"),
]
PASSWORDS = {"alice": "alice-pw", "locked": "locked-pw", "broken": "broken-pw"}


@dataclass
class FakeDriver:
    machine: Pop3Machine
    out: bytearray = field(default_factory=bytearray)
    closed: str | None = None
    deleted: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    tls_upgrades: int = 0
    chunk: int = 7  # message bytes are handed to the encoder in chunks this small

    def pump(self) -> None:
        """Handle events until the machine needs data."""
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
                self.authenticate(ev)
            elif isinstance(ev, StartTls):
                self.out += ev.reply
                self.tls_upgrades += 1
                m.tls_started()
            elif isinstance(ev, Retrieve):
                self.retrieve(ev)
            elif isinstance(ev, Update):
                self.deleted += ev.deleted
                m.update_done(0)
            elif isinstance(ev, Close):
                self.closed = ev.reason
                return

    def authenticate(self, ev: AuthRequest) -> None:
        creds = ev.credentials
        if PASSWORDS.get(creds.login) != creds.password:
            self.machine.auth_failed(AUTH, "Authentication failed.")
        elif creds.login == "locked":
            self.machine.auth_failed(IN_USE, "Mailbox is locked by another POP3 session.")
        elif creds.login == "broken":
            self.machine.auth_failed(SYS_TEMP, "Mailbox unavailable, try again later.")
        else:
            self.machine.auth_succeeded(ENTRIES)

    def retrieve(self, ev: Retrieve) -> None:
        data = MESSAGES[ev.key]
        enc = MessageEncoder(ev.lines)
        self.out += self.machine.retrieve_started(ev)
        for i in range(0, len(data), self.chunk):
            self.out += enc.feed(data[i:i + self.chunk])
            if enc.done:
                break
        self.out += enc.finish()
        if ev.lines is None:
            self.seen.append(ev.key)
        self.machine.retrieve_done()

    def feed(self, data: bytes) -> None:
        self.machine.receive_data(data)
        self.pump()


def new_driver(*, tls: bool = True, starttls: bool = False, max_line: int = 2048,
               max_errors: int = 20) -> FakeDriver:
    m = Pop3Machine(tls_active=tls, starttls_offered=starttls, max_line=max_line,
                    max_errors=max_errors)
    d = FakeDriver(m)
    d.out += m.greeting()
    return d


def run_chunks(chunks: Iterable[bytes], **kwargs: object) -> FakeDriver:
    d = new_driver(**kwargs)  # type: ignore[arg-type]
    for c in chunks:
        d.feed(c)
        if d.closed:
            break
    return d
