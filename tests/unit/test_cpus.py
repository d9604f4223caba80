"""config/cpus.py: `workers = "auto"` counts a container's CPU quota, read from cgroup v2
(cpu.max, up the hierarchy) or v1 (cfs_quota_us / cfs_period_us), from files laid out as the
kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailkeep.config import cpus


def v2(tmp_path: Path, group: str, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for where, value in limits.items():
        (root / where).mkdir(parents=True, exist_ok=True)
        (root / where / "cpu.max").write_text(value + "\n")
    (root / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "self-cgroup"
    proc.write_text(f"0::{group}\n")
    return root, proc


def test_v2_quota_of_the_group(tmp_path: Path) -> None:
    root, proc = v2(tmp_path, "/", {"": "200000 100000"})
    assert cpus.quota_cores(root, proc) == 2.0


def test_v2_no_quota(tmp_path: Path) -> None:
    root, proc = v2(tmp_path, "/", {"": "max 100000"})
    assert cpus.quota_cores(root, proc) is None


def test_v2_the_tightest_group_above_counts(tmp_path: Path) -> None:
    root, proc = v2(tmp_path, "/system.slice/mail.service",
                    {"system.slice": "150000 100000", "system.slice/mail.service": "max 100000"})
    assert cpus.quota_cores(root, proc) == 1.5


def test_v1_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("50000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/\n0::/\n")
    assert cpus.quota_cores(root, proc) == 0.5
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.quota_cores(root, proc) is None


def test_nothing_readable_is_no_quota(tmp_path: Path) -> None:
    assert cpus.quota_cores(tmp_path / "none", tmp_path / "none-either") is None


@pytest.mark.parametrize(("quota", "expected"), [("50000 100000", 1), ("150000 100000", 2),
                                                 ("max 100000", None)])
def test_usable_cores_are_capped_by_the_quota(tmp_path: Path, quota: str,
                                              expected: int | None) -> None:
    root, proc = v2(tmp_path, "/", {"": quota})
    available = len(os.sched_getaffinity(0))
    assert cpus.usable_cores(root, proc) == (available if expected is None
                                             else min(available, expected))
