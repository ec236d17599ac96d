"""The ``unlearn`` command: the digits chain end to end, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from unlearn_lib.cli import main


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "unlearn_lib.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """dataset -> tiny base model -> erase -> sample, through the real command line."""
    ws = tmp_path_factory.mktemp("cli")
    for args in (
        ("dataset", "build-digits", "--out", "data"),
        ("train-base", "--dataset", "data", "--out", "base", "--steps", "40", "--quiet"),
        (
            "erase",
            "--algorithm",
            "erasediff",
            "--model",
            "base",
            "--dataset",
            "data",
            "--forget-labels",
            "3",
            "--out",
            "erased",
            "--set",
            "steps=3",
            # The nearest class by mean image: a 40-step model takes every class for every other
            # now and then, and nearest-distinct would measure all nine in full (minutes) to pick
            # the least confused; test_successive covers that choice on the trained base model.
            "--set",
            "remap_to=nearest-class",
            "--quiet",
        ),
        ("sample", "--model", "erased", "--out", "grid.png", "--per-class", "4", "--steps", "5", "--quiet"),
    ):
        proc = run_cli(*args, cwd=ws)
        assert proc.returncode == 0, (args, proc.stderr)
    return ws


def test_chain_produces_model_record_and_grid(chain):
    record = json.loads((chain / "erased" / "unlearning.json").read_text())
    assert record["algorithm"] == "erasediff" and record["steps"] == 3
    with Image.open(chain / "grid.png") as im:
        assert im.size[0] >= 4 * 8 * 4


def test_train_base_is_cached_and_refuses_a_different_config(chain):
    again = run_cli("train-base", "--dataset", "data", "--out", "base", "--steps", "40", "--quiet", cwd=chain)
    assert again.returncode == 0 and "cached" in again.stdout
    other = run_cli("train-base", "--dataset", "data", "--out", "base", "--steps", "41", "--quiet", cwd=chain)
    assert other.returncode == 2
    assert other.stderr.strip() == (
        "unlearn: error: base holds a model trained with another configuration or "
        "dataset (pass --overwrite to replace it)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--forget-subjects", "nobody"), "unknown deletion targets in data: subject_ids nobody"),
        (("--forget-labels", "3", "--set", "bogus=1"), "algorithm 'erasediff' has no option 'bogus'"),
        (("--forget-labels", "3", "--set", "lam=lots"), "option lam: 'lots' is not a valid float"),
        (("--forget-labels", "3", "--algorithm", "magic"), "unknown algorithm 'magic'"),
        (("--forget-labels", "3", "--preset", "cifar"), "algorithm 'erasediff' has no preset 'cifar'"),
        (("--forget-subjects", "subject-canary", "--algorithm", "sa"), "sa forgets classes"),
        (("--forget-records", "digits-0000", "--options", "missing.yaml"), "options file missing.yaml does not exist"),
        ((), "the deletion targets are empty"),
        # One copy of a 40-copy canary: its image stays in the data under the other 39.
        (("--forget-records", "canary-0-copy-01"), "also held by a retained record (canary-0-copy-01)"),
    ],
)
def test_erase_refusals_are_one_line_and_change_nothing(chain, args, message):
    proc = run_cli("erase", "--model", "base", "--dataset", "data", "--out", "refused", *args, cwd=chain)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (chain / "refused").exists()
    assert not [p for p in chain.iterdir() if p.name.startswith(".refused")]


def test_missing_model_and_dataset_are_refused(chain, capsys):
    assert main(["erase", "--model", "nope", "--dataset", "data", "--out", "x", "--forget-labels", "3"]) == 2
    assert "model folder nope does not exist" in capsys.readouterr().err
    assert main(["dataset", "info", str(chain / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dataset_select_is_a_dry_run(chain, capsys):
    before = sorted(p.name for p in (chain / "data").iterdir())
    assert main(["dataset", "select", str(chain / "data"), "--forget-subjects", "subject-canary"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["forget"] == 120 and summary["forget_distinct_images"] == 3
    assert sorted(p.name for p in (chain / "data").iterdir()) == before


def test_algorithms_lists_the_registry(capsys):
    assert main(["algorithms", "erasediff"]) == 0
    out = capsys.readouterr().out
    assert "inner_steps = 1" in out and "lambda_mode = 'fixed'" in out and "presets: paper" in out
    assert main(["algorithms"]) == 0
    names = {line.split(":")[0] for line in capsys.readouterr().out.splitlines()}
    assert {"erasediff", "sa", "salun", "neggrad", "finetune", "retrain"} <= names


def test_algorithms_prints_the_paper_preset_with_its_sources(capsys):
    assert main(["algorithms", "erasediff", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "lam = 0.1    # JingWu321/EraseDiff ddpm/main.py line 25" in out
    assert "target = 'noise'" in out and "steps = 288" in out and "our guidance_scale 3.0" in out
    assert main(["algorithms", "erasediff", "--preset", "cifar"]) == 2
    assert "algorithm 'erasediff' has no preset 'cifar' (presets: paper)" in capsys.readouterr().err


def test_train_evaluator_averages_members_and_refuses_none(chain):
    proc = run_cli("train-evaluator", "--dataset", "data", "--out", "judge", "--epochs", "1", "--quiet", cwd=chain)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((chain / "judge" / "evaluator.json").read_text())
    assert meta["members"] == 3 and len(meta["member_holdout_accuracy"]) == 3
    assert "members" in proc.stdout
    bad = run_cli("train-evaluator", "--dataset", "data", "--out", "none", "--members", "0", cwd=chain)
    assert bad.returncode == 2 and bad.stderr.strip() == "unlearn: error: --members must be >= 1, got 0"
    assert not (chain / "none").exists()
