"""Baselines in the same registry as EraseDiff.

* ``retrain``: train from scratch on the retain set only (exact unlearning, the gold
  standard every approximate method is measured against; costs a full training run).
* ``finetune``: continue training the base model on the retain set only.
* ``neggrad``: gradient ascent on the forget set's denoising loss, descent on the retain set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from ..models.diffusion import build_model
from ..models.training import BatchHook, TrainConfig, train_denoiser
from .base import CommonConfig, Unlearner, UnlearningResult, UnlearningTask, register
from .loop import UnlearningLoop


@dataclass
class FinetuneConfig(CommonConfig):
    steps: int = 300
    lr: float = 5e-4


@register
class Finetune(Unlearner):
    name = "finetune"
    summary = "continue training on the retain set only (catastrophic forgetting of the rest)"
    config_cls = FinetuneConfig

    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        cfg = self.config
        loop = UnlearningLoop(self.name, task, cfg, checkpoint_dir, progress)
        optimizer = loop.adam(cfg.lr)
        loop.resume({"outer": optimizer})
        bar = loop.bar()
        for step in range(loop.start_step, cfg.steps):
            x_r, y_r = loop.retain_batch()
            loss_r = loop.denoising_loss(x_r, y_r)
            grads = torch.autograd.grad(loss_r, loop.params, allow_unused=True)
            loop.apply(
                optimizer, [torch.zeros_like(p) if g is None else g for p, g in zip(loop.params, grads, strict=True)]
            )
            loop.log(loss_r=loss_r.detach())
            bar.update(1)
            loop.maybe_checkpoint(step + 1, {"outer": optimizer})
        bar.close()
        return loop.finish(cfg.steps)


@dataclass
class NegGradConfig(CommonConfig):
    steps: int = 100
    lr: float = 5e-4
    alpha: float = 1.0  # weight of the ascent term on the forget set
    forget_loss_cap: float = 10.0  # stop ascending a batch whose loss exceeds this (ascent is unbounded)


@register
class NegGrad(Unlearner):
    name = "neggrad"
    summary = "gradient ascent on the forget set's denoising loss plus descent on the retain set"
    config_cls = NegGradConfig

    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        cfg: NegGradConfig = self.config  # type: ignore[assignment]
        if cfg.alpha < 0:
            raise ConfigError("alpha must be >= 0")
        loop = UnlearningLoop(self.name, task, cfg, checkpoint_dir, progress)
        optimizer = loop.adam(cfg.lr)
        loop.resume({"outer": optimizer})
        bar = loop.bar()
        for step in range(loop.start_step, cfg.steps):
            x_r, y_r = loop.retain_batch()
            x_f, _, y_in, _ = loop.forget_batch()
            loss_r = loop.denoising_loss(x_r, y_r)
            loss_f = loop.denoising_loss(x_f, y_in)
            ascent = cfg.alpha if loss_f.item() < cfg.forget_loss_cap else 0.0
            loss = loss_r - ascent * loss_f
            grads = torch.autograd.grad(loss, loop.params, allow_unused=True)
            loop.apply(
                optimizer, [torch.zeros_like(p) if g is None else g for p, g in zip(loop.params, grads, strict=True)]
            )
            loop.log(loss_r=loss_r.detach(), loss_f=loss_f.detach())
            bar.update(1)
            loop.maybe_checkpoint(step + 1, {"outer": optimizer})
        bar.close()
        return loop.finish(cfg.steps)


@dataclass
class RetrainConfig(CommonConfig):
    steps: int = 0  # 0: as many steps as the base model was trained for
    lr: float = 0.0  # 0: the base model's learning rate
    batch_size: int = 0  # 0: the base model's batch size
    ema_decay: float = 0.999
    warmup_steps: int = 100

    def validate(self) -> None:
        if self.steps < 0 or self.lr < 0 or self.batch_size < 0:
            raise ConfigError("steps, lr and batch_size must be >= 0 (0 means: as for the base model)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.t_sampling != "uniform" or not self.ema_warmup:
            raise ConfigError("retrain trains as the base model was trained: t_sampling and ema_warmup do not apply")


@register
class Retrain(Unlearner):
    name = "retrain"
    summary = "train from scratch on the retain set only: exact unlearning, the reference for every method"
    config_cls = RetrainConfig

    def __init__(self, config: CommonConfig | None = None, on_batch: BatchHook | None = None) -> None:
        super().__init__(config)
        self.on_batch = on_batch

    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        cfg: RetrainConfig = self.config  # type: ignore[assignment]
        base_train = dict(task.base.meta.training.get("config", {}))
        known = TrainConfig.__dataclass_fields__
        train_cfg = TrainConfig(**{k: v for k, v in base_train.items() if k in known})
        train_cfg = replace(
            train_cfg,
            preset=task.base.meta.preset,
            conditional=task.base.conditional,
            steps=cfg.steps or train_cfg.steps,
            lr=cfg.lr or train_cfg.lr,
            batch_size=cfg.batch_size or train_cfg.batch_size,
            seed=cfg.seed,
            ema_decay=cfg.ema_decay,
            warmup_steps=cfg.warmup_steps,
            grad_clip=cfg.grad_clip,
            device=cfg.device,
            mixed_precision=cfg.mixed_precision,
            checkpoint_every=cfg.checkpoint_every if cfg.checkpoint_every > 0 else 0,
            cond_drop_prob=cfg.cond_drop_prob if cfg.cond_drop_prob is not None else task.base.meta.cond_drop_prob,
        )
        meta = task.base.meta
        model = build_model(
            meta.preset, meta.num_classes, meta.class_names, meta.guidance_scale, train_cfg.cond_drop_prob, cfg.seed
        )
        result = train_denoiser(
            model,
            task.retain,
            train_cfg,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            desc=self.name,
            on_batch=self.on_batch,
        )
        model.meta.training = {**task.base.meta.training, "config": {**base_train, **train_cfg.__dict__}}
        model.to("cpu")
        return UnlearningResult(
            model=model,
            algorithm=self.name,
            config={**cfg.__dict__, "train": train_cfg.__dict__},
            steps=result.steps,
            seconds=result.seconds,
            history={"loss_r": result.losses},
            resumed_from=result.resumed_from,
            samples_drawn={"retain": result.steps * train_cfg.batch_size, "forget": 0},
        )
