"""What every benchmark records about the machine its figures come from."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    """The GPU's name, or the CPU with its cores, torch threads and load (CPU timings drift with load)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, load average {load:.1f}"
    )
