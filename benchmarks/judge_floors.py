"""Add the judge's floors to a CLI results file of ``bench_successive.py`` written before it recorded them.

    OMP_NUM_THREADS=2 python benchmarks/judge_floors.py results/successive-full-<tag>-cpu.json \\
        --workdir /tmp/bench-successive-XXXX --base DIR --evaluator DIR

Each model of the run (the base and every step's folder in ``--workdir``) is judged again as the
run judged it (same judge, samples and seed). The erased classes' P must come out as the file has
them, which shows the folder is the run's; then each class erasure gets the ``audit_rule`` entry
``bench_successive.py`` now writes: the judge's floor on the parent's samples of the destination
and the limit the audit's class gate would apply. The file is rewritten in place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_successive import SUBJECT, Judge, audit_rule, step_folder  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit import Evaluator
from unlearn_lib.models import DiffusionModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--evaluator", type=Path, required=True)
    args = ap.parse_args()
    out = json.loads(args.results.read_text())
    if out["path"] != "cli":
        raise SystemExit(f"{args.results}: a pipeline run; its audits recorded their own floors")
    seq = out["sequence"]
    judge = Judge(Evaluator.load(args.evaluator), args.workdir / "data", out["per_class"], out["kept_classes"])
    base = judge(DiffusionModel.load(args.base), [], False)
    if base["accuracy"] != out["base"]["accuracy"]:
        raise SystemExit(f"{args.base}: accuracy {base['accuracy']}, not the file's {out['base']['accuracy']}")
    out["base"]["mean_probs"] = base["mean_probs"]
    parent = out["base"]
    erased: list[int] = []
    for i, step in enumerate(out["steps"]):
        if seq[i] != SUBJECT:
            erased.append(int(seq[i]))
        folder = step_folder(args.workdir, out["variant"], [str(s) for s in seq[: i + 1]])
        again = judge(DiffusionModel.load(folder), erased, False)
        if again["p_erased"] != step["p_erased"]:
            raise SystemExit(f"{folder}: P {again['p_erased']}, the file's {step['p_erased']}: not this run's model")
        step.update(mean_probs=again["mean_probs"], drawn_as=again["drawn_as"])
        if step.get("mapping"):
            step["audit_rule"] = audit_rule(parent, step, step["mapping"])
            print(f"erase {seq[i]}: P {step['p_erased'][str(seq[i])]}, {step['audit_rule']}", flush=True)
        parent = step
    args.results.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
