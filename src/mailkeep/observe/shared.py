"""One /metrics for all workers: each worker's figures, summed by whichever answers a scrape.

With `workers` above 1 an admin listener is served by every worker (SO_REUSEPORT), so a
scrape reaches one of them. Each worker writes its own samples to
DATA_DIR/run/metrics/PID.json -- every SHARE_SECONDS and whenever it answers a scrape -- and
the one answering adds the others' files to its own live figures:

* counters, the delivery histogram, open sessions and IDLE sessions are summed;
* the queue's size and its oldest message's age are the largest any worker reports (the
  spool is one; the primary worker knows all of it, the others only what they hold);
* `_created` series are the earliest; certificates, start time, uptime, build and the
  process_* series stay the answering worker's own (per process, as docs/metrics.md says).

A total never goes backwards between two scrapes answered by different workers: a worker
writes its file whenever it answers, so the next answer reads at least what it showed.
Files of workers that are gone (no such process, or not our supervisor's child: a pid
taken again) are ignored and removed; a restarted worker starts its counters from zero,
which Prometheus treats as the counter reset it is.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

# How stale another worker's figures may be in a scrape (seconds; Prometheus scrapes every
# 15-60 s).
SHARE_SECONDS = 5.0
SUMMED = frozenset({
    "mailkeep_connections_accepted", "mailkeep_connections_refused", "mailkeep_tls_handshakes",
    "mailkeep_tls_handshake_failures", "mailkeep_logins", "mailkeep_messages_accepted",
    "mailkeep_messages_refused", "mailkeep_local_delivery_seconds",
    "mailkeep_remote_deliveries", "mailkeep_store_errors", "mailkeep_sessions_open",
    "mailkeep_imap_idle_sessions"})
LARGEST = frozenset({"mailkeep_queue_messages", "mailkeep_queue_oldest_age_seconds"})

# (family, sample name, sorted labels) -> value
Key = tuple[str, str, tuple[tuple[str, str], ...]]


def samples_of(families: Iterable[Metric]) -> dict[Key, float]:
    """The samples other workers add to theirs (SUMMED and LARGEST families)."""
    out: dict[Key, float] = {}
    for family in families:
        if family.name in SUMMED or family.name in LARGEST:
            for s in family.samples:
                out[(family.name, s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _ours(pid: int) -> bool:
    """Is `pid` a live worker of our supervisor (our parent)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return len(fields) > 1 and fields[1] == str(os.getppid())


class SharedFigures:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = os.getpid()

    def publish(self, own: dict[Key, float]) -> None:
        """Write this worker's samples (blocking: run it off the loop)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.pid}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps([[f, n, list(map(list, labels)), v]
                                   for (f, n, labels), v in own.items()]))
        os.replace(tmp, path)

    def others(self) -> list[dict[Key, float]]:
        """The other live workers' samples (blocking); dead workers' files are removed."""
        found: list[dict[Key, float]] = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return found
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext != "json" or not dot or not stem.isdigit() or int(stem) == self.pid:
                continue
            if not _ours(int(stem)):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
                continue
            try:
                rows = json.loads((self.directory / name).read_text())
                found.append({(f, n, tuple((k, v) for k, v in labels)): float(value)
                              for f, n, labels, value in rows})
            except (OSError, ValueError, TypeError):
                continue  # being replaced, or damaged: this scrape goes without it
        return found


def merge(families: list[Metric], others: list[dict[Key, float]]) -> Iterator[Metric]:
    """The answering worker's families with the other workers' samples folded in."""
    for family in families:
        if family.name not in SUMMED and family.name not in LARGEST:
            yield family
            continue
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
        for theirs in others:
            for (fam, name, labels), value in theirs.items():
                if fam != family.name:
                    continue
                key = (name, labels)
                if key not in values:
                    values[key] = value
                elif name.endswith("_created"):
                    values[key] = min(values[key], value)
                elif family.name in LARGEST:
                    values[key] = max(values[key], value)
                else:
                    values[key] += value
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        merged.samples = [Sample(name, dict(labels), value)
                          for (name, labels), value in values.items()]
        yield merged
