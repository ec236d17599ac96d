"""A records-free memorization probe: does a class keep regenerating one image its data does not hold?

    OMP_NUM_THREADS=2 python benchmarks/bench_recurring_generations.py --dataset DIR --tag TAG \\
        --models DIR [DIR ...] [--classes 0 1 ... 9] [--draws 1] [--alpha 0.35] [--samples 500]

The audit's extraction test needs the deleted records: after the pipeline purges them, no later
audit can ask whether a later erasure brought them back (benchmarks/README.md, "`lam` 3 for class
deletions", item 6). Carlini et al. 2023 found memorized images without the training set, by how
often near-identical generations recur. This measures that signal here: per model and class,
``--samples`` samples (default 500: the extraction test's count; its steps and guidance); for
each sample, how many *other* samples lie within ``alpha`` times its mean distance to its 50
nearest retained training images (the extraction criterion's own scale, with the generation in
the record's place). The reference is ``--dataset``'s training records less the canary subject,
what a purged dataset still holds. A clean class has a handful; a class that regurgitates an image has dozens.

Where ``--dataset`` still holds the canaries, the audit's records-based extraction test of the
canaries runs on the same samples of their class, for comparison. Draw i uses sampling seed 1
(the audit's extraction draw) for i = 0, then 100, 101, ... Results:
``results/recurring-generations-<tag>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import canaries_of, machine  # benchmarks/ is the script's folder: on sys.path
from tqdm import tqdm

from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.data import DigitsConfig, load_dataset
from unlearn_lib.data.tensors import TensorSet, to_uint8
from unlearn_lib.measures.distances import extraction_ratios, flat01
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.sampling import sample

K = 50  # the extraction test's k


def recurrence(generated: torch.Tensor, reference: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per generated sample (``[-1, 1]``), how many other samples lie within ``alpha`` times its
    mean distance to its ``K`` nearest ``reference`` images (flat, in [0, 1])."""
    g = flat01(to_uint8(generated))
    scale = torch.cdist(g, reference).topk(K, largest=False).values.mean(1)
    d = torch.cdist(g, g)
    d.fill_diagonal_(float("inf"))
    return (d < alpha * scale[:, None]).sum(1)


def seed_of(draw: int, params: AuditParams) -> int:
    return params.seed + 1 if draw == 0 else 99 + draw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, help="a digits dataset folder (purged or not)")
    ap.add_argument("--models", nargs="+", required=True, help="conditional model folders, in report order")
    ap.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--samples", type=int, default=AuditParams().extraction_samples, help="per class and draw")
    ap.add_argument("--tag", required=True, help="names the results file")
    args = ap.parse_args()
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    if args.samples < 2:
        ap.error("--samples must be at least 2")
    if not 0 < args.alpha <= 1:
        ap.error("--alpha must be in (0, 1]")
    if bad := [c for c in args.classes if not 0 <= c <= 9]:
        ap.error(f"--classes: not a digit class: {bad}")
    if missing := [m for m in args.models if not Path(m).is_dir()]:
        ap.error(f"not a model folder: {', '.join(missing)}")

    params = AuditParams()
    ds = load_dataset(args.dataset)
    subject = DigitsConfig().canary_subject
    reference = flat01(TensorSet.from_records(ds, [r for r in ds.train if r.subject_id != subject]).images)
    found = canaries_of(ds, params.extraction_k)
    canary_labels = {int(v) for v in found[0].labels.tolist()} if found else set()

    rows: list[dict[str, Any]] = []
    with tqdm(total=len(args.models) * len(args.classes) * args.draws, desc="sampling") as bar:
        for m in args.models:
            model = DiffusionModel.load(m)
            if not model.conditional:
                ap.error(f"{m}: the probe samples per class; this model is unconditional")
            for c in args.classes:
                draws = []
                for i in range(args.draws):
                    seed = seed_of(i, params)
                    generated = sample(
                        model,
                        torch.full((args.samples,), c),
                        num_samples=args.samples,
                        steps=params.sampling_steps,
                        guidance_scale=params.guidance_scale,
                        seed=seed,
                    )
                    counts = recurrence(generated, reference, args.alpha)
                    draw: dict[str, Any] = {"seed": seed, "max_recurrence": int(counts.max())}
                    if found and c in canary_labels:
                        canaries, neighbourhood = found
                        ratios = extraction_ratios(canaries.images, neighbourhood, generated, params.extraction_alpha)
                        draw["canary_min_ratio"] = round(float(ratios.ratios.min()), 3)
                    draws.append(draw)
                    bar.update()
                rows.append({"model": str(m), "class": c, "draws": draws})
                line = f"{Path(m).name} class {c}: recurrence {[d['max_recurrence'] for d in draws]}"
                if "canary_min_ratio" in draws[0]:
                    line += f", canary ratio {[d['canary_min_ratio'] for d in draws]}"
                tqdm.write(line)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"recurring-generations-{args.tag}-{dev}.json"
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "dataset": str(args.dataset),
        "reference_images": int(reference.shape[0]),
        "samples_per_draw": args.samples,
        "alpha": args.alpha,
        "k": K,
        "rows": rows,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
