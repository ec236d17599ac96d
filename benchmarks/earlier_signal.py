"""Could a later audit tell more surely that a class erased earlier has come back?

The audit's ``earlier_erasure_drop`` reads, for each class c the parent's lineage erased, the fall
in the share of c's samples that a judge fitted on the served data (it never saw c) reads as c's
destination d. With 3 sent onto 2 such a judge reads about 70% of genuine 3s as 2, so a model in
which 3 came back only reads a drop of ~0.28 (gate 0.2). This script measures that signal beside
two others on the models of a successive-deletions run through the pipeline
(``bench_successive.py --path pipeline``), for two kinds of pairs:

* legitimate: each request that moved production, its parent against its child (what the audit
  must pass);
* came back: every production version that has erased a class against the run's base (v1), in
  which every class erased since is back (what the audit must fail).

Signals, per earlier class c (samples of parent and child from the same noise, the audit's own
sampler and seed):

* ``share_drop``: the audit's (argmax share of d, parent minus child);
* ``prob_drop``: the judge's mean probability of d, parent minus child;
* ``paired_ratio``: the median distance between each parent sample under c and the child's sample
  from the same noise, over the same median for the classes both models keep (how much a
  legitimate deletion moves samples anyway). A class that comes back changes its samples from d's
  look to c's; one still erased changes as little as any kept class.

Usage: python benchmarks/earlier_signal.py --run benchmarks/results/successive-pipeline-full-TAG-cpu.json
       --workdir WORKDIR  (the bench's: versions/vN and data/)
Writes results/earlier-signal[-TAG]-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit import generate_class_samples
from unlearn_lib.audit.evaluator import Evaluator, train_evaluator
from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.data.purge import purge_dataset
from unlearn_lib.models import DiffusionModel


def lineage(run: dict[str, Any]) -> list[tuple[str, list[int], list[int]]]:
    """(production version, classes its lineage erased, classes erased by the request that made it),
    base first, for every request that moved production."""
    out = [(str(run["base"]["version"]), [], [])]
    for step in run["steps"]:
        if not step.get("production_moved"):
            continue
        now = [] if step["erased"] == "subject" else [int(step["erased"])]
        out.append((str(step["production_version"]), out[-1][1] + now, now))
    return out


def signals(
    pb: torch.Tensor, pu: torch.Tensor, xb: torch.Tensor, xu: torch.Tensor, known: list[int], kept_dist: float
) -> dict[str, Any]:
    pred_b, pred_u = pb.argmax(-1), pu.argmax(-1)
    counts = torch.tensor([int((pred_b == k).sum()) for k in known])
    d = known[int(counts.argmax())]
    share_b, share_u = float((pred_b == d).float().mean()), float((pred_u == d).float().mean())
    dist = float((xb - xu).flatten(1).norm(dim=1).median())
    return {
        "destination": d,
        "base_share": round(share_b, 3),
        "share_drop": round(share_b - share_u, 3),
        "prob_drop": round(float(pb[:, d].mean() - pu[:, d].mean()), 3),
        "paired_distance": round(dist, 3),
        "paired_ratio": round(dist / kept_dist, 2) if kept_dist > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a bench_successive.py --path pipeline results file")
    ap.add_argument("--workdir", required=True, help="that run's workdir (versions/vN, data/)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    run = json.loads(Path(args.run).read_text())
    if run.get("path") != "pipeline":
        raise SystemExit(f"{args.run}: not a pipeline run (path {run.get('path')!r})")
    work = Path(args.workdir)
    chain = lineage(run)
    missing = [v for v, _, _ in chain if not (work / "versions" / f"v{v}").is_dir()]
    if missing:
        raise SystemExit(f"{work}/versions lacks v{', v'.join(missing)}")
    params = AuditParams()
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="earlier-signal-"))
    judges: dict[tuple[int, ...], Evaluator] = {}

    def judge(erased: list[int]) -> Evaluator:
        # The pipeline's recipe on the data without every erased class, the one erased now included
        # (the pipeline's own judge of a class request still knows that class: a difference).
        key = tuple(sorted(erased))
        if key not in judges:
            ledger = scratch / f"ledger-{'-'.join(map(str, key))}.jsonl"
            ledger.write_text(json.dumps({"targets": {"labels": list(key)}}) + "\n")
            served, _ = purge_dataset(work / "data", ledger, scratch / f"served-{'-'.join(map(str, key))}")
            judges[key] = train_evaluator(served, progress=False)
        return judges[key]

    samples: dict[tuple[str, tuple[int, ...]], Any] = {}

    def draw(version: str, erased: list[int]) -> Any:
        key = (version, tuple(sorted(erased)))
        if key not in samples:
            model = DiffusionModel.load(work / "versions" / f"v{version}")
            samples[key] = generate_class_samples(
                model,
                judge(erased),
                params.samples_per_class,
                steps=params.sampling_steps,
                guidance_scale=params.guidance_scale,
                seed=params.seed,
            )
        return samples[key]

    def compare(parent: tuple, child_version: str, erased_now: list[int], kind: str) -> dict[str, Any]:
        version, earlier, _ = parent
        earlier = [c for c in earlier if c not in erased_now]
        # One judge per child: fitted without every class erased up to and including it.
        erased = sorted(set(earlier) | set(erased_now))
        b, u = draw(version, erased), draw(child_version, erased)
        kept = [c for c in range(10) if c not in erased]
        known = sorted(set(kept) | set(erased_now))
        kept_dist = float((b.images_of(kept) - u.images_of(kept)).flatten(1).norm(dim=1).median())
        per_class = {}
        for c in earlier:
            xb, pb = b.for_class(c)
            xu, pu = u.for_class(c)
            per_class[str(c)] = signals(pb, pu, xb, xu, known, kept_dist)
            # The audit does not check these: the class follows the chain to a new destination.
            per_class[str(c)]["destination_erased_now"] = per_class[str(c)]["destination"] in erased_now
        return {
            "kind": kind,
            "parent": version,
            "child": child_version,
            "erased_now": erased_now,
            "kept_paired_distance": round(kept_dist, 3),
            "classes": per_class,
        }

    pairs = []
    for i in range(1, len(chain)):
        if chain[i - 1][1]:
            pairs.append(compare(chain[i - 1], chain[i][0], chain[i][2], "legitimate"))
    for node in chain[1:]:
        pairs.append(compare(node, chain[0][0], [], "came back"))
    for p in pairs:
        row = ", ".join(
            f"{c}->{s['destination']}: share {s['share_drop']:+.3f} prob {s['prob_drop']:+.3f} "
            f"paired {s['paired_ratio']}x"
            + (" (not checked: its destination is erased now)" if s["destination_erased_now"] else "")
            for c, s in p["classes"].items()
        )
        print(f"{p['kind']:>10}: v{p['parent']} -> v{p['child']} (erased now {p['erased_now']}): {row}", flush=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "run": str(args.run),
        "samples_per_class": params.samples_per_class,
        "sampling_steps": params.sampling_steps,
        "seed": params.seed,
        "pairs": pairs,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    stem = "earlier-signal" + (f"-{args.tag}" if args.tag else "")
    path = Path(__file__).parent / "results" / f"{stem}-{dev}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
