"""Retrain-equivalence, the field's strictest test: the NeurIPS 2023 unlearning challenge's forget score.

    python benchmarks/bench_forgetting_quality.py [--n 32] [--forget canary random]
        [--methods erasediff erasediff-paper neggrad finetune salun] [--workdir DIR] [--threads 1]

For each forget set (``canary``: the digits dataset's canary subject, 3 marked sevens x 40 copies;
``random``: a random 2% of the training records, drawn with ``--random-seed``), one original
model is trained on everything (2,000 steps, as ``dvc.yaml``'s ``train``), then

* N models are retrained without the forget set (``erase --algorithm retrain``, seeds 0..N-1:
  the base's configuration on the retained records), and
* N unlearned models are made from the original by each method (seeds 0..N-1).

Per forget record (distinct image) two membership statistics are measured on every model: the
negative denoising loss over a fixed grid of timesteps and noise draws, and PIA's proximal
statistic (Kong et al. 2024). ``unlearn_lib.audit.forget_quality`` turns the two samples of N
values into an (epsilon, delta = 1e-5) estimate from the best threshold rule and buckets it
into points; the forget score is the mean over records (1: no rule tells the method's models
from retrained ones). "loss+pia" lets each record take the stronger of the two. A reference
row splits the retrained models in two halves and scores one half against the other: the
score sampling noise alone leaves at N/2 models a side, which the methods' rows (at N) should
be read against.

Over-erasure is reported separately: the evaluator's accuracy on samples of the forget records'
classes (still retained classes when deleting records), and on all classes.

Selective Amnesia erases classes (its surrogate replaces what a label generates) and refuses
record deletions: it has no row here. SalUn runs in our record-wise form (each forget record
relabelled with a random other class, the published hyper-parameters: 1,000 steps at batch
128 + 128: 200-210 s a model on 2 CPU cores, about twice a retrain). Resumable: every model's
statistics are written to ``DIR/<forget>/stats/<method>-<seed>.json`` when it is measured, and
a second call only makes the models that are missing (an N = 32 run on 2 CPU cores takes hours:
a retrain is about 2-3 minutes). Writes ``benchmarks/results/forgetting-quality-<device>.json``
and two pictures per forget set, one dot per model and one dot per record (where each method
leaves each record, in that record's retrained spread, against where the original had it), and
prints the README table's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path
from tqdm import tqdm

from unlearn_lib.audit import Evaluator, class_figures, generate_class_samples, train_evaluator
from unlearn_lib.audit.forget_quality import combined_score, forget_score
from unlearn_lib.audit.memorization import loss_scores, pia_scores
from unlearn_lib.data import Dataset, DigitsConfig, ForgetTargets, TensorSet, build_digits, load_dataset, select
from unlearn_lib.errors import UnlearnError
from unlearn_lib.models import DiffusionModel, TrainConfig, ensure_base_model
from unlearn_lib.unlearning import make_unlearner, task_from_selection

# Record-deletion methods: algorithm and options (the seed is added per model).
METHODS: dict[str, tuple[str, dict]] = {
    "erasediff": ("erasediff", {}),
    "erasediff-paper": ("erasediff", {"preset": "paper"}),
    "neggrad": ("neggrad", {}),
    "finetune": ("finetune", {}),
    "salun": ("salun", {}),
}
LOSS_TIMESTEPS = [25, 50, 100, 200, 400]
LOSS_DRAWS = 8
LOSS_SEED = 20231
PIA_T = 200
JUDGE_PER_CLASS = 50
JUDGE_SEED = 123


def forget_targets(kind: str, dataset: Dataset, fraction: float, seed: int) -> ForgetTargets:
    if kind == "canary":
        return ForgetTargets.build(subject_ids=["subject-canary"])
    ids = sorted(r.record_id for r in dataset.train)
    k = max(1, round(fraction * len(ids)))
    return ForgetTargets.build(record_ids=random.Random(seed).sample(ids, k))


def statistics(model: DiffusionModel, records: TensorSet, evaluator: Evaluator, labels: list[int]) -> dict:
    """The two membership statistics per record (higher: more member-like) and over-erasure figures."""
    err = loss_scores(model, records, LOSS_TIMESTEPS, LOSS_DRAWS, LOSS_SEED)
    pia = pia_scores(model, records, PIA_T)
    figs = class_figures(generate_class_samples(model, evaluator, JUDGE_PER_CLASS, seed=JUDGE_SEED), [])
    return {
        "loss": (-err.mean(1)).tolist(),
        "pia": (-pia).tolist(),
        "forget_class_accuracy": float(np.mean([figs.accuracy[c] for c in labels])),
        "accuracy": float(np.mean(list(figs.accuracy.values()))),
    }


def make_models(kind: str, args: argparse.Namespace, work: Path, evaluator: Evaluator) -> Path:
    folder = work / kind
    stats_dir = folder / "stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(work / "data")
    targets = forget_targets(kind, dataset, args.random_fraction, args.random_seed)
    original, _ = ensure_base_model(dataset, folder / "original", TrainConfig(steps=args.base_steps), progress=False)
    selection = select(dataset, targets)
    task = task_from_selection(dataset, selection, original)
    records = TensorSet.from_records(dataset, selection.forget).distinct()
    labels = sorted({int(v) for v in records.labels.tolist()})
    (folder / "records.json").write_text(json.dumps({"n": len(records), "labels": labels}) + "\n")
    if not (stats_dir / "original.json").exists():
        (stats_dir / "original.json").write_text(json.dumps(statistics(original, records, evaluator, labels)))

    jobs = [("retrain", "retrain", {}, i) for i in range(args.n)]
    jobs += [(m, *METHODS[m], i) for i in range(args.n) for m in args.methods]
    todo = [j for j in jobs if not (stats_dir / f"{j[0]}-{j[3]}.json").exists()]
    for name, algorithm, options, seed in tqdm(todo, desc=f"{kind}: models", disable=not todo):
        t0 = time.perf_counter()
        try:
            result = make_unlearner(algorithm, {**options, "seed": seed}).run(task, progress=False)
        except UnlearnError as err:
            # A refused run (e.g. the calibrated stop could not land) is counted, not measured.
            row = {"refused": str(err).splitlines()[0]}
        else:
            row = {"steps": result.steps, "seconds": time.perf_counter() - t0}
            if result.stop:  # how a calibrated run landed: crossed its level, or within its noise
                row["within_noise"] = bool(result.stop.get("within_noise"))
            row |= statistics(result.model, records, evaluator, labels)
        (stats_dir / f"{name}-{seed}.json").write_text(json.dumps(row))
    return folder


def load_stats(folder: Path, name: str, n: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    rows = [json.loads((folder / "stats" / f"{name}-{i}.json").read_text()) for i in range(n)]
    ok = [r for r in rows if "refused" not in r]
    stats = {k: np.array([r[k] for r in ok]) for k in ("loss", "pia")} if ok else {}
    return stats, rows


def record_shifts(original: list[float], retrain: np.ndarray, stats: np.ndarray) -> dict:
    """Where a method leaves each record, in the retrained models' own spread for that record.

    ``z``: (method's mean - retrained mean) / retrained standard deviation, per record; the
    original's ``z`` beside it. A method that undoes each record's memorization takes every record
    to 0 (slope 0 against the original's z); one that pushes all records alike keeps their order
    and only moves them (slope near 1): the most memorized stay on the member side while the least
    are pushed past the retrained models.
    """
    mu, spread = retrain.mean(0), retrain.std(0)
    sd = spread.clip(min=1e-12)
    z_orig, z = (np.asarray(original) - mu) / sd, (stats.mean(0) - mu) / sd
    return {
        "z_original": z_orig.round(3).tolist(),
        "z": z.round(3).tolist(),
        "mean_z": float(z.mean()),
        "mean_abs_z": float(np.abs(z).mean()),
        "mean_abs_z_original": float(np.abs(z_orig).mean()),
        "slope_on_original": float(np.polyfit(z_orig, z, 1)[0]),
        "spread_ratio": float(stats.std(0).mean() / spread.mean()),
    }


def save_picture(fig: plt.Figure, name: str) -> str:
    """Write ``fig`` under ``benchmarks/results`` and return its path relative to ``benchmarks``."""
    fig.tight_layout()
    picture = Path(__file__).parent / "results" / name
    fig.savefig(picture, dpi=110)
    plt.close(fig)
    return str(picture.relative_to(Path(__file__).parent))


def summarize(kind: str, folder: Path, methods: list[str], n: int, tag: str = "") -> dict:
    retrain, retrain_rows = load_stats(folder, "retrain", n)
    half = n // 2
    out: dict = {"records": json.loads((folder / "records.json").read_text()), "rows": {}}

    def row(name: str, stats: dict, rows: list[dict], against: dict) -> dict:
        scores = {k: forget_score(stats[k], against[k], k) for k in ("loss", "pia")}
        both = combined_score(list(scores.values()))
        ok = [r for r in rows if "refused" not in r]
        return {
            "models": len(ok),
            "refused": len(rows) - len(ok),
            "seconds": float(np.mean([r["seconds"] for r in ok])) if ok and "seconds" in ok[0] else None,
            "forget_class_accuracy": float(np.mean([r["forget_class_accuracy"] for r in ok])),
            "accuracy": float(np.mean([r["accuracy"] for r in ok])),
            **{f"score_{k}": s.score for k, s in scores.items()},
            "score_loss+pia": both.score,
            "floor": both.floor,
            "epsilon_median": float(np.median(both.epsilons)),
        }

    halves = ({k: v[:half] for k, v in retrain.items()}, {k: v[half:] for k, v in retrain.items()})
    out["rows"]["retrain (one half against the other)"] = row("retrain", halves[0], retrain_rows[:half], halves[1])
    out["rows"]["retrain (one half against the other)"]["n_a_side"] = half
    out["rows"]["retrain"] = {
        "models": len(retrain_rows),
        "seconds": float(np.mean([r["seconds"] for r in retrain_rows])),
        "forget_class_accuracy": float(np.mean([r["forget_class_accuracy"] for r in retrain_rows])),
        "accuracy": float(np.mean([r["accuracy"] for r in retrain_rows])),
    }
    original = json.loads((folder / "stats" / "original.json").read_text())
    strips = {"retrained": retrain}
    for name in methods:
        stats, rows = load_stats(folder, name, n)
        if not stats:
            out["rows"][name] = {"models": 0, "refused": len(rows)}
            continue
        out["rows"][name] = row(name, stats, rows, retrain)
        out["rows"][name]["records"] = {k: record_shifts(original[k], retrain[k], stats[k]) for k in ("loss", "pia")}
        strips[name] = stats
    # One dot per model (its statistic averaged over the forget records), one row per method: a
    # method whose dots sit among the retrained ones is what retrain-equivalence looks like.
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * len(strips)))
    for ax, k in zip(axes, ("loss", "pia"), strict=True):
        for i, stats in enumerate(strips.values()):
            ax.scatter(stats[k].mean(1), np.full(stats[k].shape[0], i), s=22, alpha=0.7)
        ax.axvline(float(np.mean(original[k])), color="k", linestyle="--", label="original model")
        ax.set_yticks(range(len(strips)), list(strips))
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{kind}: {k} statistic per model (right: member-like)", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    out["figure"] = save_picture(fig, f"forgetting-quality-{kind}{tag}.png")
    # One dot per record: the original's z against the method's. Retrain-equivalence is every dot
    # inside the band around 0 whatever its x; the diagonal is "nothing moved".
    shifted = [m for m in strips if m != "retrained"]
    if shifted:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, k in zip(axes, ("loss", "pia"), strict=True):
            lo, hi = 0.0, 0.0
            for name in shifted:
                r = out["rows"][name]["records"][k]
                label = f"{name} (slope {r['slope_on_original']:.2f})"
                ax.scatter(r["z_original"], r["z"], s=18, alpha=0.75, label=label)
                lo, hi = min(lo, *r["z_original"], *r["z"]), max(hi, *r["z_original"], *r["z"])
            ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, label="nothing moved")
            ax.axhspan(-1, 1, color="tab:blue", alpha=0.12, label="retrained models' mean +- 1 sd")
            if max(-lo, hi) > 20:  # neggrad lands thousands of deviations away: logarithmic beyond +-4
                ax.set_yscale("symlog", linthresh=4.0)
            ax.set_xlabel("original model's z (per record)")
            ax.set_ylabel("method's mean z (per record)")
            ax.set_title(f"{kind}: {k} statistic per record, in retrained sds (up: member-like)", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
        out["figure_records"] = save_picture(fig, f"forgetting-quality-{kind}{tag}-records.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="models a side (retrained, and unlearned per method)")
    ap.add_argument("--forget", nargs="+", choices=("canary", "random"), default=["canary", "random"])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--random-fraction", type=float, default=0.02)
    ap.add_argument("--random-seed", type=int, default=0)
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--workdir", default="benchmarks/.work/forgetting-quality")
    ap.add_argument(
        "--tag", default="", help="suffix of the results file and pictures (a partial run keeps the full one)"
    )
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads for torch")
    args = ap.parse_args()
    if args.n < 4:
        raise SystemExit("--n must be at least 4 (the reference row splits the retrained models in two)")
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data" / "dataset.json").exists():
        build_digits(work / "data", DigitsConfig(), overwrite=True)
    evaluator_dir = work / "evaluator"
    if not evaluator_dir.exists():
        plain = build_digits(work / "plain-data", DigitsConfig(canaries=0, holdout_canaries=0), overwrite=True)
        train_evaluator(plain, progress=False).save(evaluator_dir, overwrite=True)
    evaluator = Evaluator.load(evaluator_dir)

    out = {"machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "n": args.n}
    for kind in args.forget:
        folder = make_models(kind, args, work, evaluator)
        out[kind] = summarize(kind, folder, args.methods, args.n, f"-{args.tag}" if args.tag else "")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    # A run of one forget set names it, as its pictures do (forgetting-quality-random-n32-cpu.json).
    parts = ([] if set(args.forget) == {"canary", "random"} else list(args.forget)) + ([args.tag] if args.tag else [])
    path = Path(__file__).parent / "results" / f"forgetting-quality-{''.join(p + '-' for p in parts)}{dev}.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")

    print(f"machine: {out['machine']}; N = {args.n} models a side")
    print(
        "| forget set | method | models | time a model | forget score: loss | PIA | loss+PIA | "
        "median epsilon | forget-class accuracy | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.forget:
        for name, r in out[kind]["rows"].items():
            if "score_loss" not in r:
                t = f"{r['seconds']:.0f} s" if r.get("seconds") else "-"
                acc = f"{r['forget_class_accuracy']:.3f} | {r['accuracy']:.3f}" if "accuracy" in r else "- | -"
                models = f"{r['models']} (+{r['refused']} refused)" if r.get("refused") else str(r["models"])
                print(f"| {kind} | {name} | {models} | {t} | | | | | {acc} |")
                continue
            t = f"{r['seconds']:.0f} s" if r.get("seconds") else "-"
            print(
                f"| {kind} | {name} | {r['models']} (+{r['refused']} refused) | {t} | {r['score_loss']:.3f} | "
                f"{r['score_pia']:.3f} | {r['score_loss+pia']:.3f} | {r['epsilon_median']:.2f} | "
                f"{r['forget_class_accuracy']:.3f} | {r['accuracy']:.3f} |"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
