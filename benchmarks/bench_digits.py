"""Speed and quality of base training and EraseDiff on the digits preset, on this machine.

    python benchmarks/bench_digits.py [--seeds 0 1 2] [--workdir DIR]
    python benchmarks/bench_digits.py --seeds 0 1 2 3 4 --class-only --base DIR/base --evaluator DIR \
        --set lam=3 --tag lam3      # one EraseDiff variant of the class erasure, on a base already trained

Writes ``benchmarks/results/digits-[class-][<tag>-]<device>.json`` and prints the rows of the README table.
Targets (digits preset, 2 CPU cores): forget one class to P(forgotten) <= 0.02 with at most
1 point of retained-class accuracy lost, in under 30 s of unlearning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (  # benchmarks/ is the script's folder: on sys.path
    add_erasediff_variant_flags,
    erasediff_options,
    machine,
)

from unlearn_lib.audit import (
    AuditParams,
    ClassFigures,
    Evaluator,
    class_figures,
    generate_class_samples,
    run_audit,
    train_evaluator,
)
from unlearn_lib.data import Dataset, DigitsConfig, ForgetTargets, build_digits, select
from unlearn_lib.models import DiffusionModel, TrainConfig, class_grid_labels, sample, train_base
from unlearn_lib.unlearning import erase, make_unlearner, task_from_selection
from unlearn_lib.unlearning.erasediff import SCOPE_DEFAULTS

PER_CLASS = 100
FORGET = 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--base", help="a digits base model folder trained on the default dataset (default: train one)")
    ap.add_argument("--evaluator", help="a judge trained on the default dataset (default: train one)")
    ap.add_argument(
        "--class-only", action="store_true", help="only the class erasures: no canary, timing or audit rows"
    )
    add_erasediff_variant_flags(ap, example="--set lam=3")
    args = ap.parse_args()
    options = erasediff_options(args)
    torch.set_num_threads(min(2, os.cpu_count() or 1)) if not torch.cuda.is_available() else None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-digits-"))
    dataset = build_digits(work / "data", DigitsConfig(), overwrite=True)

    t0 = time.perf_counter()
    if args.base:
        base, train = DiffusionModel.load(args.base), None
    else:
        config = TrainConfig(steps=args.base_steps)
        base, train = train_base(dataset, work / "base", config, overwrite=True, progress=False)
    base_wall = time.perf_counter() - t0
    evaluator = Evaluator.load(args.evaluator) if args.evaluator else train_evaluator(dataset, progress=False)
    base_samples = generate_class_samples(base, evaluator, PER_CLASS, seed=123)
    before = class_figures(base_samples, [FORGET])

    task = task_from_selection(dataset, select(dataset, ForgetTargets.build(labels=[FORGET])), base)
    runs = []
    for seed in args.seeds:
        result = make_unlearner("erasediff", {**options, "seed": seed}).run(task, progress=False)
        samples = generate_class_samples(result.model, evaluator, PER_CLASS, seed=123)
        after = class_figures(samples, [FORGET])
        # The judge's floor (as the audit computes it): what it reads on the base model's own
        # samples of the class the erased one is now drawn as. P(forgotten) cannot go below it.
        pred = samples.for_class(FORGET)[1].argmax(-1)
        kept = [c for c in samples.classes if c != FORGET]
        dest = max(kept, key=lambda c: int((pred == c).sum()))
        floor = float(base_samples.for_class(dest)[1][:, FORGET].mean())
        runs.append(
            {
                "seed": seed,
                "seconds": result.seconds,
                "steps": result.steps,
                "steps_per_second": result.steps_per_second,
                "p_forgotten": after.mean_forgotten_probability,
                "retained_accuracy": after.retained_accuracy,
                "destination": dest,
                "destination_share": float((pred == dest).float().mean()),
                "judge_floor": floor,
            }
        )

    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "options": options,
        "class_defaults": SCOPE_DEFAULTS["class"],  # what the options left as they were (lam was 1 until 2026-12-04)
        "base_training": (
            {"path": str(Path(args.base).resolve())}
            if train is None
            else {
                "steps": train.steps,
                "seconds": train.seconds,
                "wall_seconds": base_wall,
                "steps_per_second": train.steps_per_second,
                "batch_size": 64,
                "parameters": base.num_parameters(),
            }
        ),
        "base_figures": {
            "p_forgotten": before.mean_forgotten_probability,
            "retained_accuracy": before.retained_accuracy,
            "samples_per_class": PER_CLASS,
            "judge_members": evaluator.meta.members,
        },
        "erasediff_class": runs,
    }
    if not args.class_only:
        out.update(record_and_audit_rows(work, Path(args.base or work / "base"), dataset, base, evaluator, before))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    # A class-only run must not overwrite the full run's file (the README's main table).
    name = "-".join(["digits", *(["class"] if args.class_only else []), *([args.tag] if args.tag else []), dev])
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in runs)

    print(f"machine: {out['machine']}" + (f"; EraseDiff options {options}" if options else ""))
    if train is not None:
        print(f"| base training, 2,000 steps at batch 64 | {train.steps_per_second:.1f} steps/s | {base_wall:.0f} s |")
    print(
        f"| EraseDiff, forget class {FORGET} ({len(runs)} seeds) | {mean('steps_per_second'):.2f} steps/s | "
        f"{mean('seconds'):.1f} s | P(forgotten) {before.mean_forgotten_probability:.3f} -> "
        f"{', '.join(format(r['p_forgotten'], '.3f') for r in runs)} | retained accuracy "
        f"{before.retained_accuracy:.3f} -> {', '.join(format(r['retained_accuracy'], '.3f') for r in runs)} | "
        f"judge's floor {', '.join('{:.3f} ({})'.format(r['judge_floor'], r['destination']) for r in runs)} |"
    )
    if not args.class_only:
        rec = out["erasediff_record"]
        print(
            f"| EraseDiff, delete the canary subject | {rec['steps']} steps | {rec['seconds']:.1f} s | "
            f"class 7 accuracy {rec['class7_accuracy_before']:.2f} -> {rec['class7_accuracy_after']:.2f} | "
            f"stop {rec['stop'] and rec['stop']['reason']} |"
        )
        per_1000 = out["audit"]["seconds_per_1000_guided_samples_25_steps"]
        print(f"| sampling for the audit, 25 DDIM steps with guidance | {per_1000:.1f} s per 1,000 samples | |")
        for name, a in out["audit"]["full_audit_default_params"].items():
            print(f"| full audit, {name} deletion, default parameters | | {a['seconds']:.0f} s | {a['verdict']} |")
    print(f"wrote {path}")


def record_and_audit_rows(
    work: Path, base_dir: Path, dataset: Dataset, base: DiffusionModel, evaluator: Evaluator, before: ClassFigures
) -> dict[str, Any]:
    """The canary subject's deletion, the audit's sampling cost and two full audits (the defaults)."""
    canary = task_from_selection(dataset, select(dataset, ForgetTargets.build(subject_ids=["subject-canary"])), base)
    rec = make_unlearner("erasediff").run(canary, progress=False)
    acc7_before = before.accuracy[7]
    acc7_after = class_figures(
        generate_class_samples(rec.model, evaluator, PER_CLASS, seed=123, classes=[7]), []
    ).accuracy[7]

    # The audit's cost: guided DDIM sampling dominates it.
    labels = class_grid_labels(base, 100)
    t0 = time.perf_counter()
    sample(base, labels, steps=25, seed=0)
    per_1000 = (time.perf_counter() - t0) * 1000 / len(labels)
    evaluator.save(work / "evaluator", overwrite=True)
    audits = {}
    for name, targets in (
        ("class", ForgetTargets.build(labels=[FORGET])),
        ("canary", ForgetTargets.build(subject_ids=["subject-canary"])),
    ):
        erase(base_dir, work / "data", targets, "erasediff", work / f"erased-{name}", overwrite=True, progress=False)
        t0 = time.perf_counter()
        res = run_audit(
            base_dir,
            work / f"erased-{name}",
            work / "data",
            targets,
            work / f"audit-{name}",
            params=AuditParams(),
            evaluator_dir=work / "evaluator",
            overwrite=True,
        )
        audits[name] = {
            "seconds": time.perf_counter() - t0,
            "verdict": res.record["verdict"],
            "gates": {g["metric"]: g["passed"] for g in res.record["gates"]},
        }

    return {
        "erasediff_record": {
            "seconds": rec.seconds,
            "steps": rec.steps,
            "stop": rec.stop,
            "class7_accuracy_before": acc7_before,
            "class7_accuracy_after": acc7_after,
        },
        "audit": {"seconds_per_1000_guided_samples_25_steps": per_1000, "full_audit_default_params": audits},
    }


if __name__ == "__main__":
    main()
