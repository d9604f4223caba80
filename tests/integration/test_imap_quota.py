"""RFC 9208 QUOTA against the real daemon: GETQUOTAROOT (imaplib), NO [OVERQUOTA] for APPEND,
COPY and MULTIAPPEND, and local delivery to a full account: retried with 452 4.2.2, then
bounced with 552 5.2.2 once `quota_full_retry` has passed. Usage counts every folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.imap import close_all, login, message, session, submit
from tests.support.wait import eventually


def quota_daemon(root: Path, ca: trustme.CA, loop_kind: str, store: str) -> RunningDaemon:
    config = write_config(root, ca, imap_listeners=True)
    with config.open("a") as f:
        f.write("[store]\n" + store)
    return start_thread_daemon(config, ca, loop_kind)


@pytest.fixture
def quotad(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    d = quota_daemon(tmp_path, ca, loop_kind, "quota = 4096\nquota_messages = 10\n")
    try:
        yield d
    finally:
        close_all()
        d.stop()


def inbox_files(d: RunningDaemon, user: str) -> list[Path]:
    root = d.data_dir / "mail" / user
    return [p for s in ("new", "cur") if (root / s).is_dir() for p in (root / s).iterdir()]


def test_getquotaroot_and_overquota(quotad: RunningDaemon) -> None:
    im = login(quotad)
    typ, data = im.getquotaroot("INBOX")
    assert typ == "OK"
    assert data[0] == [b'"INBOX" ""'] and data[1] == [b'"" (STORAGE 0 4 MESSAGE 0 10)']
    im.create("Archive")
    assert im.append("Archive", None, None, message("a", b"x" * 1500 + b"\r\n"))[0] == "OK"
    typ, data = im.getquota('""')
    assert typ == "OK" and data == [b'"" (STORAGE 2 4 MESSAGE 1 10)']  # other folders count
    typ, data = im.append("INBOX", None, None, message("big", b"y" * 3000 + b"\r\n"))
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    im.select("Archive")
    assert im.copy("1", "Archive")[0] == "OK"  # 2 x 1.6 KB fits
    typ, data = im.copy("1:2", "INBOX")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    im.logout()
    c = session(quotad, select=None)
    r = c.ok("STATUS Archive (MESSAGES DELETED DELETED-STORAGE)")
    assert r.untagged == [b'STATUS "Archive" (MESSAGES 2 DELETED 0 DELETED-STORAGE 0)']
    # a MULTIAPPEND over the quota stores none of its messages
    small = message("s")
    tag = c.next_tag()
    c.send(f"{tag} APPEND INBOX {{{len(small)}}}\r\n".encode())
    c.continuation()
    c.send(small + b" {1200}\r\n")
    c.continuation()
    c.send(b"z" * 1200 + b"\r\n")
    r = c.until_tagged(tag)
    assert (r.status, r.code) == ("NO", "OVERQUOTA")
    assert c.ok("SELECT INBOX").number("EXISTS") == 0
    c.ok("LOGOUT")


def test_delivery_to_a_full_account_is_retried(quotad: RunningDaemon) -> None:
    submit(quotad, message("fits"))
    assert eventually(lambda: len(inbox_files(quotad, "bob")) == 1)
    submit(quotad, message("too big", (b"q" * 70 + b"\r\n") * 80))
    runner = quotad.daemon.runner  # type: ignore[union-attr]

    def deferred() -> bool:
        return any("4.2.2" in r.reply for e in list(runner.entries.values())
                   for r in e.recipients)
    assert eventually(deferred)
    assert len(inbox_files(quotad, "bob")) == 1
    assert not any(b"5.2.2" in p.read_bytes() for p in inbox_files(quotad, "alice"))


def test_delivery_to_a_full_account_bounces_after_the_retry_time(
        tmp_path: Path, ca: trustme.CA) -> None:
    d = quota_daemon(tmp_path, ca, "asyncio", "quota = 2048\nquota_full_retry = 0.001\n")
    try:
        submit(d, message("too big", (b"q" * 70 + b"\r\n") * 80))

        def bounced() -> bool:
            return any(b"5.2.2" in p.read_bytes() for p in inbox_files(d, "alice"))
        assert eventually(bounced, timeout=20)
        assert inbox_files(d, "bob") == []
    finally:
        close_all()
        d.stop()
