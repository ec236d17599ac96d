"""The compliance workflow's steps as plain functions (kfp components wrap them thinly)."""

from .steps import (
    StepContext,
    audit_step,
    extract_step,
    finalize_step,
    register_step,
    unlearn_step,
)

__all__ = ["StepContext", "audit_step", "extract_step", "finalize_step", "register_step", "unlearn_step"]
