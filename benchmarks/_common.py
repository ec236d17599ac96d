"""What every benchmark records about the machine its figures come from."""

from __future__ import annotations

import os
import platform
from typing import Any

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


def erasediff_options(options: dict[str, Any]) -> dict[str, Any]:
    """``--set``/``--options`` checked against EraseDiff's options and typed as a run gets them.

    A misspelt or invalid option stops the benchmark before its first model (not a pipeline run
    later), and the results file records ``0.25``, not the ``"0.25"`` the command line gave.
    """
    from unlearn_lib.errors import ConfigError
    from unlearn_lib.unlearning.base import build_config
    from unlearn_lib.unlearning.erasediff import EraseDiffConfig

    try:
        config = build_config(EraseDiffConfig, options, where="EraseDiff")
        config.validate()
    except ConfigError as err:
        raise SystemExit(f"--set/--options: {err}") from None
    return {key: getattr(config, key.replace("-", "_")) for key in options}
