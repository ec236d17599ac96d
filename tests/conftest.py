"""Shared fixtures: one digits dataset, one base model and one evaluator per test session.

The base model takes about two minutes to train on 2 CPU cores; it is cached under
``.cache/tests`` (or ``$UNLEARN_TEST_CACHE``) keyed by its configuration and the dataset
digest, so local re-runs skip training. CI starts from a clean clone and trains it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from unlearn_lib.audit import Evaluator, train_evaluator
from unlearn_lib.data import DigitsConfig, build_digits, load_dataset
from unlearn_lib.models import DiffusionModel, TrainConfig, train_base

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("UNLEARN_TEST_CACHE", REPO / ".cache" / "tests"))
BASE_CONFIG = TrainConfig(preset="digits", steps=2000, batch_size=64, lr=2e-3, seed=0)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    build_digits(out, DigitsConfig())
    return out


@pytest.fixture(scope="session")
def digits(digits_dir: Path):
    return load_dataset(digits_dir)


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def base_model_dir(digits) -> Path:
    """The session's base model: trained with planted canaries, so it has memorized them."""
    key = _cache_key("base", asdict(BASE_CONFIG), digits.digest())
    out = CACHE / f"base-{key}"
    if not (out / "unlearn_model.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        train_base(digits, out, BASE_CONFIG, progress=False)
    return out


@pytest.fixture(scope="session")
def base_model(base_model_dir: Path) -> DiffusionModel:
    return DiffusionModel.load(base_model_dir)


@pytest.fixture(scope="session")
def evaluator(digits) -> Evaluator:
    key = _cache_key("evaluator", digits.digest())
    out = CACHE / f"evaluator-{key}"
    if (out / "evaluator.json").is_file():
        return Evaluator.load(out)
    ev = train_evaluator(digits, progress=False)
    shutil.rmtree(out, ignore_errors=True)
    ev.save(out)
    return ev
