"""The GPU path, measured: one prepared script for a CUDA machine (about 6 minutes on one H100).

    python benchmarks/bench_gpu.py            # on a CUDA machine
    python benchmarks/bench_gpu.py --quick    # smoke run of every part, on any device (CI runs it on CPU)

1. **CIFAR-size forget-one-class**: the ``cifar10-ddpm`` preset (35.7M parameters) erases class 3
   with EraseDiff in paper mode (``preset=paper``: the official CIFAR-10 configuration), then the
   audit judges it. Our loop on CUDA: bf16 autocast, channels_last, fused Adam. Target: unlearn +
   audit under 5 minutes on one H100.
2. **Against the official loop style**: the same outer iteration (K=2 inner passes over the
   forget set, then one combined step on a retain and a forget batch of 128) written the way the
   official EraseDiff code runs it: fp32, ``nn.DataParallel``, ``gc.collect()`` and
   ``torch.cuda.empty_cache()`` after every step, unfused Adam. Both are timed in the same
   process on the same card, seconds per outer iteration. Target: ours at least 6x faster.
3. **tiny-sd at 64x64**: the text-to-image preset's architecture at 64x64 (latents 16x16x4) on
   captioned 64x64 images: training steps per second and an EraseDiff erasure by caption, bf16.

CIFAR-10 cannot be downloaded on these machines, so the images are synthetic (coloured shapes,
10 classes, see ``bench_audit_cifar.py``) and the CIFAR-size model starts untrained: the figures
are timings, not quality. Writes ``results/gpu-<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_audit_cifar import synthetic_dataset

from unlearn_lib.audit import AuditParams, run_audit, train_evaluator
from unlearn_lib.data import ForgetTargets, Record, load_dataset, write_manifest
from unlearn_lib.models import DiffusionModel, build_model
from unlearn_lib.models.objectives import ForwardProcess
from unlearn_lib.unlearning import erase
from unlearn_lib.unlearning.erasediff import PAPER_PRESET
from unlearn_lib.utils import sha256_bytes


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cifar_unlearn_and_audit(work: Path, device: str, quick: bool) -> dict:
    """Part 1: EraseDiff (paper mode) on the CIFAR-size model, then the class-erasure audit."""
    torch.manual_seed(0)
    build_model("cifar10-ddpm", 10).save(work / "base")
    steps = 2 if quick else PAPER_PRESET.values["steps"]
    overrides = {
        "preset": "paper",
        "steps": steps,
        "round_steps": min(steps, PAPER_PRESET.values["round_steps"]),
        "device": device,
        "mixed_precision": "bf16" if device == "cuda" else "no",
        **({"batch_size": 8, "forget_batch_size": 8} if quick else {}),
    }
    sync(device)
    t0 = time.perf_counter()
    result, _ = erase(
        work / "base", work / "data", ForgetTargets.build(labels=[3]), "erasediff", work / "unlearned", overrides
    )
    sync(device)
    unlearn_s = time.perf_counter() - t0
    evaluator = train_evaluator(load_dataset(work / "data"), epochs=1 if quick else 10, device=device, progress=False)
    evaluator.save(work / "evaluator")
    params = AuditParams(
        samples_per_class=2 if quick else 100,
        extraction_samples=2 if quick else 500,
        sampling_steps=2 if quick else 25,
        mia_noise_draws=1 if quick else 4,
        # The class gate's own draw (500 by default) is most of a CPU smoke run's time otherwise.
        forgotten_samples=2 if quick else AuditParams().forgotten_samples,
    )
    t0 = time.perf_counter()
    run_audit(
        work / "base",
        work / "unlearned",
        work / "data",
        ForgetTargets.build(labels=[3]),
        work / "audit",
        params=params,
        evaluator_dir=work / "evaluator",
        device=device,
    )
    sync(device)
    audit_s = time.perf_counter() - t0
    return {
        "unlearn_seconds": unlearn_s,
        "outer_steps": result.steps,
        "seconds_per_outer_step": result.seconds / max(1, result.steps),
        "audit_seconds": audit_s,
        "total_seconds": unlearn_s + audit_s,
        "audit_params": params.to_dict(),
    }


def official_style_seconds_per_outer_step(work: Path, device: str, iters: int, batch: int) -> float:
    """Part 2's reference: EraseDiff's outer iteration as the official code runs it."""
    model = DiffusionModel.load(work / "base")
    ds = load_dataset(work / "data")
    from unlearn_lib.data import TensorSet
    from unlearn_lib.data.tensors import to_model_space

    data = TensorSet.from_records(ds, ds.train)
    x = to_model_space(data.images).to(device)
    y = data.labels.to(device)
    forget_x, forget_y = x[y == 3], y[y == 3]
    retain_x, retain_y = x[y != 3], y[y != 3]
    net: torch.nn.Module = model.unet.to(device)
    if device == "cuda":
        net = torch.nn.DataParallel(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    fp = ForwardProcess(model.scheduler, device)
    k, lam = PAPER_PRESET.values["inner_steps"], PAPER_PRESET.values["lam"]

    def loss(xb: torch.Tensor, yb: torch.Tensor, uniform: bool) -> torch.Tensor:
        t = torch.randint(0, fp.num_timesteps, (xb.shape[0],), device=device)
        target = torch.rand_like(xb) if uniform else torch.randn_like(xb)
        out = net(fp.add_noise(xb, target, t), t, class_labels=yb).sample
        return F.mse_loss(out, target)

    def step(value: torch.Tensor) -> None:
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    times = []
    for it in range(iters + 1):  # the first iteration warms up (cuDNN autotuning, allocator)
        sync(device)
        t0 = time.perf_counter()
        saved = copy.deepcopy(net.state_dict())
        for _ in range(k):
            for start in range(0, forget_x.shape[0], batch):
                step(loss(forget_x[start : start + batch], forget_y[start : start + batch], uniform=True))
        with torch.no_grad():
            loss_f_star = loss(forget_x[:batch], forget_y[:batch], uniform=True)
        net.load_state_dict(saved)
        r = torch.randint(0, retain_x.shape[0], (batch,), device=device)
        f = torch.randint(0, forget_x.shape[0], (batch,), device=device)
        loss_f = loss(forget_x[f], forget_y[f], uniform=True)
        step(loss(retain_x[r], retain_y[r], uniform=False) + lam * (loss_f - loss_f_star))
        sync(device)
        if it:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def captioned_64(root: Path, per_class: int, seed: int = 0) -> None:
    """Coloured shapes at 64x64 with a caption per image ("a red disc of size 3")."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    yy, xx = np.mgrid[:64, :64]
    records = []
    for i in range(per_class * 10):
        label = i % 10
        img = np.zeros((64, 64, 3), np.uint8)
        cy, cx, r = rng.integers(16, 48), rng.integers(16, 48), 6 + label
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (np.array([label * 25, 255 - label * 25, 128])).clip(0, 255)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        data = buf.getvalue()
        rid = f"c64-{i:05d}"
        (root / "images" / f"{rid}.png").write_bytes(data)
        split = "holdout" if (i // 10) % 10 == 9 else "train"
        caption = f"a shape of class {words[label]}"
        records.append(Record(rid, f"subject-{i % 50}", label, caption, f"images/{rid}.png", sha256_bytes(data), split))
    write_manifest(root, records, {"name": "shapes-64", "num_classes": 10, "image_shape": [3, 64, 64]})


def tiny_sd_64(work: Path, device: str, quick: bool) -> dict:
    """Part 3: the tiny-sd architecture at 64x64 on 3 channels: training throughput and one erasure."""
    from unlearn_lib.t2i import T2ITrainConfig, train_t2i
    from unlearn_lib.t2i.run import erase_t2i
    from unlearn_lib.t2i.training import T2I_PRESETS

    captioned_64(work / "shapes64", per_class=4 if quick else 200)
    ds = load_dataset(work / "shapes64")
    preset = replace(T2I_PRESETS["tiny-sd"], name="tiny-sd-64", sample_size=64, channels=3, vae_channels=(32, 64, 64))
    T2I_PRESETS[preset.name] = preset
    steps = 2 if quick else 1000
    cfg = T2ITrainConfig(
        preset=preset.name,
        steps=steps,
        vae_steps=2 if quick else 500,
        device=device,
        mixed_precision="bf16" if device == "cuda" else "no",
    )
    _, trained = train_t2i(ds, work / "tiny-sd-64", cfg, progress=not quick)
    erase_steps = 2 if quick else 150
    sync(device)
    t0 = time.perf_counter()
    result, _ = erase_t2i(
        work / "tiny-sd-64",
        work / "shapes64",
        ForgetTargets.build(labels=[7]),
        "erasediff",
        work / "tiny-sd-64-erased",
        overrides={"steps": erase_steps},
        progress=not quick,
        device=device,
    )
    sync(device)
    return {
        "train_seconds": trained.seconds,
        "train_steps": steps,
        "train_steps_per_second": steps / trained.seconds,
        "erase_seconds": time.perf_counter() - t0,
        "erase_steps": erase_steps,
        "erase_loop_seconds": result.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs, on any device")
    ap.add_argument("--reference-iterations", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="result file (default results/gpu-<device>.json)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    synthetic_dataset(work / "data", per_class=6 if args.quick else 500)
    t_all = time.perf_counter()
    part1 = cifar_unlearn_and_audit(work, device, args.quick)
    batch = 8 if args.quick else PAPER_PRESET.values["batch_size"]
    reference = official_style_seconds_per_outer_step(
        work, device, 1 if args.quick else args.reference_iterations, batch
    )
    part3 = tiny_sd_64(work, device, args.quick)
    out = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU",
        "devices_visible": torch.cuda.device_count() if device == "cuda" else 0,
        "torch": torch.__version__,
        "quick": args.quick,
        "cifar10_ddpm_forget_one_class": part1,
        "official_loop_style_seconds_per_outer_step": reference,
        "speedup_per_outer_step": reference / part1["seconds_per_outer_step"],
        "tiny_sd_64": part3,
        "wall_seconds": time.perf_counter() - t_all,
        "targets": {"cifar_unlearn_plus_audit_seconds": 300, "speedup_per_outer_step": 6},
    }
    path = args.out or Path(__file__).parent / "results" / f"gpu-{device}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
