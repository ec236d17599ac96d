"""Go on with a pipeline sequence from one of its versions, by the library, on the pipeline's data.

    OMP_NUM_THREADS=2 python benchmarks/bench_resume_sequence.py --workdir DIR --evaluator DIR \\
        [--from v4] [--sequence 8 1 6] [--seed 1] [--set NAME=VALUE ... --tag NAME]

``--workdir`` is a ``bench_successive.py --path pipeline`` work folder (``versions/vN``, ``data``).
From ``--from`` on, each class in ``--sequence`` is erased by ``erase`` (the library call the
pipeline's unlearn step makes) on the data the pipeline would serve: the source minus every
deletion in the parent's lineage (a purge ledger written from it), so the records of an earlier
record deletion are not in it. No audit and no redraw: each child is the next parent. A variant
(``--set``, e.g. ``records_anchor_weight=1``) can thus be tried on the pipeline's own models in
minutes instead of re-running the whole sequence; without one, each child is the pipeline's own
next version when that request landed on its first draw (each compared with ``versions/v{n+i+1}``,
one version per request assumed: ``same_as_pipeline``).

After each step the same judge as ``bench_successive.py`` (its ``Judge``) scores the model: P of
every erased class, the kept classes' accuracy and FID, and the canaries' extraction test on the
unpurged data. A lineage entry written before 2026-12-06 has no ``record_labels``; a record
deletion's are filled in (the canary subject's: ``--record-labels``, default 7) on a copy of the
starting version, so that ``records_anchor_weight`` has labels to hold. Writes
``benchmarks/results/resume-sequence-<tag or defaults>-seed<seed>-<device>.json``. The committed
``defaults`` file is of 2026-12-06, the anchor off; since 2026-12-07 the defaults anchor the purged
records' labels, so a run without ``--set`` writes another model under that name.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_erasediff_variant_flags, erasediff_options, machine  # benchmarks/ is on sys.path
from bench_kept_weight import dataset_as_purged
from bench_successive import Judge
from tqdm.auto import tqdm

from unlearn_lib.audit import Evaluator
from unlearn_lib.data import ForgetTargets
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.diffusion import META_NAME
from unlearn_lib.models.digest import model_digest
from unlearn_lib.models.lineage import erased_labels
from unlearn_lib.unlearning import erase


def starting_copy(src: Path, dst: Path, record_labels: list[int]) -> list[dict[str, Any]]:
    """``src`` copied to ``dst``, its record deletions given ``record_labels`` where they lack them."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    meta = json.loads((dst / META_NAME).read_text())
    for entry in meta["lineage"]["deletions"]:
        if entry["scope"] == "records" and "record_labels" not in entry:
            entry["record_labels"] = record_labels
    (dst / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta["lineage"]["deletions"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a bench_successive.py --path pipeline work folder")
    ap.add_argument("--evaluator", required=True, help="a trained evaluator folder (the judge)")
    ap.add_argument("--from", dest="start", default="v4", help="the version to go on from (versions/<it>)")
    ap.add_argument("--sequence", nargs="+", type=int, default=[8, 1, 6], help="classes to erase, in order")
    ap.add_argument("--seed", type=int, default=1, help="EraseDiff's seed for every step")
    ap.add_argument("--record-labels", nargs="+", type=int, default=[7])
    ap.add_argument("--per-class", type=int, default=100)
    add_erasediff_variant_flags(ap, example="--set records_anchor_weight=1")
    args = ap.parse_args()
    options = erasediff_options(args)
    work = Path(args.workdir)
    source = work / "data"
    start = work / "versions" / args.start
    if not (start / META_NAME).exists() or not (source / "manifest.jsonl").exists():
        raise SystemExit(f"{work} is not a pipeline work folder with versions/{args.start} and data/")
    out_dir = work / "resumed" / f"{args.tag or 'defaults'}-seed{args.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    deletions = starting_copy(start, out_dir / args.start, args.record_labels)
    erased = erased_labels(deletions)
    kept = [c for c in range(10) if c not in erased and c not in args.sequence]
    judge = Judge(Evaluator.load(args.evaluator), source, args.per_class, kept)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    stem = f"resume-sequence-{args.tag or 'defaults'}-seed{args.seed}"
    path = Path(__file__).parent / "results" / f"{stem}-{dev}.json"
    out: dict[str, Any] = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "workdir": str(work),
        "from": args.start,
        "sequence": args.sequence,
        "seed": args.seed,
        "options": options,
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        ).stdout.strip(),
        "kept_classes": kept,
        "steps": [],
    }
    parent = out_dir / args.start
    start_no = int(args.start.lstrip("v"))
    for i, c in enumerate(tqdm(args.sequence, desc="erase", unit="class")):
        # The served data: the source minus every deletion the parent has absorbed (purged anew:
        # dataset_as_purged keeps a folder it finds, and another --sequence would find a stale one).
        served = out_dir / f"served-{i}"
        if served.exists():
            shutil.rmtree(served)
        dataset_as_purged(source, DiffusionModel.load(parent), served)
        child = out_dir / f"erase-{c}"
        t0 = time.perf_counter()
        erase(parent, served, ForgetTargets.build(labels=[c]), "erasediff", child,
              {"seed": args.seed, **options}, progress=False, overwrite=True)  # fmt: skip
        seconds = round(time.perf_counter() - t0, 1)
        erased.append(c)
        pipeline_child = work / "versions" / f"v{start_no + i + 1}"
        row = {"erased": c, "erase_seconds": seconds, **judge(DiffusionModel.load(child), erased, True)}
        if pipeline_child.exists():
            row["same_as_pipeline"] = model_digest(child) == model_digest(pipeline_child)
        out["steps"].append(row)
        path.write_text(json.dumps(out, indent=2) + "\n")  # a long run keeps what it measured
        tqdm.write(
            f"erase {c}: {seconds:.0f}s, P {row['p_erased']}, kept {row['kept_accuracy']:.3f}, "
            f"canaries {row['canaries']}, same as the pipeline's: {row.get('same_as_pipeline')}"
        )
        parent = child
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
