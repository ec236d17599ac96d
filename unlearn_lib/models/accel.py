"""Accelerate set-up: one place that decides device and mixed precision."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from ..errors import ConfigError


def resolve_precision(device: torch.device, mixed_precision: str) -> str:
    """``auto`` is bf16 on CUDA (the useful precision on H100-class cards) and fp32 on CPU."""
    if mixed_precision == "auto":
        return "bf16" if device.type == "cuda" else "no"
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, got {mixed_precision!r}")
    if device.type != "cuda" and mixed_precision != "no":
        raise ConfigError(f"mixed precision {mixed_precision} needs a CUDA device")
    return mixed_precision


def make_accelerator(device: torch.device, mixed_precision: str = "auto") -> Accelerator:
    """A fresh Accelerator; earlier ones in this process (tests, notebooks) are forgotten."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=device.type == "cpu", mixed_precision=resolve_precision(device, mixed_precision))
