"""kill -9 during a burst of IMAP APPENDs (store/maildir/steps.py: file work on the loop, the
fsyncs in the sync helper process): every APPEND answered OK is in the folder, whole, once,
and under the UID its APPENDUID named; nothing visible is partial."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import trustme

from mailkeep.store.maildir import uidlist
from tests.support.daemon import start_process_daemon, write_config
from tests.support.imap import RawImap, ServerClosed, append

CLIENTS = 4
BODY_LINES = 200  # ~14 KB per message: large enough that a kill can land mid-write


def message(ident: str) -> bytes:
    body = b"".join(b"line %04d of message %s\r\n" % (i, ident.encode()) for i in range(BODY_LINES))
    return (f"From: bob@example.test\r\nSubject: {ident}\r\nMessage-ID: <{ident}@t>\r\n\r\n"
            .encode() + body + f"END-OF-{ident}\r\n".encode())


def test_kill_9_during_appends_loses_nothing_acknowledged(tmp_path: Path,
                                                         ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca, imap_listeners=True)
    d = start_process_daemon(config, ca)
    acked: dict[str, int] = {}  # ident -> the UID its APPENDUID named
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        try:
            c = RawImap.tls(d, timeout=5)
            c.greeting()
            c.login("bob")
            c.ok("SELECT INBOX")  # a snapshot kept: APPEND takes the steps path
            while not stop.is_set():
                ident = f"c{n}m{i}"
                i += 1
                r = append(c, "INBOX", message(ident))
                m = re.search(rb"\[APPENDUID \d+ (\d+)\]", r.text)
                assert m, r
                with lock:
                    acked[ident] = int(m.group(1))
        except (AssertionError, OSError, ServerClosed):
            return  # the daemon is gone

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 60:
                break
        time.sleep(0.02)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    d.stop()

    with lock:
        acknowledged = dict(acked)
    assert len(acknowledged) >= 60, "the burst did not get going"
    inbox = d.data_dir / "mail" / "bob"
    index = uidlist.read(inbox)
    assert index is not None
    seen: dict[str, list[str]] = {}
    for f in d.maildir_files("bob"):
        data = f.read_bytes()
        m = re.search(rb"Message-ID: <(c\d+m\d+)@t>", data)
        assert m, f"unrecognisable file {f.name}"
        ident = m.group(1).decode()
        # Whole or absent: a visible message is complete to its last byte.
        assert data.endswith(f"END-OF-{ident}\r\n".encode()), f"partial message {f.name}"
        seen.setdefault(ident, []).append(uidlist.filename_base(f.name))
    missing = set(acknowledged) - set(seen)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    duplicated = [i for i, bases in seen.items() if len(bases) > 1]
    assert not duplicated, f"stored twice: {duplicated[:5]}"
    for ident, uid in acknowledged.items():
        record = index.records.get(seen[ident][0])
        assert record is not None and record.uid == uid, \
            f"{ident}: APPENDUID said {uid}, the index says {record}"
