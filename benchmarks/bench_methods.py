"""Every unlearning method on one digits class erasure, on this machine: forgetting, utility, time.

    python benchmarks/bench_methods.py [--scale small|published|both] [--methods erasediff erasediff-paper ...]
                                       [--skip sa@published] [--base DIR --evaluator DIR] [--per-class 100]

Methods: ``erasediff`` (our defaults), ``erasediff-paper`` (``preset=paper``: the official CIFAR-10
configuration and the paper's uniform-noise loss), ``sa`` (Selective Amnesia), ``salun`` (SalUn),
``neggrad``, ``finetune``, ``retrain``. ``--scale published`` runs each with its published or
shipped defaults; ``--scale small`` shrinks the costly ones (SA, SalUn, retrain) to what 2 CPU
cores finish in minutes (the overrides are printed and recorded). EraseDiff, paper mode,
NegGrad and finetune run their defaults at both scales. ``--scale both`` runs both
configurations of SA and SalUn in the same invocation (rows ``sa@small``, ``sa@published``, ...),
so that the whole table comes from one run on one base model; ``--skip`` leaves a configuration
out and the results say which.

Each model is judged by the evaluator on ``--per-class`` samples per class (25 DDIM steps, the
model's guidance 2.0, fixed seed): P(forgotten) is its mean probability of the forgotten class
on samples conditioned on it, utility the accuracy on the nine other classes. P(forgotten) is
also measured at guidance 3.0, which is the official code's ``cond_scale`` 2.0 in our convention.
Without ``--base`` a base model is trained first (2,000 steps, as the test suite's).
Writes ``benchmarks/results/methods-<scale>-<device>.json`` and prints the README table rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit import Evaluator, class_figures, generate_class_samples, train_evaluator
from unlearn_lib.data import DigitsConfig, ForgetTargets, build_digits, select
from unlearn_lib.models import DiffusionModel, TrainConfig, train_base
from unlearn_lib.unlearning import make_unlearner, task_from_selection

FORGET = 3
SAMPLE_SEED = 123

# (algorithm, options at --scale published, options at --scale small)
METHODS: dict[str, tuple[str, dict, dict]] = {
    "erasediff": ("erasediff", {}, {}),
    "erasediff-paper": ("erasediff", {"preset": "paper"}, {"preset": "paper"}),
    "sa": (
        "sa",
        {},
        # The test's scaled SA: few steps need a larger lr, no EMA and a lighter EWC (published: 20,000
        # steps, lr 1e-4, EMA 0.9999, lmbda 10, 500 samples a class of 1,000 DDIM steps).
        {
            "steps": 100,
            "lr": 1e-3,
            "batch_size": 64,
            "ema_decay": 0,
            "lmbda": 0.1,
            "replay_per_class": 64,
            "fisher_per_class": 8,
            "fisher_timesteps": 50,
            "sample_steps": 25,
        },
    ),
    "salun": ("salun", {}, {"steps": 100, "batch_size": 64, "forget_batch_size": 64}),
    "neggrad": ("neggrad", {}, {}),
    "finetune": ("finetune", {}, {}),
    "retrain": ("retrain", {}, {}),  # the reference is a full retrain at both scales
}


def configurations(methods: list[str], scale: str, skip: list[str]) -> list[tuple[str, str, dict]]:
    """(row name, algorithm, options) for each run: ``name@scale`` where the two scales differ."""
    bad = [s for s in skip if s.split("@")[0] not in METHODS or s.partition("@")[2] not in ("small", "published")]
    if bad:
        raise SystemExit(f"--skip takes METHOD@small or METHOD@published, got {bad}")
    out = []
    for name in methods:
        algorithm, published, small = METHODS[name]
        scales = {"small": small, "published": published}
        if scale != "both":
            out.append((name, algorithm, scales[scale]))
        elif published == small:
            out.append((name, algorithm, small))
        else:
            out += [(f"{name}@{k}", algorithm, v) for k, v in scales.items() if f"{name}@{k}" not in skip]
    return out


def judge(model: DiffusionModel, evaluator: Evaluator, per_class: int) -> dict:
    figs = class_figures(generate_class_samples(model, evaluator, per_class, seed=SAMPLE_SEED), [FORGET])
    paper = class_figures(
        generate_class_samples(model, evaluator, per_class, guidance_scale=3.0, seed=SAMPLE_SEED, classes=[FORGET]),
        [FORGET],
    )
    return {
        "p_forgotten": figs.mean_forgotten_probability,
        "p_forgotten_guidance3": paper.mean_forgotten_probability,
        "retained_accuracy": figs.retained_accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--scale",
        choices=("small", "published", "both"),
        default="small",
        help="both: every method at both scales in one run (one row where they are the same)",
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="METHOD@SCALE",
        help="configurations left out of --scale both, e.g. sa@published (hours on 2 CPU cores)",
    )
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--base", help="a trained digits base model folder (default: train one)")
    ap.add_argument("--evaluator", help="a trained evaluator folder (default: train one)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    # On a shared machine one thread per process avoids threads spinning at barriers while a
    # sibling thread waits for a core; the figures then say so in "machine".
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads for torch")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-methods-"))
    started = machine()
    dataset = build_digits(work / "data", DigitsConfig(), overwrite=True)
    if args.base:
        base = DiffusionModel.load(args.base)
    else:
        base, _ = train_base(dataset, work / "base", TrainConfig(steps=2000), overwrite=True, progress=False)
    evaluator = Evaluator.load(args.evaluator) if args.evaluator else train_evaluator(dataset, progress=False)
    task = task_from_selection(dataset, select(dataset, ForgetTargets.build(labels=[FORGET])), base)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"methods-{args.scale}-{dev}.json"
    out: dict = {
        "machine": started,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "scale": args.scale,
        "forget_class": FORGET,
        "per_class": args.per_class,
        "base": {"path": args.base or str(work / "base"), **judge(base, evaluator, args.per_class)},
        "runs": {},
    }
    out["skipped"] = list(args.skip)
    for name, algorithm, options in configurations(args.methods, args.scale, args.skip):
        options = {**options, "seed": args.seed}
        result = make_unlearner(algorithm, options).run(task, progress=False)
        out["runs"][name] = {
            "algorithm": algorithm,
            "options": options,
            "steps": result.steps,
            "seconds": result.seconds,
            **judge(result.model, evaluator, args.per_class),
        }
        path.write_text(json.dumps(out, indent=2, default=float) + "\n")  # a long run keeps what it measured
        r = out["runs"][name]
        print(f"{name}: {r['steps']} steps, {r['seconds']:.0f} s, P {r['p_forgotten']:.3f}", flush=True)
    out["machine_at_end"] = machine()
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")

    b = out["base"]
    print(f"machine at the start: {started}; at the end: {out['machine_at_end']}")
    print("| method | options | steps | time | P(forgotten) | P(forgotten), guidance 3 | retained accuracy |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| base model | | | | {b['p_forgotten']:.3f} | {b['p_forgotten_guidance3']:.3f} | "
        f"{b['retained_accuracy']:.3f} |"
    )
    for name, r in out["runs"].items():
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items() if k != "seed") or "defaults"
        print(
            f"| {name} | {opts} | {r['steps']} | {r['seconds']:.0f} s | {r['p_forgotten']:.3f} | "
            f"{r['p_forgotten_guidance3']:.3f} | {r['retained_accuracy']:.3f} |"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
