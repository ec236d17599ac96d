"""Unlearning algorithms behind one interface, found by name in a registry."""

from . import baselines, erasediff, sa, salun  # noqa: F401  (registration side effects)
from .base import (
    REGISTRY,
    CommonConfig,
    Unlearner,
    UnlearningResult,
    UnlearningTask,
    build_config,
    get_algorithm,
    make_unlearner,
    register,
)
from .erasediff import EraseDiff, EraseDiffConfig
from .run import erase, task_from_selection

__all__ = [
    "REGISTRY",
    "CommonConfig",
    "EraseDiff",
    "EraseDiffConfig",
    "Unlearner",
    "UnlearningResult",
    "UnlearningTask",
    "build_config",
    "erase",
    "get_algorithm",
    "make_unlearner",
    "register",
    "task_from_selection",
]
