"""observe/shared.py: how the answering worker folds the other workers' figures into its own
(summed, largest, earliest, or its own alone), and which files it trusts."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from mailkeep.observe import shared


def families() -> list:  # type: ignore[type-arg]
    r = CollectorRegistry()
    c = Counter("mailkeep_logins", "logins", ["protocol", "outcome"], registry=r)
    c.labels("imap", "ok").inc(3)
    out = list(r.collect())
    queue = GaugeMetricFamily("mailkeep_queue_messages", "queued")
    queue.add_metric([], 2)
    start = GaugeMetricFamily("mailkeep_start_time_seconds", "start")
    start.add_metric([], 1000)
    return [*out, queue, start]


def values(fams: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[type-arg]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def test_merge_sums_takes_the_largest_and_keeps_its_own() -> None:
    mine = families()
    theirs = {k: v for k, v in shared.samples_of(families()).items()}
    created = [k for k in theirs if k[1] == "mailkeep_logins_created"]
    for k in created:
        theirs[k] = 1.0  # created long before ours
    theirs[("mailkeep_queue_messages", "mailkeep_queue_messages", ())] = 7
    theirs[("mailkeep_logins", "mailkeep_logins_total",
            (("outcome", "failed"), ("protocol", "pop3")))] = 5
    got = values(list(shared.merge(mine, [theirs])))
    assert got[("mailkeep_logins_total", (("outcome", "ok"), ("protocol", "imap")))] == 6
    assert got[("mailkeep_logins_total", (("outcome", "failed"), ("protocol", "pop3")))] == 5
    assert got[("mailkeep_logins_created", (("outcome", "ok"), ("protocol", "imap")))] == 1.0
    assert got[("mailkeep_queue_messages", ())] == 7  # the largest, not 9
    assert got[("mailkeep_start_time_seconds", ())] == 1000  # per process: ours alone
    assert ("mailkeep_start_time_seconds", "mailkeep_start_time_seconds", ()) not in \
        shared.samples_of(families())


def test_files_of_workers_that_are_gone_are_dropped(tmp_path: Path) -> None:
    mine = shared.SharedFigures(tmp_path)
    mine.publish(shared.samples_of(families()))
    assert (tmp_path / f"{os.getpid()}.json").exists()
    assert mine.others() == []  # our own file is not "another worker"
    # A pid that is gone, and one that lives but is not our parent's child (not a sibling
    # worker: a pid taken again by another process). Live siblings: test_workers.py.
    (tmp_path / "999999999.json").write_text("[]")
    (tmp_path / f"{os.getppid()}.json").write_text("[]")  # alive, but not our sibling
    assert mine.others() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.json"]
