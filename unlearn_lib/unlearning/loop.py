"""Machinery shared by the fine-tuning style algorithms (EraseDiff, finetune, NegGrad, SA, SalUn).

Batches are drawn from tensors kept on the device (the data sets are small images), with
one seeded generator so a run is reproducible and a resumed run continues the same
random stream. Checkpoints hold everything needed to continue: weights, optimizer
states, EMA, the generator, the history.

**Several processes** (``accelerate launch --num_processes N``, ``torchrun``; see
:mod:`unlearn_lib.models.accel`): every process draws the same global batches, noise and
timesteps from the same generator, so all of them see the same data. :meth:`denoising_loss`
runs the model on this process's contiguous share of the rows only; its value is the mean
over the whole batch (one all-reduce), its gradient this share's, and :meth:`apply` averages
the gradients across processes, so every process takes the single-process step and the
weights stay identical everywhere. Losses an algorithm computes through :meth:`predict` on a
whole batch are computed by every process (correct, not parallel). Gradients used other than
through :meth:`apply` (a dot product of two gradients, say) must be averaged first with
:meth:`all_reduce_mean`. Only the main process writes checkpoints and shows the progress bar.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import CheckpointManager, restore_rng, rng_state
from ..data.tensors import to_model_space
from ..models import accel
from ..models.accel import make_accelerator
from ..models.objectives import ForwardProcess, drop_labels, predict_eps
from ..utils import pick_device
from .base import CommonConfig, UnlearningResult, UnlearningTask, trainable_parameters


@functools.cache
def ema_class(warmup: bool) -> type:
    """diffusers' EMA (its warm-up decay), or one with the same decay from the first update (the
    official baselines' EMAHelper). Built on first use, once: importing diffusers costs seconds that
    the steps which only validate options should not pay."""
    from diffusers.training_utils import EMAModel

    if warmup:
        return EMAModel

    class ConstantDecayEMA(EMAModel):
        def get_decay(self, optimization_step: int) -> float:
            return self.decay

    return ConstantDecayEMA


class UnlearningLoop:
    def __init__(
        self, name: str, task: UnlearningTask, cfg: CommonConfig, checkpoint_dir: str | None, progress: bool
    ) -> None:
        self.name, self.task, self.cfg = name, task, cfg
        device = pick_device(cfg.device)
        self.accelerator = make_accelerator(device, cfg.mixed_precision)
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        accel.check_divisible(cfg.batch_size)
        self.model = task.base.clone().to(self.device)
        self.model.unet.train()
        # The untouched base model, for targets defined by what the model did before unlearning.
        self.frozen = task.base.clone().to(self.device)
        self.frozen.unet.eval().requires_grad_(False)
        if self.device.type == "cuda":
            # NHWC convolutions: the tensor-core layout for bf16 on recent GPUs.
            self.model.unet.to(memory_format=torch.channels_last)
            self.frozen.unet.to(memory_format=torch.channels_last)
        self.params = trainable_parameters(self.model.unet, cfg.params)
        self.fp = ForwardProcess(self.model.scheduler, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.retain_x = task.retain.images.to(self.device)
        self.retain_y = task.retain.labels.to(self.device)
        self.forget_x = task.forget.images.to(self.device)
        self.forget_y = task.forget.labels.to(self.device)
        self.cond_drop = cfg.cond_drop_prob if cfg.cond_drop_prob is not None else task.base.meta.cond_drop_prob
        ema_cls = ema_class(cfg.ema_warmup)
        self.ema = ema_cls(self.params, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.to(self.device)
        self.history: dict[str, list[float]] = defaultdict(list)
        self.drawn = {"retain": 0, "forget": 0}
        self.progress = progress
        self.ckpt = (
            CheckpointManager(
                checkpoint_dir,
                {
                    "algorithm": name,
                    "config": asdict(cfg),
                    "retain": task.retain.record_ids,
                    "forget": task.forget.record_ids,
                },
            )
            if checkpoint_dir
            else None
        )
        self.start_step = 0
        self.resumed_from: int | None = None
        self.t0 = time.perf_counter()

    # ---- batches -------------------------------------------------------------------------

    def adam(self, lr: float) -> torch.optim.Adam:
        """Adam over the trainable parameters; fused (one kernel for all tensors) on CUDA."""
        return torch.optim.Adam(self.params, lr=lr, fused=self.device.type == "cuda")

    def _draw(self, n: int, size: int) -> torch.Tensor:
        return torch.randint(0, n, (size,), generator=self.gen, device=self.device)

    def retain_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = self._draw(len(self.task.retain), self.cfg.batch_size)
        self.drawn["retain"] += idx.numel()
        return to_model_space(self.retain_x[idx]), drop_labels(
            self.retain_y[idx], self.model.null_class, self.cond_drop, self.gen
        )

    def forget_batch(
        self, idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Forget images, their true labels, the conditioning used (with CFG dropout), indices.

        Without ``idx`` the batch is drawn with replacement; with it, those records (a pass
        over the forget set in shuffled order, as a data loader would give them).
        """
        if idx is None:
            idx = self._draw(len(self.task.forget), self.cfg.forget_batch_size)
        self.drawn["forget"] += idx.numel()
        y = self.forget_y[idx]
        return (
            to_model_space(self.forget_x[idx]),
            y,
            drop_labels(y, self.model.null_class, self.cond_drop, self.gen),
            idx,
        )

    def timesteps(self, n: int, low: int = 0) -> torch.Tensor:
        """``n`` timesteps drawn uniformly from [low, T) (antithetic pairs mirror within that range)."""
        T = self.fp.num_timesteps
        if self.cfg.t_sampling == "antithetic":
            half = torch.randint(low, T, (n // 2 + 1,), generator=self.gen, device=self.device)
            return torch.cat([half, T - 1 + low - half])[:n]
        return torch.randint(low, T, (n,), generator=self.gen, device=self.device)

    def noise_and_t(
        self, x0: torch.Tensor, uniform: bool = False, t_min: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (>= t_min), then the noise of q(x_t | x_0): N(0, I), or U[0, 1) for EraseDiff's paper target."""
        t = self.timesteps(x0.shape[0], low=t_min)
        draw = torch.rand if uniform else torch.randn
        eps = draw(x0.shape, generator=self.gen, device=self.device)
        return eps, t

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with self.accelerator.autocast():
            return predict_eps(self.model.unet, x_t, t, y)

    def denoising_loss(self, x0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        eps, t = self.noise_and_t(x0)
        if self.world_size > 1 and x0.shape[0] % self.world_size == 0:
            return self._shared_denoising_loss(x0, eps, t, y)
        # One process, or rows that cannot be shared equally: every process computes the whole batch.
        return F.mse_loss(self.predict(self.fp.add_noise(x0, eps, t), t, y), eps)

    def _shared_denoising_loss(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """This process's rows: the value is the whole batch's mean, the gradient this share's.

        The gradient averaged by :meth:`apply` is then the whole batch's, also for a function of
        the loss (its derivative uses the whole batch's value), and decisions taken on the value
        (NegGrad's cap) are the same in every process.
        """
        rows = accel.shard_rows(x0.shape[0])
        y = None if y is None else y[rows]
        local = F.mse_loss(self.predict(self.fp.add_noise(x0[rows], eps[rows], t[rows]), t[rows], y), eps[rows])
        (whole,) = self.all_reduce_mean([local.detach()])
        return local + (whole - local.detach())

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor averaged over the processes (detached); the tensors unchanged in one process."""
        return accel.all_reduce_mean(tensors)

    # ---- optimisation ----------------------------------------------------------------------
    def apply(
        self,
        optimizer: torch.optim.Optimizer,
        grads: list[torch.Tensor],
        mask: list[torch.Tensor] | None = None,
        reduced: bool = False,
    ) -> torch.Tensor:
        """Set the gradients, clip, mask, step; returns the pre-clip norm (a tensor: no device sync).

        ``mask`` multiplies each gradient after clipping (SalUn's order), so Adam never moves a
        masked-out weight: its moments stay zero. Under several processes the gradients are
        averaged across them first, unless ``reduced`` says the caller already did.
        """
        if not reduced:
            grads = self.all_reduce_mean(grads)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.to(p.dtype)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else 1e12)
        if mask is not None:
            for p, m in zip(self.params, mask, strict=True):
                p.grad.mul_(m)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        return norm

    def log(self, **values: float | torch.Tensor) -> None:
        # Tensors stay on the device until the history is read: reading them each step would
        # synchronise the GPU every iteration.
        for k, v in values.items():
            self.history[k].append(v.detach() if isinstance(v, torch.Tensor) else float(v))

    def history_floats(self) -> dict[str, list[float]]:
        out = {}
        for k, values in self.history.items():
            out[k] = [float(v) for v in values]
        self.history = defaultdict(list, {k: list(v) for k, v in out.items()})
        return out

    # ---- checkpoints ---------------------------------------------------------------------
    def resume(self, optimizers: dict[str, torch.optim.Optimizer], extra: dict[str, Any] | None = None) -> dict:
        if self.ckpt is None or (state := self.ckpt.latest()) is None:
            return {}
        self.model.unet.load_state_dict(state["unet"])
        for key, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng(self.gen, state["rng"])
        self.history = defaultdict(list, {k: list(v) for k, v in state["history"].items()})
        self.drawn = dict(state.get("drawn", self.drawn))
        self.start_step = self.resumed_from = state["step"]
        return state.get("extra", {})

    def maybe_checkpoint(
        self, done: int, optimizers: dict[str, torch.optim.Optimizer], extra: dict[str, Any] | None = None
    ) -> None:
        if self.ckpt is None or not self.is_main or self.cfg.checkpoint_every <= 0 or done % self.cfg.checkpoint_every:
            return
        if done >= self.cfg.steps:
            return
        self.ckpt.save(
            done,
            {
                "unet": self.model.unet.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_state(self.gen),
                "history": self.history_floats(),
                "drawn": dict(self.drawn),
                "step": done,
                "extra": extra or {},
            },
        )

    def bar(self) -> tqdm:
        return tqdm(
            total=self.cfg.steps,
            initial=self.start_step,
            desc=self.name,
            disable=not (self.progress and self.is_main),
            mininterval=1.0,
            dynamic_ncols=True,
        )

    def discard_checkpoints(self) -> None:
        if self.ckpt is not None and self.is_main:
            self.ckpt.clear()

    def finish(self, steps_done: int, stop: dict | None = None) -> UnlearningResult:
        if self.ema is not None:
            self.ema.copy_to(self.params)
        for p in self.model.unet.parameters():
            p.requires_grad_(True)
        self.model.unet.eval()
        self.model.to("cpu")
        self.discard_checkpoints()
        return UnlearningResult(
            model=self.model,
            algorithm=self.name,
            config=asdict(self.cfg),
            steps=steps_done,
            seconds=time.perf_counter() - self.t0,
            history=self.history_floats(),
            stop=stop,
            resumed_from=self.resumed_from,
            samples_drawn=dict(self.drawn),
        )
