"""Record deletion beyond the demo's canaries: does the default EraseDiff run pass the audit, cheaply?

    python benchmarks/bench_record_deletion.py [--workdir DIR] [--configs 3x40@7s0 10x10@3s1 ...]
                                               [--set NAME=VALUE ... --tag NAME]

A configuration ``NxC@DsS`` plants N marked images of digit D, each copied C times, into the
digits training split built with seed S; a base model is trained on it (the same steps and
batch size as ``dvc.yaml``'s ``train`` stage), then the canaries' owner asks for deletion: the
default ``erasediff`` run (calibrated stop + extraction check) and the project's audit with its
default parameters. The cost of a retrain is the base's own training time: a retrain runs the
same steps at the same batch size on a dataset only the forget records smaller. That time was
measured when the base was trained, possibly in another session: this machine's speed drifts
(the same 2,000-step training took 179 s one day and 279 s another), so ``--retrain`` runs the
retrain itself (the ``retrain`` algorithm, into ``<config>/retrain``) in the same run, just
before the erasure, and divides by that.

Resumable: each configuration's result is written to ``DIR/<config>/result.json`` as it ends
and the trained bases stay in ``DIR``; a second call only runs what is missing. Writes
``benchmarks/results/record-deletion-<device>.json`` and prints the README table's rows.
``--set`` changes EraseDiff options from their defaults (a variant under study); give it a
``--tag``, which names its result files (``result-<tag>.json``, ``record-deletion-<tag>-<device>.json``)
so that the defaults' results stay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from _common import (  # benchmarks/ is the script's folder: on sys.path
    add_erasediff_variant_flags,
    erasediff_options,
    machine,
)
from tqdm import tqdm

from unlearn_lib.audit import AuditParams, run_audit, train_evaluator
from unlearn_lib.data import DigitsConfig, ForgetTargets, build_digits, load_dataset
from unlearn_lib.errors import UnlearnError
from unlearn_lib.models import TrainConfig, ensure_base_model
from unlearn_lib.unlearning import erase

# 3-10 marked images, 10-40 copies, several digits and dataset seeds (issue 11, part 3).
DEFAULT_CONFIGS = ["3x40@7s0", "10x10@3s1", "6x20@1s2", "5x40@9s3", "10x40@0s4", "3x10@5s5", "8x25@2s6"]
MAX_COST = 0.3  # of a retrain


def parse_config(text: str) -> DigitsConfig:
    m = re.fullmatch(r"(\d+)x(\d+)@(\d)s(\d+)", text)
    if not m:
        raise SystemExit(f"configuration {text!r} is not NxC@DsS (e.g. 3x40@7s0)")
    n, copies, digit, seed = map(int, m.groups())
    return DigitsConfig(canaries=n, canary_copies=copies, canary_label=digit, seed=seed)


def run_config(
    name: str,
    work: Path,
    base_steps: int,
    evaluator_dir: Path,
    overrides: dict | None = None,
    suffix: str = "",
    retrain: bool = False,
) -> dict:
    folder = work / name
    data_dir = folder / "data"
    if not (data_dir / "dataset.json").exists():
        build_digits(data_dir, parse_config(name), overwrite=True)
    dataset = load_dataset(data_dir)
    t0 = time.perf_counter()
    _, trained = ensure_base_model(dataset, folder / "base", TrainConfig(steps=base_steps), progress=False)
    train_file = folder / "train_seconds.json"
    if trained is not None:
        train_file.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    retrain_seconds = recorded = json.loads(train_file.read_text())["seconds"]

    targets = ForgetTargets.build(subject_ids=["subject-canary"])
    timing = {"retrain_timed": "when the base was trained", "retrain_seconds_recorded": recorded}
    if retrain:
        # A checkpoint left by an earlier, interrupted retrain would be resumed: not a timing.
        shutil.rmtree(folder / "retrain.checkpoints", ignore_errors=True)
        t0 = time.perf_counter()
        erase(folder / "base", data_dir, targets, "retrain", folder / "retrain", {}, overwrite=True, progress=False)
        retrain_seconds = time.perf_counter() - t0
        timing["retrain_timed"] = "in this run, just before the erasure"
    erased = folder / f"erased{suffix}"
    shutil.rmtree(f"{erased}.checkpoints", ignore_errors=True)  # likewise for the erasure
    t0 = time.perf_counter()
    try:
        result, _ = erase(
            folder / "base", data_dir, targets, "erasediff", erased, overrides, overwrite=True, progress=False
        )
    except UnlearnError as err:
        # A run that cannot land its stop must say so (issue 11): that is a result, not a crash.
        return {
            "config": name,
            "overrides": overrides or {},
            "retrain_seconds": retrain_seconds,
            **timing,
            "refused": str(err),
            "cost": None,
            "passed": False,
        }
    unlearn_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    audit = run_audit(
        folder / "base",
        erased,
        data_dir,
        targets,
        folder / f"audit{suffix}",
        params=AuditParams(),
        evaluator_dir=evaluator_dir,
        overwrite=True,
    )
    gates = {
        g["metric"]: {"value": g.get("value"), "passed": g["passed"], "inconclusive": bool(g.get("inconclusive"))}
        for g in audit.record["gates"]
    }
    return {
        "config": name,
        "overrides": overrides or {},
        "retrain_seconds": retrain_seconds,
        **timing,
        "unlearn_seconds": unlearn_seconds,
        "audit_seconds": time.perf_counter() - t0,
        "cost": unlearn_seconds / retrain_seconds,
        "steps": result.steps,
        "stop": result.stop,
        "escalation": result.config.get("resolved_target", {}).get("escalation"),
        "verdict": audit.record["verdict"],
        "gates": gates,
        "passed": audit.record["verdict"] == "pass" and unlearn_seconds / retrain_seconds <= MAX_COST,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--workdir", default="benchmarks/.work/record-deletion")
    ap.add_argument("--fresh", action="store_true", help="re-run the deletions (the bases are kept)")
    add_erasediff_variant_flags(ap, example="--set lr=3e-4")
    ap.add_argument(
        "--retrain",
        action="store_true",
        help="retrain each configuration without its canaries in this run and divide by that time "
        "(not by the base's recorded training time)",
    )
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads for torch")
    args = ap.parse_args()
    for name in args.configs:
        parse_config(name)
    overrides = erasediff_options(args)
    suffix = f"-{args.tag}" if args.tag else ""
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    evaluator_dir = work / "evaluator"
    if not evaluator_dir.exists():
        # The judge of every configuration: trained on the plain digits (no canaries), once.
        plain = build_digits(work / "plain-data", DigitsConfig(canaries=0, holdout_canaries=0), overwrite=True)
        train_evaluator(plain, progress=False).save(evaluator_dir, overwrite=True)

    rows = []
    for name in tqdm(args.configs, desc="configurations"):
        done = work / name / f"result{suffix}.json"
        if done.exists() and not args.fresh:
            rows.append(json.loads(done.read_text()))
            continue
        row = run_config(name, work, args.base_steps, evaluator_dir, overrides, suffix, args.retrain)
        done.write_text(json.dumps(row, indent=2, default=float) + "\n")
        rows.append(row)

    out = {"machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"record-deletion{suffix}-{dev}.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"machine: {out['machine']}")
    print(
        "| canaries (N x copies @ digit, seed) | steps | unlearning | retrain | cost | verdict | failed gates "
        "| inconclusive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("refused"):
            print(f"| {r['config']} | - | refused | {r['retrain_seconds']:.0f} s | - | - | {r['refused']} | |")
            continue
        failed = ", ".join(k for k, g in r["gates"].items() if not g["passed"]) or "-"
        weak = ", ".join(k for k, g in r["gates"].items() if g.get("inconclusive")) or "-"
        print(
            f"| {r['config']} | {r['steps']} | {r['unlearn_seconds']:.0f} s | {r['retrain_seconds']:.0f} s | "
            f"{r['cost']:.2f}x | {r['verdict']} | {failed} | {weak} |"
        )
    passed = sum(r["passed"] for r in rows)
    print(f"{passed} of {len(rows)} pass the audit at <= {MAX_COST}x a retrain; wrote {path}")


if __name__ == "__main__":
    main()
