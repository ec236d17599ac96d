"""Cost of the audit for a CIFAR-size model (the `cifar10-ddpm` preset, 35.7M parameters).

    python benchmarks/bench_audit_cifar.py --samples-per-class 1000     # on a GPU
    python benchmarks/bench_audit_cifar.py --quick                      # smoke run on a CPU

CIFAR-10 cannot be downloaded here, so the data set is synthetic (32x32 RGB images of
coloured shapes, 10 classes, with a canary subject) and the models are untrained: the
figures are timings, not quality. Target: a full audit of a CIFAR-size model in under
2 minutes on one H100. Writes ``results/audit-cifar-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unlearn_lib.audit import AuditParams, run_audit, train_evaluator
from unlearn_lib.data import ForgetTargets, Record, load_dataset, write_manifest
from unlearn_lib.models import build_model, class_grid_labels, sample
from unlearn_lib.utils import sha256_bytes


def synthetic_dataset(root: Path, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    records = []
    yy, xx = np.mgrid[:32, :32]
    for i in range(per_class * 10):
        label = i % 10
        img = np.zeros((32, 32, 3), np.uint8)
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), 4 + label // 2
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (
            np.array([label * 25, 255 - label * 25, 128]) + rng.integers(0, 30, 3)
        ).clip(0, 255)
        import io

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        data = buf.getvalue()
        rid = f"syn-{i:05d}"
        (root / "images" / f"{rid}.png").write_bytes(data)
        records.append(
            Record(
                rid,
                "subject-canary" if i < 30 else f"subject-{i % 50}",
                label,
                None,
                f"images/{rid}.png",
                sha256_bytes(data),
                "holdout" if (i // 10) % 10 == 9 else "train",
            )
        )
    write_manifest(root, records, {"name": "synthetic-cifar", "num_classes": 10, "image_shape": [3, 32, 32]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples-per-class", type=int, default=1000)
    ap.add_argument("--extraction-samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="tiny counts, to check the script on a CPU")
    args = ap.parse_args()
    if args.quick:
        args.samples_per_class, args.extraction_samples, args.steps = 2, 4, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-audit-cifar-"))
    synthetic_dataset(work / "data", per_class=20 if args.quick else 200)
    dataset = load_dataset(work / "data")
    torch.manual_seed(0)
    base = build_model("cifar10-ddpm", 10)
    base.save(work / "base")
    with torch.no_grad():
        for p in base.unet.parameters():
            p.add_(torch.randn_like(p) * 1e-4)
    base.save(work / "unlearned")
    train_evaluator(dataset, epochs=2 if args.quick else 10, device=device, progress=False).save(work / "evaluator")

    model = build_model("cifar10-ddpm", 10).to(device)
    labels = class_grid_labels(model, 2 if args.quick else 2048 // 10)
    sample(model, labels[:64], steps=2)  # warm-up (cuDNN autotuning, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sample(model, labels, steps=args.steps, batch_size=1024)
    if device == "cuda":
        torch.cuda.synchronize()
    per_1000 = (time.perf_counter() - t0) * 1000 / len(labels)

    params = AuditParams(
        samples_per_class=args.samples_per_class, extraction_samples=args.extraction_samples, sampling_steps=args.steps
    )
    t0 = time.perf_counter()
    run_audit(
        work / "base",
        work / "unlearned",
        work / "data",
        ForgetTargets.build(subject_ids=["subject-canary"]),
        work / "audit",
        params=params,
        evaluator_dir=work / "evaluator",
        device=device,
    )
    audit_seconds = time.perf_counter() - t0
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    out = {
        "device": name,
        "torch": torch.__version__,
        "seconds_per_1000_guided_samples": per_1000,
        "audit_seconds": audit_seconds,
        "params": params.to_dict(),
        "quick": args.quick,
        "models_audited": 2,
        "samples_per_model": 10 * args.samples_per_class + args.extraction_samples,
    }
    path = Path(__file__).parent / "results" / f"audit-cifar-{device}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
