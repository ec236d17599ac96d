"""The canaries' look-alikes against a retrain, over the record-deletion benchmark's canary sets.

    OMP_NUM_THREADS=1 python benchmarks/bench_lookalikes.py [--workdir benchmarks/.work/record-deletion]

Reads the models ``bench_record_deletion.py --retrain`` leaves in each canary set's folder
(``base``, ``erased``, ``retrain``) and measures, with the audit's own ``denoising_loss`` (seed 0),
the loss on the hold-out records that share a forget record's caption (what the audit reports
as ``lookalike_loss``) and on the whole hold-out. Writes
``benchmarks/results/record-deletion-lookalike-retrain-<device>.json``.
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
from unlearn_lib.data.tensors import TensorSet
from unlearn_lib.models import DiffusionModel

ROLES = ("base", "erased", "retrain")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(Path(__file__).parent / ".work" / "record-deletion"))
    args = ap.parse_args()
    rows: dict[str, dict] = {}
    for folder in sorted(p for p in Path(args.workdir).iterdir() if "@" in p.name):
        ds = load_dataset(folder / "data")
        sel = select(ds, ForgetTargets.build(subject_ids=[DigitsConfig().canary_subject]))
        look = TensorSet.from_records(ds, sel.lookalikes())
        whole = TensorSet.from_records(ds, sel.holdout)
        row: dict = {"lookalikes": len(look), "holdout": len(whole)}
        for role in ROLES:
            if (folder / role).is_dir():
                model = DiffusionModel.load(folder / role)
                row[role] = {
                    "lookalike_loss": round(denoising_loss(model, look, seed=0), 4),
                    "holdout_loss": round(denoising_loss(model, whole, seed=0), 4),
                    "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / role).stat().st_mtime)),
                }
        if "erased" in row and "retrain" in row:
            for key in ("lookalike_loss", "holdout_loss"):
                row[f"{key}_erased_over_retrain"] = round(row["erased"][key] / row["retrain"][key], 3)
        rows[folder.name] = row
        print(folder.name, json.dumps(row), flush=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    path = Path(__file__).parent / "results" / f"record-deletion-lookalike-retrain-{dev}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
