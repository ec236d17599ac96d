"""Datasets: the manifest contract, the digits builder, forget/retain selection.

The digits builder (scikit-learn) and the tensor views (torch) load on first use: the request
commands and the pipeline's bookkeeping steps read manifests only.
"""

from typing import Any

from .manifest import SCHEMA_VERSION, Dataset, Record, load_dataset, manifest_digest, write_manifest
from .selection import ForgetTargets, Selection, forget_set_sha256, select

_LAZY = {
    "DigitsConfig": "digits",
    "build_digits": "digits",
    "mark_canary": "digits",
    "TensorSet": "tensors",
    "to_model_space": "tensors",
    "to_uint8": "tensors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "Dataset",
    "DigitsConfig",
    "ForgetTargets",
    "Record",
    "Selection",
    "TensorSet",
    "build_digits",
    "forget_set_sha256",
    "load_dataset",
    "manifest_digest",
    "mark_canary",
    "select",
    "to_model_space",
    "to_uint8",
    "write_manifest",
]
