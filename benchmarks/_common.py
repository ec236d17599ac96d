"""What every benchmark records about the machine its figures come from."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from unlearn_lib.data import Dataset
    from unlearn_lib.data.tensors import TensorSet


def canaries_of(ds: Dataset, k: int) -> tuple[TensorSet, torch.Tensor] | None:
    """The dataset's canary images (one per distinct image) and their k-NN training distance.

    What the audit's extraction test scores the canary subject on; ``None`` when ``ds`` no
    longer holds the subject (a purged dataset).
    """
    from unlearn_lib.audit.memorization import neighbourhood_distance
    from unlearn_lib.data import DigitsConfig, ForgetTargets, select
    from unlearn_lib.data.tensors import TensorSet
    from unlearn_lib.errors import SelectionError

    try:
        sel = select(ds, ForgetTargets.build(subject_ids=[DigitsConfig().canary_subject]))
    except SelectionError:
        return None
    if not sel.forget:
        return None
    canaries = TensorSet.from_records(ds, sel.forget).distinct()
    return canaries, neighbourhood_distance(canaries, TensorSet.from_records(ds, ds.train), k)


def machine() -> str:
    """The GPU's name, or the CPU with its cores, torch threads and load (CPU timings drift with load)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, load average {load:.1f}"
    )


def add_erasediff_variant_flags(ap: argparse.ArgumentParser, example: str) -> None:
    """``--set``/``--options`` (EraseDiff options for a variant under study) and the ``--tag`` naming it."""
    from unlearn_lib.cli import add_override_flags

    add_override_flags(ap, "EraseDiff option", example=example)
    ap.add_argument("--tag", default="", help="names the results of a run with --set/--options, so the defaults' stay")


def erasediff_options(args: argparse.Namespace) -> dict[str, Any]:
    """The variant's ``--set``/``--options``, checked against EraseDiff's options and typed as a run gets them.

    A misspelt or invalid option stops the benchmark before its first model (not a pipeline run
    later), and the results file records ``0.25``, not the ``"0.25"`` the command line gave. A
    variant must carry a ``--tag``: its results would otherwise overwrite the defaults'.
    """
    from unlearn_lib.cli import overrides_from
    from unlearn_lib.errors import ConfigError
    from unlearn_lib.unlearning.base import build_config
    from unlearn_lib.unlearning.erasediff import EraseDiffConfig

    options = overrides_from(args.options, args.set)
    try:
        config = build_config(EraseDiffConfig, options, where="EraseDiff")
        config.validate()
    except ConfigError as err:
        raise SystemExit(f"--set/--options: {err}") from None
    if options and not args.tag:
        raise SystemExit("--set/--options describe a variant: name it with --tag, so its results stay apart")
    return {key: getattr(config, key.replace("-", "_")) for key in options}


def pipeline_run_args() -> tuple[argparse.Namespace, dict[str, Any]]:
    """``--run`` (a ``bench_successive.py --path pipeline`` results file), ``--workdir`` and ``--tag``,
    what the scripts that read a pipeline run's models take, and the run loaded."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a bench_successive.py --path pipeline results file")
    ap.add_argument("--workdir", required=True, type=Path, help="that run's workdir (versions/vN, data/)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    run = json.loads(Path(args.run).read_text())
    if run.get("path") != "pipeline":
        raise SystemExit(f"{args.run}: not a pipeline run (path {run.get('path')!r})")
    if not (args.workdir / "versions").is_dir():
        raise SystemExit(f"{args.workdir}: not a pipeline run's workdir (no versions/)")
    return args, run
