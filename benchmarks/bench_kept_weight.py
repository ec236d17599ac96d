"""How much each earlier-erased class weighs in EraseDiff's "keep forgotten" term, on one late step.

    OMP_NUM_THREADS=2 python benchmarks/bench_kept_weight.py --workdir DIR --evaluator DIR \\
        [--version 6] [--erase 6] [--weights 0.25 1.0 3.0] [--seeds 0 1 2 3] [--inputs destination]
        [--targets conditional] [--reroutes chain distinct] [--per-class 300] [--set KEY=VALUE --tag NAME]

Takes the model a ``bench_successive.py --path pipeline`` run left at ``--version`` (in
``<workdir>/versions/v<N>``), and the dataset as the pipeline had it then: the run's source data
(``<workdir>/data``) without every record the model's lineage says was deleted, which is what the
pipeline's purges left. It erases ``--erase`` from that model with EraseDiff's defaults, once per
``keep_forgotten_weight`` and unlearning seed, and judges each result with the independent
evaluator (``bench_successive``'s judge: ``--per-class`` samples a class, fixed sampling seed):
P(c) on samples conditioned on each erased class, the accuracy on the classes never erased. With n earlier classes,
``keep_forgotten_weight`` 1/n is close to what the term did before 2026-11-30 (the earlier classes
shared one term, without the class balance), 1.0 (the default) each weighs as much as the class
erased now, 3.0 three times as much. The default ``--weights 0.25`` assumes four
earlier classes (erasing 6 after 3, 5, 8, 1). ``--inputs`` picks what stands for the earlier classes
(``keep_forgotten_inputs``: the destinations' images, the parent's replayed samples, or both),
``--targets`` what the term compares (``keep_forgotten_target``: the conditional predictions, the
default, or the guided ones), ``--reroutes`` where an earlier class whose destination is erased now
goes (``keep_forgotten_reroute``: with it, the ``chain`` default, or to its own destination).
``--set``/``--options`` change any other EraseDiff option for every run (``--tag`` names them); runs
with other options in the same results file are kept apart.
The purged dataset (``unlearn_lib.data.purge``, the pipeline's purge) is cached in
``<workdir>/data-as-of-v<N>``.

Writes ``benchmarks/results/kept-weight-<workdir name>-v<version>-erase<class>-<device>.json`` after every run
(resumable: runs already recorded there for the same parent model are skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_erasediff_variant_flags, erasediff_options, machine  # benchmarks/: on sys.path
from bench_successive import Judge
from tqdm import tqdm

from unlearn_lib.audit import Evaluator
from unlearn_lib.data import ForgetTargets, load_dataset
from unlearn_lib.data.manifest import MANIFEST_NAME
from unlearn_lib.data.purge import purge_dataset
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.digest import model_digest
from unlearn_lib.unlearning import erase
from unlearn_lib.unlearning.erasediff import KEPT_INPUTS, KEPT_REROUTES, KEPT_TARGETS
from unlearn_lib.unlearning.lineage import LINEAGE_KEY


def dataset_as_purged(source: Path, model: DiffusionModel, out: Path) -> dict[str, Any]:
    """``source`` purged of every deletion in ``model``'s lineage, by the pipeline's own purge.

    The lineage's deletions carry their ``targets`` as the deletion ledger's lines do, so they are
    written as a ledger beside ``out`` and purged from ``source`` like the pipeline purges.
    """
    deletions = (model.meta.lineage or {}).get(LINEAGE_KEY, [])
    if not (out / MANIFEST_NAME).exists():
        ledger = out.with_name(out.name + ".ledger.jsonl")
        ledger.write_text("".join(json.dumps({"targets": d["targets"]}) + "\n" for d in deletions))
        purge_dataset(source, ledger, out, overwrite=True)
    return {
        "labels": sorted({int(c) for d in deletions for c in d["targets"].get("labels", [])}),
        "deletions": len(deletions),
        "kept_records": len(load_dataset(out, verify_hashes=False)),
    }


# The options this bench compares besides the weight, each with the value that rows written before
# it was recorded ran with: the destination's images, conditional predictions, the chain.
COMPARED = {
    "keep_forgotten_inputs": "destination",
    "keep_forgotten_target": "conditional",
    "keep_forgotten_reroute": "chain",
}


def variant_of(row: dict[str, Any]) -> tuple[str, ...]:
    """A row's compared options (``COMPARED``'s order), then its other ones (``--set``) as JSON."""
    return (*(row.get(k, before) for k, before in COMPARED.items()), json.dumps(row.get("options", {}), sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a bench_successive.py --path pipeline workdir")
    ap.add_argument("--evaluator", required=True, help="a trained evaluator folder (the judge)")
    ap.add_argument("--version", type=int, default=6, help="the model version to erase from")
    ap.add_argument("--erase", type=int, default=6, help="the class to erase")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument(
        "--inputs", nargs="+", default=["destination"], choices=KEPT_INPUTS, help="keep_forgotten_inputs values"
    )
    ap.add_argument(
        "--targets", nargs="+", default=["conditional"], choices=KEPT_TARGETS, help="keep_forgotten_target values"
    )
    ap.add_argument(
        "--reroutes", nargs="+", default=["chain"], choices=KEPT_REROUTES, help="keep_forgotten_reroute values"
    )
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--sample-seed", type=int, default=7)
    add_erasediff_variant_flags(ap, example="--set steps=300")
    args = ap.parse_args()
    options = erasediff_options(args)
    if clash := sorted({"seed", "keep_forgotten_weight", *COMPARED} & set(options)):
        raise SystemExit(f"--set {', '.join(clash)}: compared by this bench's own flags, not --set")
    suffix = f"-{args.tag}" if options else ""
    work = Path(args.workdir)
    parent_dir = work / "versions" / f"v{args.version}"
    parent = DiffusionModel.load(parent_dir)
    data = work / f"data-as-of-v{args.version}"
    purged = dataset_as_purged(work / "data", parent, data)
    if args.erase in purged["labels"]:
        raise SystemExit(f"--erase {args.erase}: v{args.version} has already erased it")
    erased = purged["labels"] + [args.erase]
    kept = [c for c in range(parent.meta.num_classes) if c not in erased]
    judge = Judge(Evaluator.load(args.evaluator), work / "data", args.per_class, kept, seed=args.sample_seed)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"kept-weight-{work.name}-v{args.version}-erase{args.erase}-{dev}.json"
    # Runs are resumed only when everything that decides their figures is the same.
    same = {
        "parent_model": str(parent_dir),
        "parent_sha256": model_digest(parent_dir),
        "erase": args.erase,
        "evaluator": str(Path(args.evaluator).resolve()),
        "per_class": args.per_class,
        "sample_seed": args.sample_seed,
    }
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if any(out.get(k) != v for k, v in same.items()):
        out = {**same, "runs": []}
    out |= {
        "machine": machine(),
        "torch": torch.__version__,
        "dataset": purged,
        "kept_classes": kept,
    }

    if "parent" not in out:
        out["parent"] = judge(parent, erased, False)
    done = {(r["keep_forgotten_weight"], r["seed"], variant_of(r)) for r in out["runs"]}
    this = json.dumps(options, sort_keys=True)
    variants = [(i, g, r, this) for i in args.inputs for g in args.targets for r in args.reroutes]
    # Seed-major, so that an interrupted comparison still holds every variant on the first seeds.
    todo = [(w, s, v) for s in args.seeds for v in variants for w in args.weights if (w, s, v) not in done]
    for w, s, (inputs, target, reroute, _) in tqdm(todo, desc="erasures", unit="run"):
        name = f"v{args.version}-no-{args.erase}-w{w:g}-{inputs}-{target}-{reroute}{suffix}-s{s}"
        child = work / "kept-weight" / name
        shutil.rmtree(child, ignore_errors=True)
        overrides = {
            **options,
            "keep_forgotten_weight": w,
            "seed": s,
            "keep_forgotten_inputs": inputs,
            "keep_forgotten_target": target,
            "keep_forgotten_reroute": reroute,
        }
        result, record = erase(
            parent_dir, data, ForgetTargets.build(labels=[args.erase]), "erasediff", child, overrides, progress=False
        )
        row = {
            "keep_forgotten_weight": w,
            "keep_forgotten_inputs": inputs,
            "keep_forgotten_target": target,
            "keep_forgotten_reroute": reroute,
            **({"options": options, "tag": args.tag} if options else {}),
            **({"keep_forgotten_replay": record["config"]["keep_forgotten_replay"]} if inputs != "destination" else {}),
            "seed": s,
            "date": time.strftime("%Y-%m-%d"),
            "unlearning_seconds": round(result.seconds, 1),
            "steps": result.steps,
            "kept_mapping": record["config"].get("resolved_target", {}).get("kept_mapping"),
            **judge(DiffusionModel.load(child), erased, False),
        }
        out["runs"].append(row)
        path.write_text(json.dumps(out, indent=2) + "\n")
        what = f"weight {w:g}, {inputs}, {target}, {reroute}{suffix}, seed {s}"
        tqdm.write(f"{what}: P {row['p_erased']}, kept accuracy {row['kept_accuracy']:.3f}")
    for w, v in [(w, v) for v in variants for w in args.weights]:
        rows = [r for r in out["runs"] if r["keep_forgotten_weight"] == w and variant_of(r) == v]
        if rows:
            inputs, target, reroute, _ = v
            p = [r["p_erased"] for r in rows]
            worst = {c: max(x[c] for x in p) for c in p[0]}
            mean_kept = sum(r["kept_accuracy"] for r in rows) / len(rows)
            what = f"weight {w:g}, {inputs}, {target}, {reroute}{suffix}, {len(rows)} seeds"
            print(f"{what}: worst P {worst}, mean kept accuracy {mean_kept:.3f}")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
