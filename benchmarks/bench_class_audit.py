"""The pipeline's own audit on one class erasure from a pipeline version, over unlearning seeds.

    OMP_NUM_THREADS=2 python benchmarks/bench_class_audit.py --workdir DIR --version 2 --erase 3 \\
        [--seeds 0 1 2 3 4] [--set KEY=VALUE ... --tag NAME]

Takes the model a ``bench_successive.py --path pipeline`` run left at ``--version``
(``<workdir>/versions/v<N>``), the workspace's dataset as the pipeline had it then (its HEAD, what
the later request's run read: the run must not have committed another purge), and the judge the
pipeline trained for that dataset (``<workspace>/registry-cache/evaluators``). For each unlearning
seed it erases ``--erase`` with EraseDiff's defaults (plus ``--set``) as the unlearn step does and
runs the audit step's ``run_audit`` with the step's parameters (the default gates, forget images
redacted, the lineage's original model): the verdict, the failed gates and the efficacy figures the
gates read. ``make demo``'s class request is ``--version 2 --erase 3`` on the demo's sequence
(``bench_successive.py --path pipeline --sequence subject 3``); its ``seed`` 0 read 0.053 there.

So a change of defaults can be measured on the very audit that refused the request, a couple of
minutes a seed, without repeating the workspace, the base model and the earlier request.

``--redraws N`` also scores each model on N more draws of 100 samples of the erased class (the
audit's sampling steps and guidance, the same judge; seeds 0, 100, 101, ...): the audit reads one
draw of 100, whose P moves by about 0.02 from draw to draw near the gate, so a model's own level
needs several. Rows recorded without them get them on the next run with ``--redraws``.
Writes ``benchmarks/results/class-audit-<workdir name>-v<version>-erase<class>[-tag]-<device>.json``
after every seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_erasediff_variant_flags, erasediff_options, machine  # benchmarks/: on sys.path

from unlearn_lib.audit import Evaluator, generate_class_samples
from unlearn_lib.audit.gates import AuditParams, failed_gates
from unlearn_lib.audit.run import run_audit
from unlearn_lib.data import ForgetTargets
from unlearn_lib.models import DiffusionModel
from unlearn_lib.unlearning import erase
from unlearn_lib.unlearning.lineage import LINEAGE_KEY

FIGURES = (
    "forgotten_probability",
    "forgotten_probability_floor",
    "forgotten_rate",
    "fid_ratio",
    "retained_accuracy_drop",
    "retain_loss_ratio",
)


REDRAW_SEEDS = (0, 100, 101, 102, 103, 104, 105, 106, 107, 108)


def redrawn(model_dir: Path, judge: Path, erased: int, n: int) -> dict[str, Any]:
    """P(erased) on ``n`` draws of 100 samples of the erased class, sampled as the audit samples."""
    params = AuditParams()
    model, evaluator = DiffusionModel.load(model_dir), Evaluator.load(judge)
    draws = []
    for seed in REDRAW_SEEDS[:n]:
        samples = generate_class_samples(
            model,
            evaluator,
            100,
            steps=params.sampling_steps,
            guidance_scale=params.guidance_scale,
            seed=seed,
            classes=[erased],
        )
        draws.append(round(float(samples.for_class(erased)[1][:, erased].mean()), 4))
    return {"seeds": list(REDRAW_SEEDS[:n]), "p_erased": draws, "mean": round(sum(draws) / n, 4)}


def original_of(workdir: Path, model: DiffusionModel) -> Path | None:
    """The lineage's first version (v1 of the bench's workspace) when the model absorbed deletions."""
    deletions = (model.meta.lineage or {}).get(LINEAGE_KEY, [])
    first = workdir / "versions" / "v1"
    return first if deletions and first.is_dir() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a bench_successive.py --path pipeline workdir")
    ap.add_argument("--version", type=int, default=2, help="the model version to erase from")
    ap.add_argument("--erase", type=int, default=3, help="the class to erase")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--redraws", type=int, default=0, choices=range(len(REDRAW_SEEDS) + 1), metavar="N")
    add_erasediff_variant_flags(ap, example="--set steps=250")
    args = ap.parse_args()
    options = erasediff_options(args)
    work = Path(args.workdir)
    parent = work / "versions" / f"v{args.version}"
    dataset = work / "workspace" / "data" / "digits"
    judges = sorted((work / "workspace" / "registry-cache" / "evaluators").glob("*"))
    if not parent.is_dir() or not (dataset / "manifest.jsonl").is_file() or len(judges) != 1:
        raise SystemExit(
            f"{work}: needs versions/v{args.version}, workspace/data/digits and exactly one judge in "
            f"workspace/registry-cache/evaluators (found {len(judges)})"
        )
    original = original_of(work, DiffusionModel.load(parent))
    targets = ForgetTargets.build(labels=[args.erase])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tag = f"-{args.tag}" if args.tag else ""
    stem = f"class-audit-{work.name}-v{args.version}-erase{args.erase}{tag}"
    path = Path(__file__).parent / "results" / f"{stem}-{dev}.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": []}
    out.update(
        {
            "machine": machine(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "parent": str(parent),
            "judge": judges[0].name,
            "options": options,
        }
    )
    done = {r["seed"]: r for r in out["runs"] if r.get("options") == options}
    for seed in args.seeds:
        model_dir = work / "class-audit" / f"v{args.version}-no-{args.erase}{tag}-s{seed}"
        if seed in done:
            row = done[seed]
            if args.redraws and len(row.get("redraws", {}).get("p_erased", [])) < args.redraws:
                row["redraws"] = redrawn(model_dir, judges[0], args.erase, args.redraws)
                path.write_text(json.dumps(out, indent=2) + "\n")
                print(json.dumps({"seed": seed, "redraws": row["redraws"]}), flush=True)
            continue
        t0 = time.perf_counter()
        result, record = erase(
            parent, dataset, targets, "erasediff", model_dir, {**options, "seed": seed}, overwrite=True, progress=False
        )
        t1 = time.perf_counter()
        audit = run_audit(
            parent,
            model_dir,
            dataset,
            targets,
            model_dir.with_name(model_dir.name + "-audit"),
            params=AuditParams(redact_forget_images=True),
            evaluator_dir=judges[0],
            overwrite=True,
            original_dir=original,
        )
        unlearned = audit.measurements["unlearned"].figures
        figures = {m.name: round(m.value, 4) for m in audit.metrics if m.name in FIGURES and m.value is not None}
        row = {
            "seed": seed,
            "options": options,
            "verdict": audit.record["verdict"],
            "failed": failed_gates(audit.record),
            "inconclusive": [g["metric"] for g in audit.record["gates"] if g.get("inconclusive")],
            # The class gate's own samples (forgotten_samples since 2026-12-05; 100 before) and error.
            "forgotten_samples": unlearned.get("forgotten_samples", 100),
            "forgotten_stderr": {
                c: round(v, 4) for c, v in unlearned.get("forgotten_probability_stderr_by_class", {}).items()
            },
            "mapping": record["config"].get("resolved_target", {}).get("mapping"),
            "steps": result.steps,
            "unlearning_seconds": round(t1 - t0, 1),
            "audit_seconds": round(time.perf_counter() - t1, 1),
            **figures,
        }
        if args.redraws:
            row["redraws"] = redrawn(model_dir, judges[0], args.erase, args.redraws)
        out["runs"].append(row)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
