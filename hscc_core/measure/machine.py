"""The machine a number was measured on: CPU model, cores, threads, library versions, GPU.

Every published timing names its machine (DESIGN 4); the speed table, the bench output and the
report all describe it the same way.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_name", "machine_description", "machine_info"]


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
