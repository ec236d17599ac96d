"""Text-to-image erasure on tiny-sd, every method on the same machine: forgetting, utility, robustness, time.

    python benchmarks/bench_t2i.py [--base DIR] [--evaluator DIR] [--workdir DIR] [--attack-steps 200]

Erases the prompt "a handwritten digit seven" from a ``tiny-sd`` model (trained first without
``--base``: ``unlearn train-base --preset tiny-sd``) with:

* ``erasediff`` by caption (the records whose caption matches "digit seven", ours: anchor target),
* ``erasediff`` by caption with ``adapter=lora`` (rank 4 on every attention projection),
* ``erasediff`` by prompt (no images: the forget set is generated, the anchor is the nearest kept prompt),
* ``esd`` (ESD-u: ``params=noxattn``) and ``esd`` ESD-x (``params=xattn``), by prompt,
* ``salun`` by caption,
* ``retrain``: the whole pipeline trained again without the erased records (the exact answer).

Each result is audited with :func:`unlearn_lib.t2i.audit.audit_t2i` (same seeds for all):
P(7 | its prompt), the other digits' mean accuracy, the neighbour digit's accuracy, FID in the
evaluator's features, and the adversarial prompt search's success. Writes
``benchmarks/results/t2i-<device>.json`` and prints the README table rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is the script's folder: on sys.path

from unlearn_lib.audit import Evaluator, train_evaluator
from unlearn_lib.data import DigitsConfig, ForgetTargets, TensorSet, build_digits, load_dataset, select
from unlearn_lib.t2i import T2ITrainConfig, TextToImageModel, ensure_t2i_model
from unlearn_lib.t2i.audit import T2IAuditParams, audit_t2i
from unlearn_lib.t2i.run import erase_t2i

SEVEN = "a handwritten digit seven"
RUNS: list[tuple[str, str, str, dict]] = [
    ("erasediff (caption)", "erasediff", "caption", {}),
    ("erasediff + LoRA r4 (caption)", "erasediff", "caption", {"adapter": "lora", "lora_rank": 4, "lr": 1e-2}),
    ("erasediff (prompt, no images)", "erasediff", "prompt", {}),
    ("ESD-u (prompt)", "esd", "prompt", {"params": "noxattn"}),
    ("ESD-x (prompt)", "esd", "prompt", {"params": "xattn"}),
    ("SalUn (caption)", "salun", "caption", {}),
    ("retrain without the records (caption)", "retrain", "caption", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--evaluator")
    ap.add_argument("--workdir")
    ap.add_argument("--attack-steps", type=int, default=200)
    ap.add_argument("--only", nargs="*", help="run names to keep (substring match)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-t2i-"))
    data_dir = work / "digits"
    if not data_dir.exists():
        build_digits(data_dir, DigitsConfig())
    ds = load_dataset(data_dir)
    t0 = time.perf_counter()
    base_dir = Path(args.base) if args.base else work / "tiny-sd"
    if not args.base:
        ensure_t2i_model(ds, base_dir, T2ITrainConfig())
    train_seconds = time.perf_counter() - t0 if not args.base else None
    ev = Evaluator.load(args.evaluator) if args.evaluator else train_evaluator(ds, progress=False)
    base = TextToImageModel.load(base_dir)
    targets = ForgetTargets.build(caption_pattern="digit seven")
    sel = select(ds, targets)
    deleted = TensorSet.from_records(ds, sel.forget)
    captions = [r.caption or "" for r in sel.forget]
    params = T2IAuditParams(attack_steps=args.attack_steps)
    rows = []
    for name, alg, mode, over in RUNS:
        if args.only and not any(s in name for s in args.only):
            continue
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        t1 = time.perf_counter()
        if mode == "caption":
            result, record = erase_t2i(base_dir, data_dir, targets, alg, out, overrides=over, overwrite=True)
        else:
            result, record = erase_t2i(
                base_dir, None, None, alg, out, forget_prompts=[SEVEN], overrides=over, overwrite=True
            )
        wall = time.perf_counter() - t1
        audit = audit_t2i(
            base,
            TextToImageModel.load(out),
            ev,
            ds,
            [7],
            out.with_name(out.name + "-audit"),
            deleted=deleted if mode == "caption" else None,
            deleted_captions=captions if mode == "caption" else None,
            params=params,
            overwrite=True,
            progress=False,
        ).record
        row = {
            "method": name,
            "algorithm": alg,
            "mode": mode,
            "overrides": over,
            "steps": result.steps,
            "loop_seconds": round(result.seconds, 1),
            "wall_seconds": round(wall, 1),
            "trainable_parameters": result.trainable_parameters,
            "p_forgotten": audit["forgotten_probability"]["7"],
            "p_forgotten_base": audit["forgotten_probability_base"]["7"],
            "retained_accuracy": audit["retained_accuracy"],
            "retained_accuracy_base": audit["retained_accuracy_base"],
            "neighbour": audit["over_erasure"]["7"],
            "fid": audit["utility"]["fid"],
            "fid_base": audit["utility"]["fid_base"],
            "attack_success": audit["adversarial_prompt"]["success"]["7"],
            "extraction": audit["extraction"],
            "verdict": audit["verdict"],
        }
        rows.append(row)
        print(json.dumps(row))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {
        "machine": f"{machine()}, torch {torch.__version__}",
        "device": device,
        "base": str(base_dir),
        "base_train_seconds": train_seconds,
        "unet_parameters": base.num_parameters(),
        "attack_steps": args.attack_steps,
    }
    out_json = Path(__file__).parent / "results" / f"t2i-{device}.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("| method | P(7) | other digits | neighbour | FID | adversarial | trainable | time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        nb = r["neighbour"]
        print(
            f"| {r['method']} | {r['p_forgotten']:.2f} (base {r['p_forgotten_base']:.2f}) | "
            f"{r['retained_accuracy']:.3f} (base {r['retained_accuracy_base']:.3f}) | "
            f"{nb['neighbour']}: {nb['accuracy']:.2f} | {r['fid']:.1f} (base {r['fid_base']:.1f}) | "
            f"{r['attack_success']:.2f} | {r['trainable_parameters']:,} | {r['loop_seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
