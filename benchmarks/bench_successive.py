"""Successive class deletions through ``erase`` (the library call behind ``unlearn erase``).

    OMP_NUM_THREADS=1 python benchmarks/bench_successive.py --base DIR --evaluator DIR \\
        [--classes 3 5 8 1 6] [--variant full|exclude-only|none] [--per-class 50] [--workdir DIR]

Each step erases the next class from the previous step's model with EraseDiff's defaults, on the
same dataset folder every time (the CLI case: the dataset still holds the earlier classes). After
each step the evaluator judges ``--per-class`` samples per class (25 DDIM steps, the model's
guidance, fixed seed): P(c) on samples conditioned on c for every class erased so far, and the
accuracy on the classes never erased in the sequence (``kept``), against the base model's.

Variants: ``full`` (the lineage excludes earlier deletions from the retain set and remap targets
and EraseDiff keeps them forgotten), ``exclude-only`` (``keep_forgotten=false``), ``none`` (the
lineage's deletions are stripped from each parent first: the behaviour before lineage existed).
Writes ``benchmarks/results/successive-<variant>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from unlearn_lib.audit import Evaluator, class_figures, generate_class_samples
from unlearn_lib.data import DigitsConfig, ForgetTargets, build_digits
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.diffusion import META_NAME
from unlearn_lib.unlearning import erase

SAMPLE_SEED = 123


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, load average {load:.1f}"
    )


def judge(model: DiffusionModel, evaluator: Evaluator, per_class: int, erased: list[int], kept: list[int]) -> dict:
    figs = class_figures(generate_class_samples(model, evaluator, per_class, seed=SAMPLE_SEED), erased)
    return {
        "p_erased": {str(c): round(figs.forgotten_probability[c], 4) for c in erased},
        "kept_accuracy": round(sum(figs.accuracy[c] for c in kept) / len(kept), 4),
        "accuracy": {str(c): round(a, 4) for c, a in figs.accuracy.items()},
    }


def strip_deletions(model_dir: Path) -> None:
    """Forget the lineage's deletions (variant ``none``): what erase saw before lineage existed."""
    meta = json.loads((model_dir / META_NAME).read_text())
    meta.get("lineage", {}).pop("deletions", None)
    (model_dir / META_NAME).write_text(json.dumps(meta, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="a trained digits base model folder")
    ap.add_argument("--evaluator", required=True, help="a trained evaluator folder")
    ap.add_argument("--classes", type=int, nargs="+", default=[3, 5, 8, 1, 6])
    ap.add_argument("--variant", choices=("full", "exclude-only", "none"), default="full")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-successive-"))
    dataset_dir = work / "data"
    build_digits(dataset_dir, DigitsConfig(), overwrite=True)
    evaluator = Evaluator.load(args.evaluator)
    base = DiffusionModel.load(args.base)
    num_classes = base.meta.num_classes
    kept = [c for c in range(num_classes) if c not in args.classes]
    overrides = {"keep_forgotten": False} if args.variant == "exclude-only" else {}

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"successive-{args.variant}-{dev}.json"
    out: dict = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "variant": args.variant,
        "algorithm": "erasediff",
        "options": overrides,
        "classes": args.classes,
        "kept_classes": kept,
        "per_class": args.per_class,
        "base": judge(base, evaluator, args.per_class, [], kept),
        "steps": [],
    }
    parent = Path(args.base)
    erased: list[int] = []
    for c in args.classes:
        child = work / f"{args.variant}-no-{'-'.join(map(str, erased + [c]))}"
        t0 = time.perf_counter()
        result, record = erase(
            parent, dataset_dir, ForgetTargets.build(labels=[c]), "erasediff", child, overrides, progress=False
        )
        seconds = time.perf_counter() - t0
        if args.variant == "none":
            strip_deletions(child)
        erased.append(c)
        target = record["config"].get("resolved_target", {})
        out["steps"].append(
            {
                "erased": c,
                "seconds": round(seconds, 1),
                "unlearning_seconds": round(result.seconds, 1),
                "steps": result.steps,
                "mapping": target.get("mapping"),
                "kept_mapping": target.get("kept_mapping"),
                "prior_deletions": record.get("prior_deletions"),
                **judge(DiffusionModel.load(child), evaluator, args.per_class, erased, kept),
            }
        )
        path.write_text(json.dumps(out, indent=2) + "\n")  # a long run keeps what it measured
        s = out["steps"][-1]
        print(
            f"erase {c}: {s['seconds']:.0f}s, map {s['mapping']} kept {s['kept_mapping']}, "
            f"P(erased) {s['p_erased']}, kept accuracy {s['kept_accuracy']:.3f} "
            f"(base {out['base']['kept_accuracy']:.3f})",
            flush=True,
        )
        parent = child
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
