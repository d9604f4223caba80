"""`mailkeep queue ...` and `mailkeep dkim ...` as an administrator runs them: against a real
daemon process (requests through spool/control/) and against a stopped one (the spool
directly), and a DKIM key made by keygen, loaded by the daemon, signing real mail.

A message to a remote domain stays queued: `[delivery] dns_servers` points at a loopback UDP
port that is bound but never answers, so every MX lookup times out (451 4.4.3) after
`dns_timeout`; `retry_schedule = [3600]` keeps the daemon from trying again by itself, so
every further attempt seen here is one the CLI asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
import trustme

from mailkeep.cli import main
from mailkeep.relay.spool import Spool
from tests.support.daemon import RunningDaemon, start_process_daemon, write_config
from tests.support.wait import eventually

# Bounds for waiting on the daemon (never timing assertions: a slow machine only waits).
WAIT = 60.0
REMOTE = "carol@unroutable.example"
SELECTOR = "mk2026"


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def mk(*args: str, cwd: Path | None = None) -> Result:
    """The CLI's main() in this process (a separate process per call would cost a second of
    imports each; test_cli.py and a few calls below cover the entry point itself)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def mk_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A loopback UDP port that is bound (no ICMP refusal) but never read: DNS times out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def site(tmp_path: Path, ca: trustme.CA, silent_dns: str) -> Path:
    config = write_config(tmp_path, ca)
    with config.open("a") as f:
        f.write(f'\n[delivery]\ndns_servers = ["{silent_dns}"]\ndns_timeout = 0.3\n'
                "retry_schedule = [3600]\nmta_sts = false\n")
    return config


@pytest.fixture
def running(site: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    d = start_process_daemon(site, ca)
    try:
        yield d
    finally:
        d.stop()


def queue(config: Path, *args: str) -> Result:
    return mk("queue", *args, "--config", str(config))


def show(config: Path, entry_id: str) -> dict[str, Any]:
    r = queue(config, "show", entry_id, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def listing(config: Path) -> dict[str, Any]:
    r = queue(config, "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait_for(what: str, check: Callable[[], bool], bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def send(d: RunningDaemon, subject: str = "queued", to: str = REMOTE) -> str:
    """alice sends through submission; the spool id from the 250 reply."""
    s = d.smtp()
    try:
        s.login("alice", "alice-secret-pw")
        s.mail("alice@example.test")
        code, _ = s.rcpt(to)
        assert code == 250
        code, reply = s.data(f"From: alice@example.test\r\nTo: <{to}>\r\n"
                             f"Subject: {subject}\r\n\r\nhello\r\n".encode())
        assert code == 250, reply
    finally:
        s.quit()
    found = re.search(rb"queued as ([0-9a-f]+)", reply)
    assert found is not None
    return found.group(1).decode()


def attempts(config: Path, entry_id: str) -> int:
    """Straight from the spool (polling through the CLI would cost a process per look)."""
    return Spool(config.parent / "data" / "spool").load(entry_id).attempts


def first_attempt_done(config: Path, entry_id: str) -> None:
    wait_for("the first delivery attempt", lambda: attempts(config, entry_id) >= 1)


# -- with the daemon running ----------------------------------------------------------------------

def test_queue_while_the_daemon_runs(site: Path, running: RunningDaemon) -> None:
    entry_id = send(running)
    first_attempt_done(site, entry_id)

    r = mk_process("queue", "list", "--config", str(site))  # the real entry point
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith(entry_id))
    assert "<alice@example.test>" in row and " 1/1 " in row and "451 4.4.3" in row
    pid = running.proc.pid if running.proc else 0
    assert lines[-1].startswith("1 message, oldest ")
    assert lines[-1].endswith(f"the daemon is running (pid {pid})")
    data = listing(site)
    assert data["count"] == 1 and data["daemon_running"] and data["daemon_pid"] == pid

    info = show(site, entry_id)
    assert info["recipients"][0]["address"] == REMOTE
    assert info["recipients"][0]["status"] == "pending"
    assert info["recipients"][0]["reply"].startswith("451 4.4.3")
    assert "Subject: queued" in info["header"] and "body" not in info
    text = queue(site, "show", entry_id, "--body").stdout
    assert "      451 4.4.3" in text and "body:\nhello" in text

    # retry: the daemon tries again now (its own schedule says in an hour).
    before = info["attempts"]
    r = queue(site, "retry", entry_id)
    assert r.returncode == 0, r.stderr
    assert "(by the daemon)" in r.stdout
    wait_for("the retry", lambda: attempts(site, entry_id) > before)

    # hold: recorded, shown, and retry refused until release.
    r = queue(site, "hold", entry_id)
    assert r.returncode == 0 and "put on hold (by the daemon)" in r.stdout, r
    assert show(site, entry_id)["hold"] is True
    assert " held " in next(x for x in queue(site, "list").stdout.splitlines()
                            if x.startswith(entry_id))
    r = queue(site, "retry", entry_id)
    assert r.returncode == 1 and "release" in r.stderr
    before = attempts(site, entry_id)
    r = queue(site, "flush")
    assert r.returncode == 0 and "all 1 messages are on hold" in r.stdout
    r = queue(site, "release", entry_id)
    assert r.returncode == 0 and "released (by the daemon)" in r.stdout, r
    # A release schedules the message at once.
    wait_for("the attempt after release", lambda: attempts(site, entry_id) > before)
    assert show(site, entry_id)["hold"] is False

    # flush: every message not on hold, now.
    before = attempts(site, entry_id)
    r = queue(site, "flush")
    assert r.returncode == 0 and "the daemon is trying 1 message(s) now" in r.stdout, r
    wait_for("the flush", lambda: attempts(site, entry_id) > before)

    # delete: gone from the daemon and the disk; no notice to anyone.
    r = queue(site, "delete", entry_id)
    assert r.returncode == 0 and "deleted (by the daemon)" in r.stdout, r
    assert not (running.data_dir / "spool" / "queue" / entry_id).exists()
    assert listing(site)["count"] == 0
    assert queue(site, "list").stdout.startswith("the queue is empty; the daemon is running")

    # The daemon keeps working: new mail is still accepted and queued.
    assert send(running, "after") != entry_id


def test_unknown_ids_and_usage_errors(site: Path, running: RunningDaemon) -> None:
    for args in (("show", "0123456789abcdef012"), ("retry", "0123456789abcdef012"),
                 ("delete", "../../mailkeep.toml"), ("hold", "nope"), ("release", "")):
        r = queue(site, *args)
        assert r.returncode == 1, (args, r)
        assert "no message" in r.stderr and "queue list" in r.stderr
    assert (site.parent / "mailkeep.toml").exists()
    r = queue(site, "retry")
    assert r.returncode == 2 and "--all" in r.stderr
    r = queue(site, "retry", "abc", "--all")
    assert r.returncode == 2
    # Nothing was left in control/ for the daemon to trip over later.
    assert list((running.data_dir / "spool" / "control").iterdir()) == []


def test_queue_size_is_logged(site: Path, ca: trustme.CA) -> None:
    # Issue 8: "queue size and oldest age in the logs" -- at least when a restart finds
    # mail waiting.
    d = start_process_daemon(site, ca)
    try:
        send(d)
    finally:
        d.stop()
    d = start_process_daemon(site, ca)
    try:
        # Logged by the queue's scheduler once it runs: wait for it (a daemon stopped at
        # once under load stopped before its first round, and the line was not there).
        assert eventually(lambda: re.search(r"queue: 1 messages, oldest \d+s old",
                                            (site.parent / "daemon.log").read_text())
                          is not None, timeout=30)
    finally:
        d.stop()
    log = (site.parent / "daemon.log").read_text()
    assert "resuming 1 messages left by the last run" in log


# -- with the daemon stopped ---------------------------------------------------------------------

def test_queue_while_the_daemon_is_stopped(site: Path, ca: trustme.CA) -> None:
    d = start_process_daemon(site, ca)
    try:
        kept, dropped, held = send(d, "kept"), send(d, "dropped"), send(d, "held")
        for entry_id in (kept, dropped, held):
            first_attempt_done(site, entry_id)
    finally:
        d.stop()
    r = queue(site, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("3 messages, oldest ")
    assert r.stdout.splitlines()[-1].endswith("the daemon is not running")

    r = queue(site, "hold", held)
    assert r.returncode == 0 and r.stdout.strip() == f"{held} put on hold", r
    r = queue(site, "delete", dropped)
    assert r.returncode == 0 and r.stdout.strip() == f"{dropped} deleted", r
    r = queue(site, "retry", kept)
    assert r.returncode == 0 and "when the daemon starts" in r.stdout, r
    assert {m["id"]: m["hold"] for m in listing(site)["messages"]} == {kept: False,
                                                                       held: True}
    before = {i: attempts(site, i) for i in (kept, held)}

    # The next start honours all three: the retried one is tried at once (its own
    # schedule says in an hour), the held one is not, the deleted one is gone.
    d = start_process_daemon(site, ca)
    try:
        wait_for("the retried message's attempt", lambda: attempts(site, kept) > before[kept])
        assert attempts(site, held) == before[held]
        assert show(site, held)["hold"] is True
        assert {m["id"] for m in listing(site)["messages"]} == {kept, held}
        # And the running daemon takes requests about what was changed while it was down.
        r = queue(site, "release", held)
        assert r.returncode == 0 and "(by the daemon)" in r.stdout, r
        wait_for("the released message's attempt",
                 lambda: attempts(site, held) > before[held])
    finally:
        d.stop()


def test_a_daemon_that_does_not_answer_gets_its_request_withdrawn(site: Path,
                                                                   ca: trustme.CA) -> None:
    d = start_process_daemon(site, ca)
    try:
        entry_id = send(d)
        first_attempt_done(site, entry_id)
    finally:
        d.stop()
    # A hung daemon: it holds the spool's lock and never looks at control/.
    hung = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mailkeep.relay.spool import Spool\n"
        f"fd = Spool(Path({str(d.data_dir / 'spool')!r})).lock()\n"
        "print('locked', flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    try:
        assert hung.stdout is not None and hung.stdout.readline().strip() == "locked"
        r = mk_process("queue", "hold", entry_id, "--wait", "0.5", "--config", str(site))
        assert r.returncode == 75, r  # EX_TEMPFAIL: try again
        assert "did not answer" in r.stderr and "withdrawn" in r.stderr
        assert list((d.data_dir / "spool" / "control").iterdir()) == []
        assert show(site, entry_id)["hold"] is False
        # A second daemon cannot start on a spool in use.
        r = mk_process("serve", "--config", str(site))
        assert r.returncode == 78
        assert "another mailkeep daemon uses this data_dir" in r.stderr
        assert f"pid {hung.pid}" in r.stderr
    finally:
        hung.kill()
        hung.wait(10)


# -- DKIM ----------------------------------------------------------------------------------------

def zone_value(record: str) -> str:
    """The TXT value of a zone-file line: its character-strings joined."""
    return "".join(re.findall(r'"([^"]*)"', record))


def test_dkim_keygen_show_and_a_daemon_that_signs_with_the_key(site: Path,
                                                               ca: trustme.CA) -> None:
    folder = site.parent
    r = mk("dkim", "keygen", "example.test", "--selector", SELECTOR, "--config", str(site))
    assert r.returncode == 0, r.stderr
    key = folder / "dkim" / f"example.test.{SELECTOR}.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (folder / "dkim").stat().st_mode & 0o777 == 0o700
    record = next(x.strip() for x in r.stdout.splitlines() if " IN TXT " in x)
    assert record.startswith(f"{SELECTOR}._domainkey.example.test. IN TXT ")
    assert zone_value(record).startswith("v=DKIM1; k=rsa; p=")
    config_lines = [x.strip() for x in r.stdout.splitlines()
                    if x.strip().startswith(("[dkim.", "selector =", "key ="))]
    assert config_lines == ['[dkim.domains."example.test"]', f'selector = "{SELECTOR}"',
                            f'key = "dkim/example.test.{SELECTOR}.key"']

    # The printed lines are exactly what the config needs.
    with site.open("a") as f:
        f.write("\n" + "\n".join(config_lines) + "\n")
    r = mk("check-config", "--config", str(site))
    assert r.returncode == 0, r.stderr
    r = mk("dkim", "show", "--config", str(site))
    assert r.returncode == 0, r.stderr
    assert f"  selector:  {SELECTOR}" in r.stdout and "  type:      rsa" in r.stdout
    assert f"  record:    {record}" in r.stdout
    assert "status:    OK" in r.stdout

    # A key others can read is reported, by show and by check-config.
    key.chmod(0o640)
    r = mk("dkim", "show", "--config", str(site))
    assert r.returncode == 1 and "readable by others (mode 0640)" in r.stdout
    r = mk("check-config", "--config", str(site))
    assert r.returncode == 78
    assert f'dkim.domains."example.test".key: {key}: DKIM private key is readable' in r.stderr
    key.chmod(0o600)

    # Never over an existing key without --force.
    before = key.read_bytes()
    r = mk("dkim", "keygen", "example.test", "--selector", SELECTOR, "--config", str(site))
    assert r.returncode == 1 and "--force" in r.stderr
    assert key.read_bytes() == before

    # The daemon loads the key and signs outgoing mail with it; the signature verifies
    # against the record keygen printed.
    d = start_process_daemon(site, ca)
    try:
        entry_id = send(d, "signed")
        r = queue(site, "show", entry_id, "--body", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
    finally:
        d.stop()
    message = (info["header"] + "\r\n" + info["body"]).encode()
    assert message.startswith(b"DKIM-Signature:")
    signature = message.split(b"\r\nReceived:")[0].decode()
    assert re.search(r"\bd=example\.test;", signature)
    assert re.search(rf"\bs={SELECTOR};", signature)
    published = zone_value(record).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return published if name == f"{SELECTOR}._domainkey.example.test.".encode() else None

    assert dkim.verify(message, dnsfunc=dnsfunc)


def test_dkim_keygen_refusals_and_variants(tmp_path: Path, site: Path) -> None:
    r = mk("dkim", "keygen", "elsewhere.example", "--config", str(site))
    assert r.returncode == 1 and "not one of the local domains" in r.stderr
    r = mk("dkim", "keygen", "example.test", "--selector", "bad_selector!", "--config",
           str(site))
    assert r.returncode == 1 and "selector" in r.stderr
    assert not (site.parent / "dkim").exists() or not any((site.parent / "dkim").iterdir())

    # Ed25519, then --force replaces it.
    r = mk("dkim", "keygen", "example.test", "--type", "ed25519", "--config", str(site))
    assert r.returncode == 0, r.stderr
    key = site.parent / "dkim" / "example.test.mailkeep.key"  # the default selector
    first = key.read_bytes()
    assert "k=ed25519" in r.stdout and "keep an RSA key" in r.stdout
    r = mk("dkim", "keygen", "example.test", "--type", "ed25519", "--force", "--config",
           str(site))
    assert r.returncode == 0, r.stderr
    assert key.read_bytes() != first and key.stat().st_mode & 0o777 == 0o600

    # Without --config: under ./dkim/, and the config line names the file absolutely.
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = mk("dkim", "keygen", "example.org", cwd=work)
    assert r.returncode == 0, r.stderr
    made = work / "dkim" / "example.org.mailkeep.key"
    assert made.stat().st_mode & 0o777 == 0o600
    assert f'key = "{made}"' in r.stdout

    # A config that names a key not made yet cannot be loaded, but keygen still works
    # with it (that is how the key gets made) and says the selector is changing.
    with site.open("a") as f:
        f.write('\n[dkim.domains."example.test"]\nselector = "mailkeep"\n'
                'key = "dkim/example.test.mailkeep.key"\n')
    key.unlink()
    assert mk("check-config", "--config", str(site)).returncode == 78
    r = mk("dkim", "keygen", "example.test", "--selector", "next", "--config", str(site))
    assert r.returncode == 0, r.stderr
    assert "The config signs with selector 'mailkeep' now" in r.stdout


def test_dkim_show_lists_unsigned_domains(site: Path) -> None:
    r = mk("dkim", "show", "--config", str(site))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("example.test: not signed (no key; `mailkeep dkim keygen")
