"""The canaries' look-alikes against a retrain, over the record-deletion benchmark's canary sets.

    OMP_NUM_THREADS=1 python benchmarks/bench_lookalikes.py [--workdir benchmarks/.work/record-deletion]
        [--configs 10x40@0s4 ...] [--erased TAG ...] [--timesteps 25 50 100 200 --tag NAME]

Reads the models ``bench_record_deletion.py --retrain`` leaves in each canary set's folder
(``base``, ``erased``, ``retrain``) and measures, with the audit's own ``denoising_loss`` (seed 0),
the loss on the hold-out records that share a forget record's caption (what the audit reports
as ``lookalike_loss``) and on the whole hold-out. ``--erased TAG`` reads a variant's model
(``erased-TAG``, what ``bench_record_deletion.py --tag TAG`` leaves) instead of ``erased``; give
several to compare them. ``--timesteps`` adds each model's loss on the look-alikes and on the
forget records at each of those timesteps alone (where an erasure over- or under-forgets), and
``--bandwidths`` the error of the neighbours forgetting target itself on the forget records at
those timesteps, for each ``neighbours_bandwidth`` given (built on the base model, as a run builds
it: what a model that fitted the target exactly would read).
Writes ``benchmarks/results/record-deletion-lookalike-retrain[-NAME]-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit.utility import denoising_loss
from unlearn_lib.data import DigitsConfig, ForgetTargets, load_dataset, select
from unlearn_lib.data.tensors import TensorSet, to_model_space
from unlearn_lib.models import DiffusionModel, ForwardProcess
from unlearn_lib.unlearning.erasediff import EraseDiffConfig
from unlearn_lib.unlearning.targets import NeighbourTarget, nearest_neighbours


@torch.no_grad()
def target_errors(
    base: DiffusionModel,
    forget: TensorSet,
    retain: TensorSet,
    bandwidths: list[float],
    timesteps: list[int],
    draws: int = 4,
) -> dict[str, dict[str, float]]:
    """Per bandwidth and timestep, the mean squared error of the neighbours target against the true noise (seed 0)."""
    nb = nearest_neighbours(
        forget.images, forget.labels, retain.images, retain.labels, EraseDiffConfig().neighbours, True
    )
    dev = base.device
    fp = ForwardProcess(base.scheduler, dev)
    x0, y, n = to_model_space(forget.images).to(dev), forget.labels.to(dev), len(forget)
    out: dict[str, dict[str, float]] = {}
    for h in bandwidths:
        target = NeighbourTarget(
            base.unet, fp, nb, retain.images.to(dev), retain.labels.to(dev), base.null_class, bandwidth=h
        )
        gen = torch.Generator().manual_seed(0)  # the same noise for every bandwidth
        out[str(h)] = {}
        for t in timesteps:
            tt = torch.full((n,), t, device=dev)
            err = 0.0
            for _ in range(draws):
                eps = torch.randn(x0.shape, generator=gen).to(dev)
                got, _ = target(x0, y, y, torch.arange(n, device=dev), tt, eps, fp.add_noise(x0, eps, tt))
                err += float((got - eps).pow(2).mean()) / draws
            out[str(h)][str(t)] = round(err, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(Path(__file__).parent / ".work" / "record-deletion"))
    ap.add_argument("--configs", nargs="+", help="canary set folders to read (default: all)")
    ap.add_argument("--erased", nargs="+", metavar="TAG", help="read erased-TAG instead of erased")
    ap.add_argument("--timesteps", nargs="+", type=int, default=[], help="also the loss at each of these alone")
    ap.add_argument("--bandwidths", nargs="+", type=float, default=[], help="the target's own error at each")
    ap.add_argument("--tag", help="names the results file (required with --erased or --timesteps)")
    args = ap.parse_args()
    if (args.erased or args.timesteps or args.configs) and not args.tag:
        raise SystemExit("--configs/--erased/--timesteps describe another measurement: name its results with --tag")
    if args.bandwidths and not args.timesteps:
        raise SystemExit("--bandwidths measures the target at --timesteps: give them")
    erased = [f"erased-{t}" for t in args.erased] if args.erased else ["erased"]
    roles = ("base", *erased, "retrain")
    rows: dict[str, dict] = {}
    folders = sorted(p for p in Path(args.workdir).iterdir() if "@" in p.name)
    if args.configs:
        missing = sorted(set(args.configs) - {f.name for f in folders})
        if missing:
            raise SystemExit(f"no canary set folder {', '.join(missing)} in {args.workdir}")
        folders = [f for f in folders if f.name in args.configs]
    for folder in folders:
        ds = load_dataset(folder / "data")
        sel = select(ds, ForgetTargets.build(subject_ids=[DigitsConfig().canary_subject]))
        look = TensorSet.from_records(ds, sel.lookalikes())
        whole = TensorSet.from_records(ds, sel.holdout)
        forget = TensorSet.from_records(ds, sel.erasable).distinct()
        row: dict = {"lookalikes": len(look), "holdout": len(whole)}
        for role in roles:
            if (folder / role).is_dir():
                model = DiffusionModel.load(folder / role)
                row[role] = {
                    "lookalike_loss": round(denoising_loss(model, look, seed=0), 4),
                    "holdout_loss": round(denoising_loss(model, whole, seed=0), 4),
                    "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / role).stat().st_mtime)),
                }
                for name, data in (("lookalike", look), ("forget", forget)) if args.timesteps else ():
                    row[role][f"{name}_loss_by_t"] = {
                        str(t): round(denoising_loss(model, data, seed=0, timesteps=[t]), 4) for t in args.timesteps
                    }
        if args.bandwidths:
            base = DiffusionModel.load(folder / "base")
            retain = TensorSet.from_records(ds, sel.retain)
            row["target_error_by_t"] = target_errors(base, forget, retain, args.bandwidths, args.timesteps)
        for role in erased:
            if role in row and "retrain" in row:
                for key in ("lookalike_loss", "holdout_loss"):
                    row[f"{key}_{role}_over_retrain"] = round(row[role][key] / row["retrain"][key], 3)
        rows[folder.name] = row
        print(folder.name, json.dumps(row), flush=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    name = f"record-deletion-lookalike-retrain-{args.tag}" if args.tag else "record-deletion-lookalike-retrain"
    path = Path(__file__).parent / "results" / f"{name}-{dev}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
