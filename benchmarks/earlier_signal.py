"""Could a later audit tell more surely that a class erased earlier has come back?

The audit's ``earlier_erasure_drop`` reads, for each class c the parent's lineage erased, the fall
in the share of c's samples that its judge (fitted on the served data: it never saw c) reads as
c's destination d. With 3 sent onto 2 such a judge reads about 70% of genuine 3s as 2, so a model
in which 3 came back may read a drop of only ~0.28 (gate 0.2). This script runs that gate (the
audit's own ``_earlier_erasures``, its skip rules included) beside two other signals on the models
of a successive-deletions run through the pipeline (``bench_successive.py --path pipeline``), for
two kinds of pairs:

* legitimate: each request that moved production, its parent against its child (what the audit
  must pass);
* came back: every production version that has erased a class against the run's base (v1), in
  which every class erased since is back (what the audit must fail).

The judge is the pipeline's recipe on the data the pipeline serves at that request: without the
classes and the subject the lineage deleted before, the class erased now still in it (the
pipeline's class-request judge knows the class it erases); a subject request's judge is fitted
without the subject.

Signals, per earlier class c (samples of parent and child from the same noise, the audit's own
sampler and seed):

* ``share_drop``: the audit's (argmax share of d, parent minus child); ``audit_passed`` is its gate.
  A class the audit skips (its destination is the class erased now; the base draws it as no one
  class) still gets the three readings against its most common known class, marked ``not_checked``;
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

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import machine, pipeline_run_args  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit.efficacy import ClassSamples
from unlearn_lib.audit.evaluator import Evaluator, train_evaluator
from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.audit.run import ModelMeasurements, _earlier_erasures
from unlearn_lib.data import DigitsConfig
from unlearn_lib.data.purge import purge_dataset
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.sampling import class_grid_labels, sample


@dataclass(frozen=True)
class Node:
    version: str
    erased: tuple[int, ...]  # every class its lineage erased
    erased_now: tuple[int, ...]  # the class the request that made it erased (none for the subject)
    subject_deleted: bool  # its lineage deleted the canary subject


def lineage(run: dict[str, Any]) -> list[Node]:
    """Every production version of the run, base first: one per request that moved production."""
    out = [Node(str(run["base"]["version"]), (), (), False)]
    for step in run["steps"]:
        if not step.get("production_moved"):
            continue
        last = out[-1]
        subject = step["erased"] == "subject"
        now = () if subject else (int(step["erased"]),)
        out.append(Node(str(step["production_version"]), last.erased + now, now, last.subject_deleted or subject))
    return out


def extra_signals(
    pb: torch.Tensor, pu: torch.Tensor, xb: torch.Tensor, xu: torch.Tensor, d: int, kept_dist: float
) -> dict[str, Any]:
    """What the audit does not read: the judge's probability of ``d`` and the paired sample distance."""
    dist = float((xb - xu).flatten(1).norm(dim=1).median())
    return {
        "prob_drop": round(float(pb[:, d].mean() - pu[:, d].mean()), 3),
        "paired_distance": round(dist, 3),
        "paired_ratio": round(dist / kept_dist, 2) if kept_dist > 0 else None,
    }


def main() -> None:
    args, run = pipeline_run_args()
    work = args.workdir
    chain = lineage(run)
    missing = [n.version for n in chain if not (work / "versions" / f"v{n.version}").is_dir()]
    if missing:
        raise SystemExit(f"{work}/versions lacks v{', v'.join(missing)}")
    params = AuditParams()
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="earlier-signal-"))
    judges: dict[tuple[tuple[int, ...], bool], Evaluator] = {}

    def judge(classes: tuple[int, ...], subject: bool) -> Evaluator:
        # The pipeline's recipe on the data it serves: without the classes and the subject the
        # lineage deleted before. As the pipeline's, a class request's judge still knows the class
        # it erases (compliance/steps.py::audit); the subject's request's is fitted without it.
        key = (tuple(sorted(classes)), subject)
        if key not in judges:
            name = "-".join(map(str, key[0])) + ("-subject" if subject else "")
            lines = [{"targets": {"labels": list(key[0])}}] if key[0] else []
            if subject:
                lines.append({"targets": {"subject_ids": [DigitsConfig().canary_subject]}})
            ledger = scratch / f"ledger-{name}.jsonl"
            ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
            served, _ = purge_dataset(work / "data", ledger, scratch / f"served-{name}")
            judges[key] = train_evaluator(served, progress=False)
        return judges[key]

    images: dict[str, torch.Tensor] = {}
    classes = list(range(DiffusionModel.load(work / "versions" / f"v{chain[0].version}").meta.num_classes))

    def measured(version: str, ev: Evaluator) -> ClassSamples:
        # One draw per version (the audit's sampler and seed), scored by each judge that reads it.
        if version not in images:
            model = DiffusionModel.load(work / "versions" / f"v{version}")
            labels = class_grid_labels(model, params.samples_per_class, classes)
            images[version] = sample(
                model, labels, steps=params.sampling_steps, guidance_scale=params.guidance_scale, seed=params.seed
            )
        x = images[version]
        return ClassSamples(classes, params.samples_per_class, x, ev.predict_proba(x))

    def compare(parent: Node, child: Node, kind: str) -> dict[str, Any]:
        # As the audit of the request that made ``child`` reads it, against ``parent``; a "came back"
        # pair has ``child`` the run's base: a next request's audit, were every class back.
        now = list(child.erased_now) if kind == "legitimate" else []
        earlier = [c for c in parent.erased if c not in now]
        subject = child.subject_deleted if kind == "legitimate" else parent.subject_deleted
        ev = judge(tuple(earlier), subject)
        b, u = measured(parent.version, ev), measured(child.version, ev)
        kept = [c for c in classes if c not in set(earlier) | set(now)]
        kept_dist = float((b.images_of(kept) - u.images_of(kept)).flatten(1).norm(dim=1).median())
        m = _earlier_erasures(
            ModelMeasurements(role="unlearned", path=f"v{child.version}", sha256="", class_samples=u),
            ModelMeasurements(role="base", path=f"v{parent.version}", sha256="", class_samples=b),
            earlier,
            now,
            kept,
            params,
        )
        if m is None:
            raise SystemExit(f"v{parent.version} -> v{child.version}: the audit checks no earlier class here")
        checked, skipped = m.details["classes"], m.details["not_checked"]
        per_class: dict[str, Any] = {}
        for c in earlier:
            xb, pb = b.for_class(c)
            xu, pu = u.for_class(c)
            # A class the audit skips keeps its readings in the record (against the base's most
            # common known class), so the table shows what a skip hides.
            x = checked.get(str(c)) or skipped[str(c)]
            row = {
                "destination": x["destination"],
                "base_share": round(x["base_share"], 3),
                "share_drop": round(x["drop"], 3),
            } | ({"not_checked": x["why"]} if str(c) in skipped else {})
            per_class[str(c)] = row | extra_signals(pb, pu, xb, xu, row["destination"], kept_dist)
        return {
            "kind": kind,
            "parent": parent.version,
            "child": child.version,
            "erased_now": now,
            "judge_without": {"classes": earlier, "subject": subject},
            "kept_paired_distance": round(kept_dist, 3),
            "audit_drop": None if m.value is None else round(m.value, 3),
            "audit_passed": m.passed,
            "classes": per_class,
        }

    pairs = []
    for parent, child in zip(chain, chain[1:], strict=False):
        if parent.erased:
            pairs.append(compare(parent, child, "legitimate"))
    for node in chain[1:]:
        if not node.erased:  # a version that erased no class yet (a subject first): nothing to come back
            continue
        pairs.append(compare(node, chain[0], "came back"))
    for p in pairs:
        row = ", ".join(
            f"{c}->{s['destination']}: share {s['share_drop']:+.3f} prob {s['prob_drop']:+.3f} "
            f"paired {s['paired_ratio']}x" + (f" (not checked: {s['not_checked']})" if "not_checked" in s else "")
            for c, s in p["classes"].items()
        )
        verdict = "pass" if p["audit_passed"] else "FAIL" if p["audit_passed"] is False else "no gate"
        print(
            f"{p['kind']:>10}: v{p['parent']} -> v{p['child']} (erased now {p['erased_now']}; audit {verdict}): {row}",
            flush=True,
        )
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
