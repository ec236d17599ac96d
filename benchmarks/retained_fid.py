"""The retained classes' FID after erasing one class onto each of several destinations, at several samplers.

    OMP_NUM_THREADS=2 python benchmarks/retained_fid.py --base DIR --evaluator DIR --dataset DIR \\
        --workdir DIR [--erase 3] [--to auto 8] [--settings 40x15 40x25 100x25] [--seeds 0 1 2 3] [--tag NAME]

Erases ``--erase`` from the base with EraseDiff's defaults, once per destination in ``--to``
(``auto``: the default choice, or a class index: ``remap_to``), into ``--workdir`` (an erasure
already there is read back when it was made from this base). Then the base and every erasure draw
the audit's class grid with each sampler setting (``PERxSTEPS``: samples per class x DDIM steps)
and each sampling seed, and the retained classes' samples are compared with their real images as
the audit's ``fid_ratio`` gate compares them: FID on the judge's features through torchmetrics
(``audit.utility.RealReference``) against the selection's retained training images, for all
retained classes together and for each alone. Written to
``results/retained-fid[-TAG]-<device>.json``: per setting, seed and model, the FID, its ratio to
the base's on the same draws, and each class's FID.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path
from tqdm import tqdm

from unlearn_lib.audit import Evaluator
from unlearn_lib.audit.efficacy import generate_class_samples
from unlearn_lib.audit.utility import EvaluatorFeatures, RealReference
from unlearn_lib.data import ForgetTargets, load_dataset, select
from unlearn_lib.data.tensors import TensorSet
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.digest import model_digest
from unlearn_lib.unlearning import erase


def setting(text: str) -> tuple[int, int]:
    """``40x15`` -> (40 samples per class, 15 sampling steps)."""
    try:
        per, steps = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is PERxSTEPS, e.g. 40x15; got {text!r}") from None
    if per < 2 or steps < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 2 samples per class and 1 step")
    return per, steps


def erased_onto(args: argparse.Namespace, to: str, base_digest: str) -> tuple[Path, dict[str, int]]:
    """The erasure of ``args.erase`` onto ``to`` in the workdir (made once), and its recorded mapping."""
    out = args.workdir / f"erase{args.erase}-to-{to}"
    if not (out / "unlearn_model.json").is_file():
        overrides = {} if to == "auto" else {"remap_to": to}
        erase(args.base, args.dataset, ForgetTargets.build(labels=[args.erase]), "erasediff", out, overrides=overrides)
    lineage = json.loads((out / "unlearn_model.json").read_text())["lineage"]
    if lineage["parent_model_sha256"] != base_digest:
        raise SystemExit(f"{out} was erased from another base than {args.base}: remove it or use another --workdir")
    return out, lineage["deletions"][-1]["mapping"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--evaluator", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True, help="the dataset the base was trained on")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--erase", type=int, default=3)
    ap.add_argument("--to", nargs="+", default=["auto", "8"], help="destinations: auto or class indices")
    ap.add_argument("--settings", type=setting, nargs="+", default=[(40, 15), (40, 25), (100, 25)])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dataset = load_dataset(args.dataset)
    classes = dataset.num_classes
    if not 0 <= args.erase < classes:
        ap.error(f"--erase {args.erase}: the dataset's classes are 0-{classes - 1}")
    wrong = [t for t in args.to if t != "auto" and not (t.isdigit() and int(t) < classes and int(t) != args.erase)]
    if wrong or len(set(args.to)) != len(args.to):
        ap.error(f"--to takes auto or distinct class indices 0-{classes - 1} other than {args.erase}; got {args.to}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args.workdir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {"base": args.base}
    mappings: dict[str, dict[str, int]] = {}
    base_digest = model_digest(args.base)
    for to in args.to:
        models[to], mappings[to] = erased_onto(args, to, base_digest)
        print(f"erase {args.erase} -> {to}: mapping {mappings[to]}", flush=True)

    evaluator = Evaluator.load(args.evaluator, device=dev)
    features = EvaluatorFeatures(evaluator)
    retained = [c for c in range(classes) if c != args.erase]
    # The audit's real images: the retained training records (Selection.retain), one per distinct image.
    kept = select(dataset, ForgetTargets.build(labels=[args.erase])).retain
    real = {c: [r for r in kept if r.label == c] for c in retained}
    together = RealReference(features, TensorSet.from_records(dataset, sum(real.values(), [])).distinct().images)
    alone = {c: RealReference(features, TensorSet.from_records(dataset, real[c]).distinct().images) for c in retained}
    loaded = {name: DiffusionModel.load(p, device=dev) for name, p in models.items()}

    rows: list[dict[str, Any]] = []
    todo = [(per, steps, seed) for per, steps in args.settings for seed in args.seeds]
    for per, steps, seed in tqdm(todo, desc="settings x seeds"):
        fids: dict[str, dict[str, Any]] = {}
        for name, model in loaded.items():
            grid = generate_class_samples(model, evaluator, per, steps=steps, seed=seed)
            fids[name] = {
                "fid": round(together.measure(grid.images_of(retained))["fid"], 2),
                "by_class": {str(c): round(alone[c].measure(grid.for_class(c)[0])["fid"], 1) for c in retained},
            }
        for f in fids.values():
            f["ratio_to_base"] = round(f["fid"] / fids["base"]["fid"], 3)
        rows.append({"per_class": per, "steps": steps, "seed": seed, "models": fids})
        print(
            f"{per}x{steps} seed {seed}: "
            + ", ".join(f"{n} {f['fid']} ({f['ratio_to_base']}x)" for n, f in fids.items()),
            flush=True,
        )
    path = Path(__file__).parent / "results" / f"retained-fid{'-' + args.tag if args.tag else ''}-{dev}.json"
    out = {"machine": machine(), "torch": torch.__version__, "base": str(args.base), "erased": args.erase}
    out |= {"mappings": mappings, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
