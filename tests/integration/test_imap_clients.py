"""Real IMAP clients against the daemon over verified TLS: aioimaplib, curl, mbsync (isync)."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.imap import (
    BARE_ACCOUNT,
    MULTIPART,
    ca_file,
    message,
    password,
    running_imap_daemon,
    session,
    submit,
)


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    # A bare account: these tests count folders. The default folders a new account gets
    # (RFC 6154) are tested in test_imap_extensions.py.
    yield from running_imap_daemon(tmp_path, ca, loop_kind, imap=BARE_ACCOUNT)


# -- aioimaplib (GPL-3.0: a test-only dependency, never imported by src/) ---------------------

async def aio_session(d: RunningDaemon) -> None:
    aioimaplib = pytest.importorskip("aioimaplib")
    ctx = d.client_context()
    client = aioimaplib.IMAP4_SSL("127.0.0.1", d.imaps_port, ssl_context=ctx, timeout=10)
    await client.wait_hello_from_server()
    r = await client.login("bob", password("bob"))
    assert r.result == "OK", r
    r = await client.select("INBOX")
    assert r.result == "OK"
    assert any(line.endswith(b" EXISTS") and line.startswith(b"2") for line in r.lines), r
    r = await client.fetch("1", "(RFC822)")
    assert r.result == "OK"
    literal = next(x for x in r.lines if isinstance(x, bytearray))
    on_disk = sorted(f.read_bytes() for f in d.maildir_files("bob"))
    assert bytes(literal) in on_disk
    r = await client.uid("fetch", "1:*", "(UID FLAGS)")
    fetched = [x for x in r.lines if isinstance(x, bytes) and re.match(rb"\d+ FETCH ", x)]
    assert r.result == "OK" and len(fetched) == 2, r.lines
    r = await client.search("SUBJECT", "aio")
    assert r.result == "OK" and r.lines[0].split()[-1] in (b"1", b"2")
    r = await client.append(message("appended by aioimaplib"), mailbox="INBOX",
                            flags=r"(\Seen)")
    assert r.result == "OK"
    if client.has_capability("IDLE"):
        idle = await client.idle_start(timeout=10)
        await asyncio.to_thread(submit, d, message("pushed while idle"))
        push: list[bytes] = []
        while not any(x.endswith(b"EXISTS") for x in push if isinstance(x, bytes)):
            msg = await client.wait_server_push(timeout=10)
            assert msg != "stop_wait_server_push", "no EXISTS pushed during IDLE"
            push += msg if isinstance(msg, list) else [msg]
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        assert any(x == b"4 EXISTS" for x in push), push
    r = await client.logout()
    assert r.result == "OK"


def test_aioimaplib_login_select_fetch_append(imapd: RunningDaemon) -> None:
    submit(imapd, message("aio one"))
    submit(imapd, MULTIPART)
    asyncio.run(aio_session(imapd))
    assert len(imapd.maildir_files("bob")) >= 3


def test_aioimaplib_idle_if_advertised(imapd: RunningDaemon) -> None:
    c = session(imapd, select=None)
    caps = c.ok("CAPABILITY").untagged_named("CAPABILITY")[0].upper().split()
    c.close()
    if b"IDLE" not in caps:
        pytest.skip("the server does not advertise IDLE (RFC 2177)")

    async def run() -> None:
        aioimaplib = pytest.importorskip("aioimaplib")
        client = aioimaplib.IMAP4_SSL("127.0.0.1", imapd.imaps_port,
                                      ssl_context=imapd.client_context(), timeout=10)
        await client.wait_hello_from_server()
        assert (await client.login("bob", password("bob"))).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        idle = await client.idle_start(timeout=10)
        await asyncio.to_thread(submit, imapd, message("idle push"))
        msg = await client.wait_server_push(timeout=10)
        assert msg != "stop_wait_server_push"
        lines = msg if isinstance(msg, list) else [msg]
        assert b"1 EXISTS" in lines, lines
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        await client.logout()

    asyncio.run(run())


def test_aioimaplib_refuses_a_wrong_certificate(imapd: RunningDaemon) -> None:
    aioimaplib = pytest.importorskip("aioimaplib")

    async def run() -> None:
        ctx = ssl.create_default_context()  # the test CA is not trusted here
        client = aioimaplib.IMAP4_SSL("127.0.0.1", imapd.imaps_port, ssl_context=ctx,
                                      timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.wait_hello_from_server()

    asyncio.run(run())


# -- curl imaps:// ----------------------------------------------------------------------------

def curl(d: RunningDaemon, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    port = d.imaps_port
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--url", f"imaps://{HOSTNAME}:{port}{path}",
         "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--cacert", ca_file(d),
         "--user", f"bob:{password('bob')}", *args],
        capture_output=True, timeout=60)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/check.sh")
def test_curl_lists_fetches_by_uid_searches_and_appends(imapd: RunningDaemon,
                                                        tmp_path: Path) -> None:
    submit(imapd, message("curl zero"))
    submit(imapd, message("curl one", b".dotted\r\nplain\r\n"))
    c = session(imapd)
    c.ok("CREATE Archive")
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")  # now UID 2 is sequence 1: a fetch by UID must not confuse them
    c.close()
    [on_disk] = [f.read_bytes() for f in imapd.maildir_files("bob")]

    r = curl(imapd, "/")
    assert r.returncode == 0, r.stderr
    listing = [ln.rsplit(b" ", 1) for ln in r.stdout.replace(b"\r\n", b"\n").splitlines()]
    assert all(head.startswith(b"* LIST") for head, _ in listing), listing
    assert {name.strip(b'"') for _, name in listing} == {b"INBOX", b"Archive"}

    r = curl(imapd, "/INBOX;UID=2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == on_disk
    r = curl(imapd, "/INBOX;UID=1")
    assert r.returncode != 0 or r.stdout == b""  # expunged

    r = curl(imapd, "/INBOX", "--request", "SEARCH SUBJECT curl")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"* SEARCH 1"

    upload = tmp_path / "upload.eml"
    upload.write_bytes(message("uploaded with curl"))
    r = curl(imapd, "/Archive", "-T", str(upload))
    assert r.returncode == 0, r.stderr
    c = session(imapd, select="Archive")
    f = c.ok("FETCH 1 BODY.PEEK[]").fetches()[1]
    assert f["BODY[]"] == upload.read_bytes()
    c.close()


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/check.sh")
def test_curl_refuses_wrong_certificate_name(imapd: RunningDaemon) -> None:
    port = imapd.imaps_port
    r = subprocess.run(["curl", "-sS", "--max-time", "30", "--url",
                        f"imaps://wrong.example.test:{port}/", "--resolve",
                        f"wrong.example.test:{port}:127.0.0.1", "--cacert", ca_file(imapd),
                        "--user", f"bob:{password('bob')}"], capture_output=True, timeout=60)
    assert r.returncode != 0


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/check.sh")
def test_curl_starttls_on_143(imapd: RunningDaemon) -> None:
    submit(imapd, message("via starttls"))
    port = imapd.imap_port
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--ssl-reqd",
         "--url", f"imap://{HOSTNAME}:{port}/INBOX;UID=1",
         "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--cacert", ca_file(imapd),
         "--user", f"bob:{password('bob')}"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"Subject: via starttls" in r.stdout


# -- mbsync (isync): a real syncing client ----------------------------------------------------

def mbsyncrc(d: RunningDaemon, local: Path, rc: Path, mech: str = "LOGIN") -> None:
    rc.write_text(
        "IMAPAccount srv\n"
        "Host localhost\n"
        f"Port {d.imaps_port}\n"
        "User bob\n"
        f"Pass {password('bob')}\n"
        "SSLType IMAPS\n"           # isync 1.4 names (1.5 renamed it TLSType)
        "SSLVersions TLSv1.2 TLSv1.3\n"
        f"CertificateFile {ca_file(d)}\n"
        f"AuthMechs {mech}\n"
        "\n"
        "IMAPStore remote\n"
        "Account srv\n"
        "\n"
        "MaildirStore local\n"
        f"Path {local}/\n"
        f"Inbox {local}/INBOX\n"
        "SubFolders Verbatim\n"
        "\n"
        "Channel mirror\n"
        "Far :remote:\n"
        "Near :local:\n"
        "Patterns *\n"
        "Create Both\n"
        "SyncState *\n"
        "Sync All\n"
        "Expunge None\n"
        "CopyArrivalDate yes\n")
    rc.chmod(0o600)


def run_mbsync(rc: Path, home: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                       timeout=120, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def local_messages(folder: Path) -> dict[bytes, str]:
    """Subject line -> Maildir flag letters, for a local Maildir folder."""
    out = {}
    for sub in ("new", "cur"):
        for f in (folder / sub).iterdir():
            subject = next(ln for ln in f.read_bytes().splitlines()
                           if ln.startswith(b"Subject:"))
            out[subject.rstrip(b"\r")] = f.name.split(":2,")[1] if ":2," in f.name else ""
    return out


def server_flags(d: RunningDaemon, mailbox: str) -> dict[bytes, set[str]]:
    c = session(d, select=mailbox)
    f = {}
    if c.ok("SEARCH ALL").search():
        f = c.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])").fetches()
    c.close()
    return {v["BODY[HEADER.FIELDS (SUBJECT)]"].strip(): {x.upper() for x in v["FLAGS"]}
            - {"\\RECENT"} for v in f.values()}


NEEDS_MBSYNC = pytest.mark.skipif(
    not shutil.which("mbsync"),
    reason="mbsync is not installed (apt-get install isync; scripts/check.sh)")


def mbsync_daemon(tmp_path: Path, ca: trustme.CA) -> RunningDaemon:
    root = tmp_path / "site"
    config = write_config(root, ca, imap_listeners=True)
    # isync 1.4 insists on a subject CN and checks the name against DNS SANs or the CN
    leaf = ca.issue_cert(HOSTNAME, "localhost", "127.0.0.1", common_name="localhost")
    leaf.private_key_pem.write_to_path(str(root / "certs/mailkeep.key"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "certs/mailkeep.crt"))
    return start_thread_daemon(config, ca, "asyncio")


def server_tree(d: RunningDaemon) -> None:
    """INBOX and a folder tree with flagged, seen and answered messages."""
    submit(d, message("inbox seen"))
    submit(d, message("inbox flagged"))
    submit(d, message("inbox plain"))
    c = session(d)
    c.ok("STORE 1 +FLAGS (\\Seen)")
    c.ok("STORE 2 +FLAGS (\\Flagged)")
    c.ok("CREATE Work")
    c.ok("CREATE Work.Sub")
    c.ok("CREATE Sent")
    c.with_literal("APPEND Work (\\Seen \\Flagged)", message("work both"))
    c.with_literal("APPEND Work.Sub (\\Answered \\Seen)", message("sub answered"))
    c.with_literal("APPEND Sent (\\Seen)", message("sent one"))
    c.close()


def mirror_down(d: RunningDaemon, tmp_path: Path) -> tuple[Path, Path, Path]:
    local = tmp_path / "local"
    local.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    rc = tmp_path / "mbsyncrc"
    mbsyncrc(d, local, rc)
    run_mbsync(rc, home)
    assert local_messages(local / "INBOX") == {b"Subject: inbox seen": "S",
                                               b"Subject: inbox flagged": "F",
                                               b"Subject: inbox plain": ""}
    assert local_messages(local / "Work") == {b"Subject: work both": "FS"}
    assert local_messages(local / "Work" / "Sub") == {b"Subject: sub answered": "RS"}
    assert local_messages(local / "Sent") == {b"Subject: sent one": "S"}
    body = next((local / "Work" / "cur").iterdir()).read_bytes().replace(b"\r\n", b"\n")
    body = re.sub(rb"(?m)^X-TUID: .*\n", b"", body)  # mbsync's own tracking header
    assert body == message("work both").replace(b"\r\n", b"\n")
    return local, home, rc


@NEEDS_MBSYNC
def test_mbsync_mirrors_a_folder_tree_and_flags_both_ways(tmp_path: Path,
                                                          ca: trustme.CA) -> None:
    d = mbsync_daemon(tmp_path, ca)
    try:
        server_tree(d)
        local, home, rc = mirror_down(d, tmp_path)
        # local flag changes go up
        cur = local / "INBOX" / "cur"
        for f in [*cur.iterdir(), *(local / "INBOX" / "new").iterdir()]:
            if f.name.endswith(":2,F"):  # flagged -> +seen (a seen message lives in cur/)
                f.rename(cur / (f.name[:-len(":2,F")] + ":2,FS"))
            elif f.name.endswith(":2,S"):  # seen -> unseen
                f.rename(cur / (f.name[:-len(":2,S")] + ":2,"))
        run_mbsync(rc, home)
        assert server_flags(d, "INBOX") == {b"Subject: inbox seen": set(),
                                            b"Subject: inbox flagged": {"\\FLAGGED",
                                                                        "\\SEEN"},
                                            b"Subject: inbox plain": set()}
        assert server_flags(d, "Work.Sub") == {b"Subject: sub answered": {"\\ANSWERED",
                                                                          "\\SEEN"}}
        # server-side changes come down: a flag and a new message in a sub-folder
        c = session(d, select="Work.Sub")
        c.ok("STORE 1 +FLAGS (\\Flagged)")
        c.with_literal("APPEND Work.Sub (\\Draft)", message("sub new"))
        c.close()
        run_mbsync(rc, home)
        assert local_messages(local / "Work" / "Sub") == {b"Subject: sub answered": "FRS",
                                                          b"Subject: sub new": "D"}
        # and a further run changes nothing
        before = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
        run_mbsync(rc, home)
        after = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
        assert [x for x in before if ".mbsyncstate" not in x] == [
            x for x in after if ".mbsyncstate" not in x]
    finally:
        d.stop()


@NEEDS_MBSYNC
def test_mbsync_pushes_new_local_folders_and_messages_up(tmp_path: Path,
                                                         ca: trustme.CA) -> None:
    d = mbsync_daemon(tmp_path, ca)
    try:
        server_tree(d)
        local, home, rc = mirror_down(d, tmp_path)
        new_folder = local / "Projects"
        for sub in ("cur", "new", "tmp"):
            (new_folder / sub).mkdir(parents=True)
        (new_folder / "cur" / "1700000000.1_1.localhost:2,FS").write_bytes(
            message("local flagged seen").replace(b"\r\n", b"\n"))
        (new_folder / "new" / "1700000001.2_1.localhost").write_bytes(
            message("local unseen").replace(b"\r\n", b"\n"))
        (local / "Work" / "new" / "1700000002.3_1.localhost").write_bytes(
            message("work added locally").replace(b"\r\n", b"\n"))
        run_mbsync(rc, home)
        c = session(d, select=None)
        names = {line.rsplit(b" ", 1)[1].strip(b'"')
                 for line in c.ok('LIST "" *').untagged_named("LIST")}
        c.close()
        assert {b"INBOX", b"Work", b"Work.Sub", b"Sent", b"Projects"} <= names
        assert server_flags(d, "Projects") == {
            b"Subject: local flagged seen": {"\\FLAGGED", "\\SEEN"},
            b"Subject: local unseen": set()}
        assert server_flags(d, "Work") == {b"Subject: work both": {"\\FLAGGED", "\\SEEN"},
                                           b"Subject: work added locally": set()}
        c = session(d, select="Projects")
        c.ok("STORE 2 +FLAGS (\\Answered)")
        c.close()
        run_mbsync(rc, home)
        assert local_messages(new_folder)[b"Subject: local unseen"] == "R"
    finally:
        d.stop()
