"""Denoising training: base models, and the retrain/finetune baselines that reuse the loop.

One readable loop in the style of diffusers' ``examples/`` scripts: accelerate for the
device and mixed precision, EMA weights, a cosine schedule with warm-up, periodic
checkpoints and resume, a progress bar. Launched as several processes it trains
data-parallel (DDP), matching a single-process run (see :mod:`.accel`)::

    accelerate launch --num_processes 2 -m unlearn_lib.cli train-base --dataset data/digits --out models/base
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointManager, restore_rng, rng_state
from ..data.manifest import Dataset
from ..data.tensors import TensorSet, to_model_space
from ..errors import ConfigError
from ..utils import atomic_output_dir, pick_device, write_json
from ..viz import save_loss_curve
from .accel import check_divisible, is_main_process, make_accelerator, shard_rows, wait_for_everyone
from .diffusion import DiffusionModel, build_model
from .objectives import ForwardProcess, drop_labels, predict_eps
from .presets import get_preset


@dataclass
class TrainConfig:
    preset: str = "digits"
    conditional: bool = True
    steps: int | None = None  # None: the preset's default
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999  # 0 disables EMA
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 500
    guidance_scale: float = 2.0

    def resolved(self) -> TrainConfig:
        """Fill preset defaults and validate."""
        d = get_preset(self.preset).train_defaults
        cfg = replace(
            self,
            steps=self.steps if self.steps is not None else d["steps"],
            batch_size=self.batch_size if self.batch_size is not None else d["batch_size"],
            lr=self.lr if self.lr is not None else d["lr"],
        )
        if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ConfigError("steps and batch_size must be >= 1 and lr > 0")
        if not 0 <= cfg.cond_drop_prob < 1:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {cfg.cond_drop_prob}")
        if not 0 <= cfg.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        if cfg.lr_schedule not in ("cosine", "constant", "linear"):
            raise ConfigError(f"lr_schedule must be cosine, constant or linear, got {cfg.lr_schedule!r}")
        return cfg


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.nan


BatchHook = Callable[[int, torch.Tensor], None]


def train_denoiser(
    model: DiffusionModel,
    data: TensorSet,
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    fingerprint_extra: dict | None = None,
    progress: bool = True,
    desc: str = "train",
    on_batch: BatchHook | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` with the DDPM objective; EMA weights end up in the model.

    ``on_batch(step, indices)`` sees the indices into ``data`` of every batch drawn, which
    lets callers (and tests) verify what the loop trained on.

    Under a distributed launch every process draws the same global batch and trains on its
    share of the rows; DDP averages the gradients, so the step is the single-process one.
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    cfg = cfg.resolved()
    if len(data) == 0:
        raise ConfigError("no training records")
    device = pick_device(cfg.device)
    accelerator = make_accelerator(device, cfg.mixed_precision)
    distributed = accelerator.num_processes > 1
    check_divisible(cfg.batch_size)
    main = accelerator.is_main_process
    unet = model.unet.to(accelerator.device)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        unet.to(memory_format=torch.channels_last)  # NHWC: the tensor-core layout for bf16
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda)
    lr_sched = get_scheduler(
        cfg.lr_schedule,
        optimizer,
        num_warmup_steps=min(cfg.warmup_steps, cfg.steps // 10),
        num_training_steps=cfg.steps,
    )
    ema = None
    if cfg.ema_decay > 0:
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
        ema.to(accelerator.device)
    unet, optimizer, lr_sched = accelerator.prepare(unet, optimizer, lr_sched)
    fp = ForwardProcess(model.scheduler, accelerator.device)
    images = data.images.to(accelerator.device)
    labels = data.labels.to(accelerator.device)
    gen = torch.Generator(device=accelerator.device).manual_seed(cfg.seed)
    # The global generator only draws dropout masks: other processes draw other ones for their rows.
    torch.manual_seed(cfg.seed + accelerator.process_index)

    ckpt = None
    start_step, losses, resumed_from = 0, [], None
    if checkpoint_dir is not None:
        ckpt = CheckpointManager(
            checkpoint_dir, {"config": asdict(cfg), "data": data.record_ids, "extra": fingerprint_extra or {}}
        )
        state = ckpt.latest()
        if state is not None:
            accelerator.unwrap_model(unet).load_state_dict(state["unet"])
            optimizer.load_state_dict(state["optimizer"])
            lr_sched.load_state_dict(state["lr_scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            restore_rng(gen, state["rng"])
            start_step, losses, resumed_from = state["step"], list(state["losses"]), state["step"]

    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=desc,
        disable=not (progress and main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    for step in range(start_step, cfg.steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen, device=accelerator.device)
        if on_batch is not None:
            on_batch(step, idx)
        x0 = to_model_space(images[idx])
        y = drop_labels(labels[idx], model.null_class, cfg.cond_drop_prob, gen)
        t = torch.randint(0, fp.num_timesteps, (cfg.batch_size,), generator=gen, device=accelerator.device)
        eps = torch.randn(x0.shape, generator=gen, device=accelerator.device)
        if distributed:  # the whole batch was drawn above (same stream everywhere); train on this share
            rows = shard_rows(cfg.batch_size)
            x0, t, eps, y = x0[rows], t[rows], eps[rows], None if y is None else y[rows]
        with accelerator.autocast():
            pred = predict_eps(unet, fp.add_noise(x0, eps, t), t, y)
        loss = torch.nn.functional.mse_loss(pred, eps)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(float(accelerator.reduce(loss.detach(), "mean") if distributed else loss.detach()))
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
        done = step + 1
        if (
            main
            and ckpt is not None
            and cfg.checkpoint_every > 0
            and done % cfg.checkpoint_every == 0
            and done < cfg.steps
        ):
            ckpt.save(
                done,
                {
                    "unet": accelerator.unwrap_model(unet).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(gen),
                    "step": done,
                    "losses": losses,
                },
            )
    bar.close()
    seconds = time.perf_counter() - t0
    unet = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    model.unet = unet
    return TrainResult(steps=cfg.steps - start_step, seconds=seconds, losses=losses, resumed_from=resumed_from)


def train_base(
    dataset: Dataset,
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    progress: bool = True,
    overwrite: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> tuple[DiffusionModel, TrainResult]:
    """Train a model on the dataset's training split and save it at ``out`` (all or nothing)."""
    cfg = cfg.resolved()
    preset = get_preset(cfg.preset)
    if tuple(dataset.image_shape) != (preset.channels, preset.sample_size, preset.sample_size):
        raise ConfigError(
            f"preset {preset.name!r} models {preset.channels}x{preset.sample_size}x{preset.sample_size} images, "
            f"the dataset holds {'x'.join(map(str, dataset.image_shape))}"
        )
    num_classes = dataset.num_classes if cfg.conditional else 0
    model = build_model(
        preset, num_classes, dataset.info.get("class_names"), cfg.guidance_scale, cfg.cond_drop_prob, seed=cfg.seed
    )
    data = TensorSet.from_records(dataset, dataset.train)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else Path(f"{out}.checkpoints")
    result = train_denoiser(
        model,
        data,
        cfg,
        checkpoint_dir=ckpt_dir,
        fingerprint_extra={"dataset": dataset.digest()},
        progress=progress,
        desc="train-base",
    )
    model.meta.training = {
        "config": asdict(cfg),
        "dataset_digest": dataset.digest(),
        "train_records": len(data),
        "final_loss": sum(result.losses[-100:]) / max(1, len(result.losses[-100:])),
        "seconds": round(result.seconds, 2),
        "resumed_from": result.resumed_from,
    }
    if is_main_process():  # the other processes of a distributed launch hold the same weights
        with atomic_output_dir(out, overwrite=overwrite) as stage:
            model.save(stage)
            write_json(stage / "train_history.json", {"loss": result.losses})
            save_loss_curve({"denoising loss": result.losses}, stage / "loss_curve.png", title="base training")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    wait_for_everyone()
    return model, result


def ensure_base_model(
    dataset: Dataset,
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    progress: bool = True,
    overwrite: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> tuple[DiffusionModel, TrainResult | None]:
    """Train unless ``out`` already holds a model of this configuration and dataset (then load it).

    A folder holding a model of another configuration is refused unless ``overwrite``:
    silently reusing it would hand the wrong model to everything downstream.
    """
    cfg = cfg.resolved()
    out = Path(out)
    if out.exists() and not overwrite:
        model = DiffusionModel.load(out)
        cached = model.meta.training
        if cached.get("config") == _jsonable(asdict(cfg)) and cached.get("dataset_digest") == dataset.digest():
            return model, None
        from ..errors import UnlearnError

        raise UnlearnError(
            f"{out} holds a model trained with another configuration or dataset (pass --overwrite to replace it)"
        )
    return train_base(dataset, out, cfg, progress=progress, overwrite=overwrite, checkpoint_dir=checkpoint_dir)


def _jsonable(obj: dict) -> dict:
    import json

    return json.loads(json.dumps(obj))
