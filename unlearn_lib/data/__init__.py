"""Datasets: the manifest contract, the digits builder, forget/retain selection."""

from .digits import DigitsConfig, build_digits, mark_canary
from .manifest import SCHEMA_VERSION, Dataset, Record, load_dataset, manifest_digest, write_manifest
from .selection import ForgetTargets, Selection, forget_set_sha256, select
from .tensors import TensorSet, to_model_space, to_uint8

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
