"""Could the audit see a deleted subject come back without keeping the subject's images?

Through the pipeline the data is purged, so a later request's audit has no images of an earlier
record deletion to run its extraction test on (``audit/run.py::earlier_deleted_records`` returns
nothing there), and on unlearning seed 1 erasing 8 right after the canary subject's deletion
brought 2 of its 3 images back unseen (benchmarks/README.md, "Through the pipeline, unlearning
seed 1"). This script reads two signals that need no deleted image, on every production version
of a ``bench_successive.py --path pipeline`` run from the one before the subject's deletion on,
beside the ground truth the audit cannot have there (the extraction test on the unpurged data):

* ``duplicate_share`` (per version; Carlini et al. 2023, "Extracting Training Data from Diffusion
  Models": a memorized image is regenerated near-identically from many noises): of the audit's
  extraction draw under the deleted records' label (``extraction_samples`` samples, seed + 1),
  the share whose nearest other sample lies within half the draw's median nearest-other distance;
* ``paired_ratio`` (per request, parent against child; as ``earlier_signal.py`` reads classes):
  the median distance between the parent's and the child's samples from the same noise under
  that label, over the same median for classes the run never erases (how far a legitimate
  deletion moves samples anyway); ``paired_q95_ratio`` the same at the 95th percentile.

Usage: OMP_NUM_THREADS=2 python benchmarks/resurgence_signals.py
           --run benchmarks/results/successive-pipeline-full-TAG-cpu.json --workdir WORKDIR [--tag NAME]
Writes results/resurgence-signals[-TAG]-<device>.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import canaries_of, machine, pipeline_run_args  # benchmarks/ is the script's folder: on sys.path
from bench_successive import SUBJECT
from tqdm.auto import tqdm

from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.audit.memorization import extraction_test
from unlearn_lib.data import load_dataset
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.sampling import sample

KEPT_PER_CLASS = 200  # per never-erased class, for the paired distances' yardstick


def production_versions(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(version, the request that made it) for the run's base and every request that moved production."""
    out = [(str(run["base"]["version"]), "base")]
    out += [(str(s["production_version"]), str(s["erased"])) for s in run["steps"] if s.get("production_moved")]
    return out


def duplicate_share(x: torch.Tensor) -> float:
    """Share of ``x``'s samples with a near-identical other sample (within half the median nearest-other distance)."""
    f = x.flatten(1).double()
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    nearest = d.min(dim=1).values
    return float((nearest < 0.5 * nearest.median()).double().mean())


def main() -> None:
    args, run = pipeline_run_args()
    work = args.workdir
    if SUBJECT not in [str(s) for s in run["sequence"]]:
        raise SystemExit("the run does not delete the canary subject")
    found = canaries_of(load_dataset(work / "data"), AuditParams().extraction_k)
    if found is None:
        raise SystemExit(f"{work}/data holds no canary subject")
    canaries, hood = found
    labels = sorted({int(v) for v in canaries.labels.tolist()})
    if len(labels) != 1:
        raise SystemExit(f"the canaries carry labels {labels}: this script reads one")
    label = labels[0]
    kept = [c for c in run["kept_classes"] if c != label]
    chain = production_versions(run)
    at = next((i for i, (_, made_by) in enumerate(chain) if made_by == SUBJECT), None)
    if at is None:
        raise SystemExit("the subject's deletion never moved production in this run: no version to start from")
    first = at - 1
    chain = chain[first:]
    missing = [v for v, _ in chain if not (work / "versions" / f"v{v}").is_dir()]
    if missing:
        raise SystemExit(f"{work}/versions lacks v{', v'.join(missing)}")
    params = AuditParams()
    t0 = time.perf_counter()
    draws: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for version, _ in tqdm(chain, desc="versions"):
        model = DiffusionModel.load(work / "versions" / f"v{version}")
        # The label's draw is the audit's extraction draw (its seed, size and sampler); the kept
        # classes' draw uses the same seed in both models, so each sample has its pair.
        xl, xk = (
            sample(
                model,
                torch.tensor(y),
                num_samples=len(y),
                steps=params.sampling_steps,
                guidance_scale=params.guidance_scale,
                seed=params.seed + 1,
            )
            for y in ([label] * params.extraction_samples, [c for c in kept for _ in range(KEPT_PER_CLASS)])
        )
        draws[version] = xl, xk
    rows: list[dict[str, Any]] = []
    for i, (version, made_by) in enumerate(chain):
        xl, xk = draws[version]
        truth = extraction_test(canaries, hood, xl, params.extraction_alpha, params.extraction_k)
        row: dict[str, Any] = {
            "version": version,
            "made_by": made_by,
            "canaries_extracted": truth.extracted,
            "canaries_min_ratio": round(min(truth.ratios), 3),
            "duplicate_share": round(duplicate_share(xl), 4),
        }
        if i > 0:
            pl, pk = draws[chain[i - 1][0]]
            dl, dk = (xl - pl).flatten(1).norm(dim=1), (xk - pk).flatten(1).norm(dim=1)
            row |= {
                "parent": chain[i - 1][0],
                "paired_ratio": round(float(dl.median() / dk.median()), 3),
                "paired_q95_ratio": round(float(dl.quantile(0.95) / dk.quantile(0.95)), 3),
            }
        rows.append(row)
        print(row, flush=True)
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "run": Path(args.run).name,
        "options": run.get("options"),
        "label": label,
        "kept_classes": kept,
        "samples": {"label": params.extraction_samples, "per_kept_class": KEPT_PER_CLASS},
        "versions": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "resurgence-signals" + (f"-{args.tag}" if args.tag else "") + f"-{device}.json"
    path = Path(__file__).parent / "results" / name
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
