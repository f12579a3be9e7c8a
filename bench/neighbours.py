"""How much CPU other processes took while we measured: on a shared machine, the honest footnote.

The machine's busy CPU seconds (all processes, including short-lived ones) before and after a
measurement, minus what the measured command's processes and the benchmark itself used. Steal
time counts as others' (on a VM, the host's other guests). The command's CPU is sampled every
50 ms per process, so its last moments are missed and the result errs a little towards others.
"""

from __future__ import annotations

import os

import psutil

NOT_BUSY = ("idle", "iowait", "guest", "guest_nice")  # guest time is already inside user time


def snapshot() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    times = psutil.cpu_times()._asdict()
    return sum(value for name, value in times.items() if name not in NOT_BUSY)


def own_cpu() -> float:
    """CPU seconds of the benchmark process itself (its sampler thread must not count as others)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def busy_share(before: float, after: float, wall: float, ours: float) -> float:
    """Share of the machine's CPU capacity (0..1) others used during ``wall`` seconds."""
    capacity = wall * (len(os.sched_getaffinity(0)) or 1)
    return max(0.0, (after - before - ours) / capacity) if capacity else 0.0
