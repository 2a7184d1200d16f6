"""CPU accounting from /proc: how busy the machine is, and how much of that is not the benchmark."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # jiffies per second in /proc/stat and /proc/PID/stat


def _machine_jiffies() -> tuple[int, int]:
    """Return (busy, total) jiffies over all CPUs since boot.

    Busy is user + nice + system + steal. irq and softirq time is left out: on loopback it is
    mostly the benchmark's own packets, which the kernel does not charge to any process.
    Steal (the hypervisor running someone else) counts as busy: it is interference too.
    """
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    )
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return user + nice + system + steal, total


def _group_jiffies(pgids: Collection[int]) -> tuple[int, int]:
    """Return (user, system) jiffies of the live processes whose process group is in `pgids`."""
    user = system = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # fields[0] is /proc/PID/stat field 3 (state)
        if int(fields[2]) in pgids:  # field 5: pgrp
            user += int(fields[11])  # field 14: utime
            system += int(fields[12])  # field 15: stime
    return user, system


def group_seconds(pgids: Collection[int]) -> float:
    """Return the CPU seconds (user + system) used so far by the processes in `pgids`."""
    return sum(group_split(pgids))


def group_split(pgids: Collection[int]) -> tuple[float, float]:
    """Return the (user, system) CPU seconds used so far by the processes in `pgids`."""
    try:
        user, system = _group_jiffies(pgids)
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def children_split() -> tuple[float, float]:
    """Return the (user, system) CPU seconds of this process's reaped children (wrk runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime, children.ru_stime


def _own_jiffies() -> int:
    """Return CPU jiffies used by this process and its reaped children (wrk runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return round(seconds * CLOCK_TICKS)


@dataclass(frozen=True)
class CpuMark:
    """A point-in-time reading of machine and benchmark CPU counters."""

    busy: int
    total: int
    ours: int


def mark(pgids: Collection[int]) -> CpuMark | None:
    """Read the counters now; None where /proc is unavailable."""
    try:
        busy, total = _machine_jiffies()
        return CpuMark(busy=busy, total=total, ours=sum(_group_jiffies(pgids)) + _own_jiffies())
    except (OSError, ValueError, IndexError):
        return None


def other_load(start: CpuMark | None, end: CpuMark | None) -> float | None:
    """Return the share of all CPUs used by processes outside the benchmark between two marks."""
    if start is None or end is None or end.total <= start.total:
        return None
    foreign = (end.busy - start.busy) - (end.ours - start.ours)
    return max(0.0, foreign / (end.total - start.total))


def busy_fraction(interval_s: float) -> float | None:
    """Return the share of all CPUs busy over `interval_s`, or None without /proc."""
    try:
        busy_a, total_a = _machine_jiffies()
        time.sleep(interval_s)
        busy_b, total_b = _machine_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return None if total_b <= total_a else (busy_b - busy_a) / (total_b - total_a)
