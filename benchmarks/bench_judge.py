"""The class judge with and without label smoothing: its calibration, and what it reads on erasures.

    python benchmarks/bench_judge.py --base DIR [--seeds 0 1 2 3 4] [--smoothing 0.05 0]
        [--workdir DIR] [--threads 1] [--tag NAME] [--set remap_to=nearest-class]

For each label smoothing, a judge (``train_evaluator``: three CNN members) is trained on the
digits dataset (built in ``--workdir``; the same data the base was trained on when the base is the
test suite's or ``dvc.yaml``'s). On the plain hold-out digits it reports accuracy, expected calibration
error (10 confidence bins), negative log-likelihood and the mean probability of 3 on genuine 9s.
Then EraseDiff's defaults erase class 3 from ``--base`` once per seed, and every judge scores
the same samples (100 per class, 25 DDIM steps, sampling seed 123): P(3 | asked for 3), the
retained classes' accuracy, and P(3) on the samples asked for the class the run sent 3 to (the
judge's floor there: what a flawless erasure onto it reads). Writes
``benchmarks/results/judge-smoothing[-<tag>]-<device>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine  # benchmarks/ is the script's folder: on sys.path
from tqdm import tqdm

from unlearn_lib.audit import Evaluator, class_figures, generate_class_samples, train_evaluator
from unlearn_lib.data import DigitsConfig, ForgetTargets, TensorSet, build_digits, load_dataset, select
from unlearn_lib.models import DiffusionModel
from unlearn_lib.unlearning import make_unlearner, task_from_selection

FORGET, PER_CLASS, SAMPLING_SEED = 3, 100, 123
# P(3) on genuine hold-out 9s: the class the mean-image rule sends 3 to, where smoothing showed first.
GENUINE = 9


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error: the bins' gap between confidence and accuracy, weighted by their share."""
    conf, pred = probs.max(-1)
    right = (pred == labels).float()
    ece = 0.0
    for i in range(bins):
        m = (conf > i / bins) & (conf <= (i + 1) / bins)
        if m.any():
            ece += float(m.float().mean() * (right[m].mean() - conf[m].mean()).abs())
    return ece


def judged(model: DiffusionModel, judges: dict[str, Evaluator], sent_to: int) -> dict:
    """Every judge scores the same samples: drawn once, then re-read by each judge.

    ``sent_to``: where the erasure sent 3 (for the base model, where the erasures did), whose samples'
    P(3) is the judge's floor under a flawless erasure.
    """
    drawn = generate_class_samples(model, next(iter(judges.values())), PER_CLASS, seed=SAMPLING_SEED)
    out = {}
    for name, ev in judges.items():
        samples = dataclasses.replace(drawn, probs=ev.predict_proba(drawn.images))
        figs = class_figures(samples, [FORGET])
        _, p_sent = samples.for_class(sent_to)
        out[name] = {
            "p_forgotten": figs.mean_forgotten_probability,
            "retained_accuracy": figs.retained_accuracy,
            "sent_to": sent_to,
            f"p{FORGET}_on_destination": float(p_sent[:, FORGET].mean()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="a digits base model (e.g. the test suite's .cache/tests/base-*)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--smoothing", type=float, nargs="+", default=[0.05, 0.0])
    ap.add_argument("--workdir", default="benchmarks/.work/judge")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="an EraseDiff option for every seed (repeatable)")  # fmt: skip
    args = ap.parse_args()
    options = dict(kv.split("=", 1) for kv in args.options)
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if not (work / "data" / "dataset.json").exists():
        build_digits(work / "data", DigitsConfig(), overwrite=True)
    dataset = load_dataset(work / "data")
    judges = {
        f"smoothing {ls:g}": train_evaluator(dataset, progress=False, label_smoothing=ls) for ls in args.smoothing
    }

    # The plain hold-out digits (the canaries' marked look-alikes are a made-up subject, not a digit style).
    plain = [r for r in dataset.holdout if r.label is not None and "mark" not in (r.caption or "")]
    hold = TensorSet.from_records(dataset, plain)
    genuine = hold.labels == GENUINE
    out: dict = {"machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "judges": {}}
    for name, ev in judges.items():
        p = ev.predict_proba(hold.images)
        out["judges"][name] = {
            "holdout_records": len(hold),
            "holdout_accuracy": float((p.argmax(-1) == hold.labels).float().mean()),
            "ece": calibration(p, hold.labels),
            "nll": float(F.nll_loss(ev.logits(hold.images), hold.labels)),  # logits: the members' mean, logged
            f"p{FORGET}_on_holdout_{GENUINE}s": float(p[genuine][:, FORGET].mean()),
        }
    base = DiffusionModel.load(args.base)
    task = task_from_selection(dataset, select(dataset, ForgetTargets.build(labels=[FORGET])), base)
    out["options"] = options
    out["seeds"] = {}
    for seed in tqdm(args.seeds, desc=f"erase {FORGET}"):
        t0 = time.perf_counter()
        result = make_unlearner("erasediff", {**options, "seed": seed}).run(task, progress=False)
        seconds = time.perf_counter() - t0
        sent_to = int(result.config["resolved_target"]["mapping"][str(FORGET)])
        out["seeds"][str(seed)] = judged(result.model, judges, sent_to) | {"seconds": seconds}
    out["base"] = judged(base, judges, sent_to)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"judge-smoothing{'-' + args.tag if args.tag else ''}-{dev}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["judges"], indent=1))
    for name in judges:
        rows = [out["seeds"][str(s)][name] for s in args.seeds]
        print(
            f"{name}: P(forgotten) " + ", ".join(f"{r['p_forgotten']:.3f}" for r in rows)
            + "; retained " + ", ".join(f"{r['retained_accuracy']:.3f}" for r in rows)
            + f" (base {out['base'][name]['retained_accuracy']:.3f})"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
