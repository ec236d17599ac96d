"""The audit's extraction test of the digits canaries, on several sampling draws per model.

    OMP_NUM_THREADS=2 python benchmarks/bench_canary_redraws.py --dataset DIR --tag TAG \\
        --models DIR [DIR ...] [--draws 5]

One draw (the audit's seed) says whether a canary is extracted from one set of 500 samples of its
class. A model whose nearest sample sits near the threshold (a ratio near 1) may extract on the
next draw: after the successive sequence's last deletion one run read 1.006x. This scores each
model on ``--draws`` more draws (sampling seeds 100, 101, ...) with the audit's own function and
parameters otherwise. ``--dataset`` must still hold the canaries (the CLI path's dataset does;
the pipeline purges its own). Results: ``results/canary-redraws-<tag>-<device>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import canaries_of, machine  # benchmarks/ is the script's folder: on sys.path
from tqdm import tqdm

from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.audit.run import extraction_of
from unlearn_lib.data import DigitsConfig, load_dataset
from unlearn_lib.models import DiffusionModel

FIRST_SEED = 100  # away from the audit's 0 and the successive bench's 123


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, help="a digits dataset folder that still holds the canaries")
    ap.add_argument("--models", nargs="+", required=True, help="model folders, in the order to report them")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--tag", required=True, help="names the results file")
    args = ap.parse_args()
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    missing = [m for m in args.models if not Path(m).is_dir()]
    if missing:
        ap.error(f"not a model folder: {', '.join(missing)}")

    params = AuditParams()
    found = canaries_of(load_dataset(args.dataset), params.extraction_k)
    if found is None:
        ap.error(f"{args.dataset} holds no record of {DigitsConfig().canary_subject} (a purged dataset?)")
    canaries, neighbourhood = found

    rows: list[dict[str, Any]] = []
    with tqdm(total=len(args.models) * args.draws, desc="extraction draws") as bar:
        for m in args.models:
            model = DiffusionModel.load(m)
            draws = []
            for i in range(args.draws):
                res, _ = extraction_of(model, canaries, neighbourhood, dataclasses.replace(params, seed=FIRST_SEED + i))
                draws.append(
                    {
                        "seed": FIRST_SEED + i,
                        "extracted": res.extracted,
                        "ratios": [round(r, 3) for r in res.ratios],
                    }
                )
                bar.update()
            mins = [min(d["ratios"]) for d in draws]
            rows.append(
                {
                    "model": str(m),
                    "draws": draws,
                    "draws_extracting": sum(d["extracted"] > 0 for d in draws),
                    "min_ratio": min(mins),
                    "mean_min_ratio": round(sum(mins) / len(mins), 3),
                }
            )
            print(
                f"{Path(m).name}: extracted on {rows[-1]['draws_extracting']} of {args.draws} draws, "
                f"nearest {min(mins):.3f}-{max(mins):.3f}x the threshold (mean {rows[-1]['mean_min_ratio']:.3f})",
                flush=True,
            )
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"canary-redraws-{args.tag}-{dev}.json"
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "dataset": str(args.dataset),
        "records": len(canaries),
        "samples_per_draw": params.extraction_samples,
        "extraction_alpha": params.extraction_alpha,
        "extraction_k": params.extraction_k,
        "rows": rows,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
