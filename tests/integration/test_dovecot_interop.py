"""Dovecot interop, both ways, with Debian's dovecot (dovecot-core / dovecot-imapd).

A private Dovecot instance (its own config, base_dir and log under a temp dir; no listeners,
only the auth service doveadm needs) uses `mail_location = maildir:DATA/mail/%u`, our layout.
(a) Dovecot writes (doveadm save / flags / mailbox create / subscribe / expunge) and our
    snapshot, folder list and subscriptions show what `doveadm fetch`, `mailbox list` and
    `mailbox status` report: same UIDs, UIDVALIDITY, UIDNEXT, flags, keywords, sizes, dates.
(b) We write (append with flags and keywords, copy, store, expunge, non-ASCII folders,
    subscriptions) and Dovecot reports the same.

Dovecot refuses mail access as root, so when the tests run as root the mail tree is handed
to `nobody` before Dovecot touches it (root reads it regardless).
"""

from __future__ import annotations

import asyncio
import grp
import os
import poplib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from mailkeep.store import FlagMode
from mailkeep.store.maildir import MaildirStore
from tests.support.daemon import start_thread_daemon, write_config

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
DOVEADM = shutil.which("doveadm")
DOVECOT_POP3 = "/usr/lib/dovecot/pop3"

pytestmark = pytest.mark.skipif(
    DOVECOT is None or DOVEADM is None,
    reason="Dovecot is not installed (apt-get install dovecot-core dovecot-imapd)")

USER = "alice"


@dataclass
class Dovecot:
    home: Path
    config: Path
    data: Path
    proc: subprocess.Popen[bytes]
    owner: tuple[int, int] | None  # (uid, gid) to chown the mail tree to, when root
    pop3_port: int | None = None

    @property
    def maildir(self) -> Path:
        return self.data / "mail" / USER

    def handover(self) -> None:
        """Give the mail tree to Dovecot's mail user (root only: Dovecot refuses uid 0)."""
        if self.owner is None:
            return
        uid, gid = self.owner
        for dirpath, dirnames, filenames in os.walk(self.data / "mail"):
            os.chown(dirpath, uid, gid)
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)

    def adm(self, *args: str, stdin: bytes | None = None) -> str:
        self.handover()
        out = subprocess.run([DOVEADM or "doveadm", "-c", str(self.config), *args],
                             input=stdin, capture_output=True, timeout=60, check=False)
        assert out.returncode == 0, (args, out.stderr.decode(errors="replace"))
        return out.stdout.decode()

    def table(self, *args: str) -> list[dict[str, str]]:
        lines = self.adm("-f", "tab", *args).rstrip("\n").split("\n")
        if not lines or not lines[0]:
            return []
        head = lines[0].split("\t")
        return [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:] if line]

    def folders(self) -> set[str]:
        return {line for line in self.adm("mailbox", "list", "-u", USER).split("\n") if line}

    def subscribed(self) -> list[str]:
        return [line for line in self.adm("mailbox", "list", "-s", "-u", USER).split("\n")
                if line]

    def status(self, folder: str) -> dict[str, int]:
        row = self.table("mailbox", "status", "-u", USER, "messages uidvalidity uidnext",
                         folder)[0]
        return {k: int(v) for k, v in row.items() if k != "mailbox"}

    def messages(self, folder: str) -> list[tuple[int, frozenset[str], int, int]]:
        rows = self.table("fetch", "-u", USER, "uid flags size.virtual date.received.unixtime",
                          "mailbox", folder, "all")
        return [(int(r["uid"]),
                 frozenset(f for f in r["flags"].split() if f != "\\Recent"),
                 int(r["size.virtual"]), int(r["date.received.unixtime"])) for r in rows]


def _config(home: Path, data: Path, owner: tuple[int, int] | None,
            pop3_port: int | None = None) -> str:
    if owner is None:
        uid, gid = os.getuid(), os.getgid()
        me = pwd.getpwuid(uid).pw_name
        users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
    else:
        uid, gid = owner
        users = ""
    protocols = ""
    if pop3_port is not None:
        # A plaintext POP3 listener on loopback (any password: passdb nopassword), with
        # Dovecot's default pop3_uidl_format %08Xu%08Xv.
        protocols = "pop3"
        users += f"""ssl = no
disable_plaintext_auth = no
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
    return f"""
base_dir = {home}/run
state_dir = {home}/state
log_path = {home}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
{users}first_valid_uid = 1
first_valid_gid = 1
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{data}/mail/%u
userdb {{
  driver = static
  args = home={data}/mail/%u
}}
passdb {{
  driver = static
  args = nopassword=y
}}
namespace inbox {{
  inbox = yes
  separator = .
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_dovecot(pop3_port: int | None = None) -> Iterator[Dovecot]:
    # Short path: Dovecot's unix sockets live under base_dir (sun_path is 108 octets).
    home = Path(tempfile.mkdtemp(prefix="mkdv"))
    owner: tuple[int, int] | None = None
    if os.getuid() == 0:
        owner = (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    os.chmod(home, 0o755)
    data = home / "data"
    (data / "mail").mkdir(parents=True)
    config = home / "dovecot.conf"
    config.write_text(_config(home, data, owner, pop3_port))
    proc = subprocess.Popen([DOVECOT or "dovecot", "-F", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not (home / "run" / "auth-userdb").exists() or (
            pop3_port is not None and not _listening(pop3_port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = (home / "dovecot.log").read_text() if (home / "dovecot.log").exists() else ""
            proc.kill()
            pytest.fail(f"dovecot did not start: {err} {log}")
        time.sleep(0.05)
    running = Dovecot(home, config, data, proc, owner, pop3_port)
    if owner is not None:
        os.chown(data / "mail", *owner)
    try:
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with no listeners: doveadm only."""
    yield from _start_dovecot()


@pytest.fixture
def dovecot_pop3() -> Iterator[Dovecot]:
    """Dovecot with a POP3 listener on loopback (needs dovecot-pop3d)."""
    if not os.path.exists(DOVECOT_POP3):
        pytest.skip("Dovecot's POP3 server is not installed (apt-get install dovecot-pop3d)")
    yield from _start_dovecot(pop3_port=_free_port())


def dovecot_version() -> str:
    out = subprocess.run([DOVECOT or "dovecot", "--version"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip()


def _ours(store: MaildirStore, folder: str) -> list[tuple[int, frozenset[str], int, int]]:
    snap = asyncio.run(store.snapshot(USER, folder))
    return [(m.uid, m.flags, m.size, int(m.internaldate.timestamp())) for m in snap.messages]


def test_we_read_what_dovecot_wrote(dovecot: Dovecot) -> None:
    print("dovecot", dovecot_version())
    dv = dovecot
    dv.adm("mailbox", "create", "-u", USER, "Sent", "Archive.2026", "Entwürfe", "Ünïcode.子",
           "a&b")
    for i in range(4):
        dv.adm("save", "-u", USER, stdin=f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
    dv.adm("save", "-u", USER, "-m", "Entwürfe", stdin=b"Subject: lf\n\nbare LF\n")
    dv.adm("flags", "add", "-u", USER, "\\Seen $Label1 Junk", "mailbox", "INBOX", "uid", "2")
    dv.adm("flags", "add", "-u", USER, "\\Answered \\Flagged \\Draft NonJunk", "mailbox",
           "INBOX", "uid", "3")
    dv.adm("flags", "add", "-u", USER, "\\Deleted", "mailbox", "INBOX", "uid", "1")
    dv.adm("expunge", "-u", USER, "mailbox", "INBOX", "uid", "1")
    dv.adm("flags", "add", "-u", USER, "\\Seen Junk", "mailbox", "Entwürfe", "all")
    dv.adm("mailbox", "subscribe", "-u", USER, "Sent", "Entwürfe", "Archive.2026")

    store = MaildirStore(dv.data)
    try:
        folders = asyncio.run(store.list_folders(USER))
        assert {f.name for f in folders} == dv.folders()
        assert {f.name for f in folders if not f.selectable} == {"Archive", "Ünïcode"}
        assert asyncio.run(store.subscriptions(USER)) == dv.subscribed()
        for folder in ("INBOX", "Entwürfe", "Sent", "Archive.2026", "Ünïcode.子", "a&b"):
            status = dv.status(folder)
            snap = asyncio.run(store.snapshot(USER, folder))
            assert (snap.uidvalidity, snap.uidnext, len(snap.messages)) == \
                (status["uidvalidity"], status["uidnext"], status["messages"]), folder
            assert _ours(store, folder) == dv.messages(folder), folder
        inbox = asyncio.run(store.snapshot(USER, "INBOX"))
        assert [m.uid for m in inbox.messages] == [2, 3, 4]
        assert inbox.messages[0].flags == {"\\Seen", "$Label1", "Junk"}
        body = asyncio.run(store.read_message(USER, "INBOX", inbox.messages[0].key))
        assert body == b"Subject: m1\r\n\r\nbody 1\r\n"  # stored with LF, read as CRLF

        # ... and then we change Dovecot's messages, and Dovecot sees our changes.
        asyncio.run(store.store_flags(USER, "INBOX", [2], FlagMode.REMOVE, ["Junk"]))
        asyncio.run(store.store_flags(USER, "INBOX", [4], FlagMode.ADD, ["\\Flagged", "New"]))
        assert asyncio.run(store.copy(USER, "INBOX", [2, 3], "Sent")) == {2: 1, 3: 2}
        assert asyncio.run(store.append(USER, "INBOX", b"Subject: ours\r\n\r\nx\r\n")) == 5
        for folder in ("INBOX", "Sent"):
            assert _ours(store, folder) == dv.messages(folder), folder
        assert dv.status("INBOX")["uidnext"] == 6
    finally:
        store.close()


def test_dovecot_reads_what_we_wrote(dovecot: Dovecot) -> None:
    dv = dovecot
    store = MaildirStore(dv.data)
    when = datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC)

    async def write() -> None:
        await store.deliver(USER, b"Subject: delivered\r\n\r\npop3 path\r\n")
        for name in ("Sent", "Archive.2026", "Entwürfe", "Ünïcode.子", "a&b", "Tilde~.x"):
            await store.create_folder(USER, name)
        await store.append(USER, "INBOX", b"Subject: 1\r\n\r\none\r\n", ["\\Seen", "$Label1"],
                           when)
        await store.append(USER, "INBOX", b"Subject: 2\n\nbare LF\n",
                           ["\\Answered", "\\Flagged", "\\Draft", "Junk"], when)
        await store.append(USER, "INBOX", b"Subject: 3\r\n\r\nthree\r\n", ["\\Deleted"], when)
        await store.append(USER, "Entwürfe", b"Subject: draft\r\n\r\nd\r\n",
                           ["\\Draft", "NonJunk"], when)
        await store.store_flags(USER, "INBOX", [2], FlagMode.ADD, ["\\Seen", "Work"])
        await store.copy(USER, "INBOX", [2, 3], "Archive.2026")
        await store.expunge(USER, "INBOX")
        await store.claim_recent(USER, "Archive.2026")
        for name in ("Sent", "Entwürfe", "Archive.2026", "Ünïcode.子"):
            await store.subscribe(USER, name)
        await store.unsubscribe(USER, "Sent")
        await store.rename_folder(USER, "Ünïcode", "Übersicht")

    try:
        asyncio.run(write())
        ours = asyncio.run(store.list_folders(USER))
        assert {f.name for f in ours} == dv.folders()
        assert dv.subscribed() == asyncio.run(store.subscriptions(USER)) == \
            ["Entwürfe", "Archive.2026", "Ünïcode.子"]
        for info in ours:
            if not info.selectable:
                continue
            snap = asyncio.run(store.snapshot(USER, info.name))
            status = dv.status(info.name)
            assert (snap.uidvalidity, snap.uidnext, len(snap.messages)) == \
                (status["uidvalidity"], status["uidnext"], status["messages"]), info.name
            assert dv.messages(info.name) == _ours(store, info.name), info.name
        inbox = dv.messages("INBOX")
        assert [uid for uid, *_ in inbox] == [1, 2, 3]  # 4 (\\Deleted) was expunged
        assert inbox[0][1] == frozenset()
        assert inbox[1][1] == {"\\Seen", "$Label1", "Work"}
        assert inbox[2][1] == {"\\Answered", "\\Flagged", "\\Draft", "Junk"}
        assert inbox[2][2] == len(b"Subject: 2\r\n\r\nbare LF\r\n")  # W=, the CRLF size
        archive = dv.messages("Archive.2026")
        assert [(uid, flags) for uid, flags, *_ in archive] == \
            [(1, {"\\Seen", "$Label1", "Work"}),
             (2, {"\\Answered", "\\Flagged", "\\Draft", "Junk"})]
        dates = {date for *_, date in dv.messages("Archive.2026")}
        assert dates == {int(when.timestamp())}
        body = dv.adm("fetch", "-u", USER, "text", "mailbox", "Entwürfe", "uid", "1")
        assert "Subject: draft" in body
        # A record appended in place (header N left behind, as Dovecot itself does).
        uid = asyncio.run(store.append(USER, "INBOX", b"Subject: 5\r\n\r\nfive\r\n", [],
                                       when))
        lines = (dv.maildir / "dovecot-uidlist").read_bytes().split(b"\n")
        assert lines[-2].startswith(b"5 :") and b" N5 " in lines[0] + b" "
        assert (uid, dv.status("INBOX")["uidnext"]) == (5, 6)
        assert [u for u, *_ in dv.messages("INBOX")] == [1, 2, 3, 5]
    finally:
        store.close()


def test_pop3_uidl_is_byte_identical_to_dovecots(dovecot_pop3: Dovecot,
                                                ca: trustme.CA) -> None:
    """A POP3 client that leaves mail on the server and moves from Dovecot to mailkeep must
    see the same unique-ids, or it downloads everything again (issue 7, item 18): the same
    Maildir, Dovecot's UIDL and ours, compared byte for byte on the wire."""
    dv = dovecot_pop3
    assert dv.pop3_port is not None
    store = MaildirStore(dv.data)
    try:
        for i in range(11):  # UIDs 10 and 11 are "0000000a", "0000000b"
            asyncio.run(store.deliver(USER, f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()))
        asyncio.run(store.snapshot(USER, "INBOX"))  # we assign the UIDs of these
    finally:
        store.close()
    dv.adm("save", "-u", USER, stdin=b"Subject: saved by dovecot\r\n\r\nx\r\n")

    theirs = poplib.POP3("127.0.0.1", dv.pop3_port, timeout=30)
    try:
        theirs.user(USER)
        theirs.pass_("any")
        dovecot_list = theirs.uidl()[1]
        dovecot_one = theirs.uidl(11)
    finally:
        theirs.quit()
    assert len(dovecot_list) == 12

    config = write_config(dv.home, ca, pop3_listeners=True)  # data_dir: dv.home / "data"
    ours_daemon = start_thread_daemon(config, ca)
    try:
        ours = ours_daemon.pop3s(timeout=30)
        try:
            ours.user(USER)
            ours.pass_("alice-secret-pw")
            mailkeep_list = ours.uidl()[1]
            mailkeep_one = ours.uidl(11)
        finally:
            ours.quit()
    finally:
        ours_daemon.stop()
    print("dovecot", dovecot_one, "mailkeep", mailkeep_one)
    assert mailkeep_list == dovecot_list
    assert mailkeep_one.split()[1:] == dovecot_one.split()[1:]
    assert dovecot_one.split()[2][:8] == b"0000000b"  # lowercase hex, as Dovecot sends it
