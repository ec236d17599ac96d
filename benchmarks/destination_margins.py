"""How clearly the model keeps each candidate destination apart from the class it erases, beside the judge.

    OMP_NUM_THREADS=2 python benchmarks/destination_margins.py \\
        --run results/successive-full-<tag>-cpu.json /tmp/bench-successive-XXXX [--run ...] \\
        --base DIR --evaluator DIR [--classes 3 5 8] [--tag NAME]

For every class erasure in the given CLI results files of ``bench_successive.py`` (each with the
``--workdir`` it ran in, whose model folders must still exist), the parent model
that erasure started from draws the 200 samples of each candidate class that ``nearest-distinct``
checks, with the same draws (``targets.pair_errors``). For each sample, the relative gap
(error under the erased class - error under the candidate) / error under the candidate says how
clearly the model's own classifier keeps it apart; the method never sees more. The judge (an
evaluator the method must not consult) then reads the same samples: its mean P of the erased class
is the floor an erasure onto that candidate reads however complete it is. Written to
``results/destination-margins[-TAG]-<device>.json``: per erasure and candidate, the share of samples
within each margin, the gap's median and 5% quantile, and the judge's P.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path
from bench_successive import SUBJECT, step_folder
from tqdm import tqdm

from unlearn_lib.audit import Evaluator
from unlearn_lib.models import DiffusionModel
from unlearn_lib.unlearning.targets import pair_errors

MARGINS = (0.0, 0.1, 0.2, 0.3)


def measure(model: DiffusionModel, evaluator: Evaluator, f: int, r: int) -> dict[str, Any]:
    """The candidate r's samples for erasing f: shares within each margin, the gap, the judge's P(f)."""
    xs, gaps = [], []
    for x, error_f, error_r in pair_errors(model, f, r, seed=0):
        xs.append(x)
        gaps.append((error_f - error_r) / error_r)
    gap = torch.cat(gaps)
    p = evaluator.predict_proba(torch.cat(xs))[:, f]
    return {
        "within": {str(m): round(float((gap < m).float().mean()), 4) for m in MARGINS},
        "gap_median": round(float(gap.median()), 3),
        "gap_q05": round(float(gap.quantile(0.05)), 3),
        "judge_p": round(float(p.mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, nargs=2, action="append", required=True, metavar=("RESULTS", "WORKDIR"))
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--evaluator", type=Path, required=True)
    ap.add_argument("--classes", type=int, nargs="*", help="only the erasures of these classes")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    evaluator = Evaluator.load(args.evaluator)
    done: dict[tuple[str, int], dict[str, Any]] = {}  # a parent measured once (every run starts from the base)
    rows = []
    for results, work in args.run:
        run = json.loads(results.read_text())
        if run["path"] != "cli":
            raise SystemExit(f"{results}: a pipeline run; its models are in the registry, not in a workdir")
        seq, erased = run["sequence"], []
        parent = args.base
        for i, step in enumerate(run["steps"]):
            folder = step_folder(work, run["variant"], [str(s) for s in seq[: i + 1]])
            if seq[i] != SUBJECT:
                f = int(seq[i])
                if args.classes is None or f in args.classes:
                    key = (str(parent.resolve()), f)
                    if key not in done:
                        model = DiffusionModel.load(parent)
                        candidates = [c for c in range(10) if c != f and c not in erased]
                        done[key] = {
                            str(r): measure(model, evaluator, f, r) for r in tqdm(candidates, desc=f"erase {f}")
                        }
                    rows.append(
                        {
                            "results": results.name,
                            "erased": f,
                            "parent": parent.name,
                            "sent_to": step["mapping"][str(f)],
                            "p_erased": step["p_erased"][str(f)],
                            "candidates": done[key],
                        }
                    )
                erased.append(f)
            parent = folder
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(__file__).parent / "results" / f"destination-margins{'-' + args.tag if args.tag else ''}-{dev}.json"
    path.write_text(json.dumps({"machine": machine(), "margins": MARGINS, "erasures": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
