"""How much each earlier-erased class weighs in EraseDiff's "keep forgotten" term, on one late step.

    OMP_NUM_THREADS=2 python benchmarks/bench_kept_weight.py --workdir DIR --evaluator DIR \\
        [--version 6] [--erase 6] [--weights 0.25 1.0 3.0] [--seeds 0 1 2 3] [--inputs destination]
        [--targets conditional] [--reroutes chain distinct] [--per-class 300] [--set KEY=VALUE --tag NAME]
        [--redraws 5]

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

``--redraws N`` scores every model of the file again (the parent and each run of the variants
asked for) on N further sampling draws (seeds 100, 101, ...), ``--per-class`` samples each of the
erased class and of the class the run sends it to: P(erased) per draw, and P(erased) on the
destination's own samples, in the run's model and in the parent (the judge's floor there: what a
flawless erasure onto that class reads). One draw's P(erased) moves with the draw as much as
between seeds, and every run shares the draw, so this separates the two.

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

from unlearn_lib.audit import Evaluator, generate_class_samples
from unlearn_lib.data import ForgetTargets, load_dataset
from unlearn_lib.data.manifest import MANIFEST_NAME
from unlearn_lib.data.purge import purge_dataset
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.digest import model_digest
from unlearn_lib.unlearning import erase
from unlearn_lib.unlearning.erasediff import KEPT_INPUTS, KEPT_REROUTES, KEPT_TARGETS, SCOPE_DEFAULTS
from unlearn_lib.unlearning.lineage import LINEAGE_KEY
from unlearn_lib.unlearning.run import UNLEARNING_JSON


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


# The class scope's lam is part of every variant: its default changed (1 -> 3, 2026-12-04), and rows
# written before then recorded no options for it.
LAM_BEFORE = 1.0


def effective_options(options: dict[str, Any], lam: float) -> str:
    """``--set`` options with the lam a run resolves to, as a JSON key."""
    return json.dumps({"lam": lam, **options}, sort_keys=True)


def variant_of(row: dict[str, Any]) -> tuple[str, ...]:
    """A row's compared options (``COMPARED``'s order), then its other ones (``--set``, and lam) as JSON."""
    compared = (row.get(k, before) for k, before in COMPARED.items())
    return (*compared, effective_options(row.get("options", {}), row.get("lam", LAM_BEFORE)))


REDRAW_SEED = 100


def redrawn(
    model: DiffusionModel, evaluator: Evaluator, erase: int, dest: int, n: int, per_class: int
) -> dict[str, Any]:
    """P(erase) on ``n`` fresh draws of the erased class and of its destination (seeds 100, 101, ...)."""
    on_erased, on_dest = [], []
    for seed in range(REDRAW_SEED, REDRAW_SEED + n):
        samples = generate_class_samples(model, evaluator, per_class, seed=seed, classes=[dest, erase])
        on_erased.append(round(float(samples.for_class(erase)[1][:, erase].mean()), 4))
        on_dest.append(round(float(samples.for_class(dest)[1][:, erase].mean()), 4))
    return {"destination": dest, "p_erased": on_erased, "p_erased_on_destination": on_dest}


def destination_of(model_dir: Path, erase: int) -> int:
    """Where the run sent the erased class (its resolved remap target)."""
    record = json.loads((model_dir / UNLEARNING_JSON).read_text())
    return int(record["config"]["resolved_target"]["mapping"][str(erase)])


def run_name(version: int, erase: int, weight: float, variant: tuple[str, ...], tag: str, seed: int) -> str:
    """The run's model folder under ``<workdir>/kept-weight``."""
    inputs, target, reroute = variant[:3]
    return f"v{version}-no-{erase}-w{weight:g}-{inputs}-{target}-{reroute}{'-' + tag if tag else ''}-s{seed}"


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
    ap.add_argument(
        "--redraws", type=int, default=0, help="score the erased class again on this many further sampling draws"
    )
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
    this = effective_options(options, float(options.get("lam", SCOPE_DEFAULTS["class"]["lam"])))
    variants = [(i, g, r, this) for i in args.inputs for g in args.targets for r in args.reroutes]
    # Seed-major, so that an interrupted comparison still holds every variant on the first seeds.
    todo = [(w, s, v) for s in args.seeds for v in variants for w in args.weights if (w, s, v) not in done]
    for w, s, (inputs, target, reroute, _) in tqdm(todo, desc="erasures", unit="run"):
        # Runs of the defaults before lam's default changed have folders without a tag: a defaults
        # run now names its lam, so that it never replaces one of theirs.
        tag = args.tag if options else f"lam{SCOPE_DEFAULTS['class']['lam']:g}"
        name = run_name(args.version, args.erase, w, (inputs, target, reroute), tag, s)
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
            "run_name": name,
            **({"keep_forgotten_replay": record["config"]["keep_forgotten_replay"]} if inputs != "destination" else {}),
            "seed": s,
            "date": time.strftime("%Y-%m-%d"),
            "unlearning_seconds": round(result.seconds, 1),
            "steps": result.steps,
            "kept_mapping": record["config"].get("resolved_target", {}).get("kept_mapping"),
            "lam": record["config"]["lam"],
            **judge(DiffusionModel.load(child), erased, False),
        }
        out["runs"].append(row)
        path.write_text(json.dumps(out, indent=2) + "\n")
        what = f"weight {w:g}, {inputs}, {target}, {reroute}{suffix}, seed {s}"
        tqdm.write(f"{what}: P {row['p_erased']}, kept accuracy {row['kept_accuracy']:.3f}")
    if args.redraws:
        wanted = [
            r
            for r in out["runs"]
            if r["keep_forgotten_weight"] in args.weights
            and r["seed"] in args.seeds
            and variant_of(r) in variants
            and len((r.get("redraws") or {}).get("p_erased", [])) < args.redraws
        ]
        evaluator = judge.evaluator
        for row in tqdm(wanted, desc="redraws", unit="model"):
            w, v = row["keep_forgotten_weight"], variant_of(row)
            name = row.get("run_name") or run_name(args.version, args.erase, w, v, row.get("tag", ""), row["seed"])
            child = work / "kept-weight" / name
            dest = destination_of(child, args.erase)
            row["redraws"] = redrawn(
                DiffusionModel.load(child), evaluator, args.erase, dest, args.redraws, args.per_class
            )
            floors = out.setdefault("parent_redraws", {})
            if len(floors.get(str(dest), {}).get("p_erased_on_destination", [])) < args.redraws:
                floors[str(dest)] = redrawn(parent, evaluator, args.erase, dest, args.redraws, args.per_class)
            path.write_text(json.dumps(out, indent=2) + "\n")
    for w, v in [(w, v) for v in variants for w in args.weights]:
        rows = [r for r in out["runs"] if r["keep_forgotten_weight"] == w and variant_of(r) == v]
        if rows and args.redraws:
            for r in rows:
                d = r.get("redraws")
                if d:
                    floor = out["parent_redraws"][str(d["destination"])]["p_erased_on_destination"]
                    print(
                        f"seed {r['seed']}: P({args.erase}) over {len(d['p_erased'])} draws "
                        f"{sum(d['p_erased']) / len(d['p_erased']):.3f} ({min(d['p_erased']):.3f}-"
                        f"{max(d['p_erased']):.3f}); on its {d['destination']}s "
                        f"{sum(d['p_erased_on_destination']) / len(d['p_erased_on_destination']):.3f}; "
                        f"on the parent's {d['destination']}s {sum(floor) / len(floor):.3f}"
                    )
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
