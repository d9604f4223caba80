"""The incremental snapshot (mailbox._records_since: reuse the records of messages whose
file name did not change) must say exactly what a snapshot from scratch says, after any
mix of changes made behind its back: deliveries into new/, claims into cur/, flag renames,
keyword letters, deletions, a message moved away and back (a new UID), a new keyword."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store.maildir import mailbox
from mailkeep.store.maildir.durable import write_message
from mailkeep.store.maildir.layout import ensure_maildir, unique_name

MSG = b"Subject: s\r\n\r\nbody\r\n"

Step = tuple[str, int, str]
steps = st.lists(st.tuples(
    st.sampled_from(["deliver", "claim", "flags", "delete", "away-and-back", "keyword"]),
    st.integers(0, 50),
    st.sampled_from(["", "S", "FS", "ST", "a", "Sab", "DS"])), max_size=25)


def _files(root: Path) -> list[tuple[str, str]]:
    return sorted((sub, name) for sub in ("new", "cur") for name in os.listdir(root / sub))


def _apply(root: Path, step: Step, n: int) -> None:
    kind, pick, letters = step
    files = _files(root)
    if kind == "deliver" or not files:
        base = unique_name(n)
        write_message(root, base, f"new/{base}", MSG)
        return
    sub, name = files[pick % len(files)]
    base = name.split(":", 1)[0]
    if kind == "claim":
        os.rename(root / sub / name, root / "cur" / f"{base}:2,")
    elif kind == "flags":
        os.rename(root / sub / name, root / "cur" / f"{base}:2,{letters}")
    elif kind == "delete":
        os.unlink(root / sub / name)
    elif kind == "away-and-back":
        # Gone at one snapshot, back at the next: the index forgets it, then lists it anew.
        os.rename(root / sub / name, root / "tmp" / name)
        mailbox.snapshot(root, "INBOX")
        os.rename(root / "tmp" / name, root / sub / name)
    elif kind == "keyword":
        with open(root / "dovecot-keywords", "a") as f:
            f.write(f"{pick % 26} kw{pick}\n")


def _same(a: mailbox.FolderCache, b: mailbox.FolderCache) -> None:
    assert a.snapshot.messages == b.snapshot.messages
    assert a.snapshot.unclaimed == b.snapshot.unclaimed
    assert (a.snapshot.uidvalidity, a.snapshot.uidnext) == (b.snapshot.uidvalidity,
                                                            b.snapshot.uidnext)
    assert a.snapshot.modseqs.keys() == b.snapshot.modseqs.keys()
    assert dict(a.where) == dict(b.where)
    assert dict(a.facts) == dict(b.facts)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_incremental_snapshot_equals_a_full_one(plan: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        account = Path(tmp) / "alice"
        ensure_maildir(account)
        previous = mailbox.snapshot(account, "INBOX")
        for n, step in enumerate(plan):
            _apply(account, step, n)
            incremental = mailbox.snapshot(account, "INBOX", previous, reuse=False)
            full = mailbox.snapshot(account, "INBOX")
            _same(incremental, full)
            previous = incremental
