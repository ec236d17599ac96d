"""Where do a canary set's base and its retrain sit on EraseDiff's stop extraction check?

    python benchmarks/stop_extraction_margin.py --workdir DIR --config 8x25@2s6 [--seeds 0 1 2 3]

Reads ``DIR/<config>/base`` and ``DIR/<config>/retrain`` as ``bench_record_deletion.py --retrain``
leaves them, builds the unlearning task of the canary subject as ``unlearn erase`` does, and runs
the stop's extraction check (its samples, margin and control, seeded by each EraseDiff seed) on
each model. A retrain that itself reads under the margin on some draws means the stop asks for
more than never having seen the records gives. Writes
``benchmarks/results/record-deletion-<config>-extraction-diag-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.data import ForgetTargets, load_dataset, select
from unlearn_lib.models import DiffusionModel
from unlearn_lib.unlearning.erasediff import EraseDiff, EraseDiffConfig
from unlearn_lib.unlearning.run import task_from_selection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--config", default="8x25@2s6")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args()
    folder = args.workdir / args.config
    dataset = load_dataset(folder / "data")
    base = DiffusionModel.load(folder / "base")
    task = task_from_selection(dataset, select(dataset, ForgetTargets.build(subject_ids=["subject-canary"])), base)
    cfg = EraseDiffConfig()
    models: dict[str, list[dict]] = {}
    for role in ("base", "retrain"):
        if not (folder / role / "unlearn_model.json").is_file():
            raise SystemExit(f"{folder / role} holds no model: run bench_record_deletion.py --retrain first")
        model = DiffusionModel.load(folder / role)
        rows = []
        for seed in args.seeds:
            check = EraseDiff._extractor(EraseDiffConfig(seed=seed), task)
            assert check is not None
            rows.append({"seed": seed, **check.measure(model)})
        models[role] = rows
        print(role, [(r["seed"], round(r["min_extraction_ratio"], 3), r["extractable"]) for r in rows], flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(__file__).parent / "results" / f"record-deletion-{args.config}-extraction-diag-{device}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d"),
                "config": args.config,
                "check": {
                    "samples": cfg.stop_extraction_samples,
                    "min_ratio": cfg.stop_extraction_min_ratio,
                    "forget_images": len(task.forget.distinct()),
                    "control_images": 0 if task.reference is None else len(task.reference.distinct()),
                },
                "models": models,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
