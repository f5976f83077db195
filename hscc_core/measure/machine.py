"""The machine a number was measured on: CPU model, cores, threads, library versions, GPU.

Every published timing names its machine (DESIGN 4); the speed table, the bench output and the
report all describe it the same way.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from typing import NamedTuple

import torch

__all__ = ["BUSY_SHARE", "CpuSnapshot", "busy_timing", "cpu_name", "cpu_snapshot", "machine_description",
           "machine_info", "others_share"]


MIN_WINDOW_S = 1.0  # shortest window others_share reports on
# Share of the CPUs other processes may take while models are timed before the timing is called
# noisy (others_share): a second process keeping one of two cores busy is 0.5.
BUSY_SHARE = 0.25


class CpuSnapshot(NamedTuple):
    """The machine's busy CPU seconds (every process, and time the hypervisor took) and this
    process's own, at one moment (:func:`cpu_snapshot`)."""

    wall: float
    machine_busy: float
    own: float


def cpu_snapshot() -> CpuSnapshot | None:
    """Busy CPU time of the whole machine (``/proc/stat``: user, nice, system, irq, softirq, steal)
    and of this process (every thread), or None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    own = os.times()
    return CpuSnapshot(time.perf_counter(), (user + nice + system + irq + softirq + steal) / ticks,
                       own.user + own.system)


def others_share(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """The share of the machine's CPUs that other processes (and the hypervisor) used between two
    snapshots: 0 on a quiet machine, 0.5 when another process kept one of two cores busy. None when
    either snapshot is missing or less than :data:`MIN_WINDOW_S` passed: both counters tick in
    hundredths of a second, too coarse for a shorter window.

    Timings are ratios measured in one process, so work elsewhere slows both models; it still
    makes them noisy (this machine's loaded days moved ratios by +-15 %). Recording the share beside
    a timing lets a reader tell a quiet measurement from a disturbed one.
    """
    if before is None or after is None or after.wall - before.wall < MIN_WINDOW_S:
        return None
    cores = os.cpu_count() or 1
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return min(1.0, max(0.0, others / ((after.wall - before.wall) * cores)))


def busy_timing(latency: Mapping | None) -> bool:
    """Whether a timing (a run's ``latency_ms``, a speed row's) was taken while other processes used
    more than :data:`BUSY_SHARE` of the CPUs: its speed-up is noisy. A timing without the share
    (taken before it was recorded, or on a window too short to read it) is not called busy."""
    share = (latency or {}).get("others_cpu")
    return share is not None and share > BUSY_SHARE


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """CPU model, logical cores, torch threads and version, GPU name."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_description() -> str:
    """:func:`machine_info` in one line, with the Python version."""
    m = machine_info()
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads){gpu}, "
            f"Python {platform.python_version()}")
