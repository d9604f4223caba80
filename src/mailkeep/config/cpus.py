"""How many cores this process may use: the CPUs it may run on, and the CPU quota of its
control group (a container's `--cpus`), whichever is smaller.

`os.process_cpu_count()` (and sched_getaffinity) sees a container's cpuset, but not its CFS
quota: `docker run --cpus 2` on a 32-core host still shows 32 CPUs, and `workers = "auto"`
would start 32 processes sharing two cores' worth of time. The quota is read from cgroup v2
(`cpu.max`: "QUOTA PERIOD", or "max") at the process's group and every group above it, or
from cgroup v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`, -1 for none); a quota of 1.5
cores counts as 2. Anything unreadable means no quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _v2_limit(root: Path, group: str) -> float | None:
    limits: list[float] = []
    here = (root / group.lstrip("/")).resolve()
    top = root.resolve()
    while True:
        try:
            quota, period = (here / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if here == top or top not in here.parents:
            break
        here = here.parent
    return min(limits) if limits else None


def _v1_limit(root: Path, group: str) -> float | None:
    for directory in (root / "cpu" / group.lstrip("/"), root / "cpu,cpuacct" / group.lstrip("/"),
                      root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def quota_cores(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's control group, in cores (None: no quota)."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            found = _v2_limit(root, group)
            if found is not None:
                return found
        elif "cpu" in controllers.split(","):
            found = _v1_limit(root, group)
            if found is not None:
                return found
    return None


def _cpus() -> int | None:
    """The CPUs this process may run on (Python 3.13's process_cpu_count; its affinity mask
    before that; the machine's count where there is no such mask)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        found = count()
        return None if found is None else int(found)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def usable_cores(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> int:
    """Cores this process may use: its CPUs, capped by its control group's quota."""
    cpus = _cpus()
    quota = quota_cores(root, proc)
    if quota is not None:
        cpus = min(cpus or 1, max(1, math.ceil(quota)))
    return max(1, cpus or 1)
