"""Selective Amnesia (Heng & Soh, NeurIPS 2023) for class-conditional DDPMs.

Forgetting class c_f is cast as continual learning towards a surrogate: the model learns to
generate a surrogate distribution under c_f while two terms keep the rest:

    L = L_dn(surrogate | c_f) + gamma * L_dn(replay | c_r) + lmbda * sum_i F_i (theta_i - theta*_i)^2

* the surrogate for c_f: uniform noise images in [-1, 1] (or images of another class);
* generative replay: samples of the retained classes drawn from the *base* model;
* EWC: F is the diagonal Fisher information of the base model's ELBO, estimated on the base
  model's own samples of every class: per sample, the squared gradient of the loss summed
  over all 1,000 timesteps, averaged over samples.

As in the official code (clear-nus/selective-amnesia, ddpm/, cited by line below): L_dn sums
the squared noise error over pixels and averages over the batch (functions/losses.py), both
batches share antithetic timesteps and use their labels without guidance dropout
(runners/diffusion.py lines 285-331), and the Fisher comes from ``save_fim`` (lines 94-168).
Two deliberate differences: the Fisher's samples are scaled to [-1, 1] like the training data
(``save_fim`` feeds ImageFolder tensors in [0, 1] unscaled), and no horizontal flips (digits
are not mirror-symmetric).

The published configuration is expensive by design: 4,500 + 5,000 samples of 1,000 DDIM steps,
a Fisher that back-propagates 1,000 timesteps per sample, then 20,000 steps. On the digits
preset that is hours of CPU; ``fisher_timesteps`` (evenly spaced, the sum rescaled to all T),
``*_per_class`` and ``sample_steps`` scale it down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tensors import to_model_space
from ..errors import ConfigError
from ..models.objectives import drop_labels, predict_eps
from ..models.sampling import sample
from .base import CommonConfig, Unlearner, UnlearningResult, UnlearningTask, register
from .loop import UnlearningLoop


@dataclass
class SAConfig(CommonConfig):
    steps: int = 20000  # configs/cifar10_forget.yml training.n_iters
    lr: float = 1e-4  # same file, optim.lr (Adam)
    # Same file, training.batch_size; the surrogate batch has the same size (line 295), so
    # forget_batch_size is not used: SA never reads the forget set, only its label.
    batch_size: int = 128
    ema_decay: float = 0.9999  # same file, model.ema_rate (model.ema True)
    ema_warmup: bool = False  # models/ema.py: constant decay
    cond_drop_prob: float | None = 0.0  # runners/diffusion.py lines 306-307: cond_drop_prob = 0.
    t_sampling: str = "antithetic"  # lines 301-305
    gamma: float = 1.0  # configs/cifar10_forget.yml training.gamma (replay weight)
    lmbda: float = 10.0  # same file, training.lmbda (EWC weight)
    surrogate: str = "uniform"  # uniform (line 296) | <class index>: that class's replay images, labelled c_f
    replay: str = "generated"  # generated: base-model samples (README step 2) | retain: the retain set itself
    replay_per_class: int = 500  # README step 2: sample.py --n_samples_per_class 500
    fisher_per_class: int = 500  # the same class samples, every class (README step 2-3)
    fisher_timesteps: int = 1000  # all T (lines 131-142); fewer: evenly spaced, sum rescaled by T / n
    sample_steps: int = 1000  # sample.py --timesteps 1000 (DDIM, "generalized")
    sample_eta: float = 1.0  # sample.py --eta 1.0
    sample_guidance: float = 3.0  # sample.py --cond_scale 2.0 as (1 + w) eps_c - w eps_u = our scale 3

    def validate(self) -> None:
        CommonConfig.validate(self)
        if self.gamma < 0 or self.lmbda < 0:
            raise ConfigError("gamma and lmbda must be >= 0")
        if self.surrogate != "uniform" and not self.surrogate.isdigit():
            raise ConfigError(f"surrogate must be uniform or a class index, got {self.surrogate!r}")
        if self.replay not in ("generated", "retain"):
            raise ConfigError(f"replay must be generated or retain, got {self.replay!r}")
        if self.replay_per_class < 1 or self.fisher_per_class < 1 or self.sample_steps < 1:
            raise ConfigError("replay_per_class, fisher_per_class and sample_steps must be >= 1")
        if self.fisher_timesteps < 1:
            raise ConfigError(f"fisher_timesteps must be >= 1, got {self.fisher_timesteps}")


def diagonal_fisher(
    loop: UnlearningLoop, images: torch.Tensor, labels: torch.Tensor, num_timesteps: int, chunk: int = 250
) -> list[torch.Tensor]:
    """Diagonal Fisher of the summed-over-timesteps denoising loss, one sample at a time.

    ``images`` are in model space. Each (sample, t) pair gets its own noise and the model's
    guidance dropout, as ``save_fim`` calls the training loss with its default dropout 0.1.
    """
    T = loop.fp.num_timesteps
    ts = torch.linspace(0, T - 1, min(num_timesteps, T), device=loop.device).round().long().unique()
    scale = T / ts.numel()
    drop = loop.task.base.meta.cond_drop_prob
    unet = loop.model.unet
    was_training = unet.training
    unet.eval()
    fisher = [torch.zeros_like(p) for p in loop.params]
    for i in range(images.shape[0]):
        summed = [torch.zeros_like(p) for p in loop.params]
        for start in range(0, ts.numel(), chunk):
            t = ts[start : start + chunk]
            x0 = images[i : i + 1].expand(t.numel(), *images.shape[1:])
            eps = torch.randn(x0.shape, generator=loop.gen, device=loop.device)
            y = drop_labels(labels[i : i + 1].expand(t.numel()), loop.model.null_class, drop, loop.gen)
            pred = predict_eps(unet, loop.fp.add_noise(x0, eps, t), t, y)
            loss = (pred - eps).pow(2).sum() * scale
            grads = torch.autograd.grad(loss, loop.params, allow_unused=True)
            for acc, g in zip(summed, grads, strict=True):
                if g is not None:
                    acc.add_(g)
        for f, g in zip(fisher, summed, strict=True):
            f.add_(g.pow(2))
    unet.train(was_training)
    return [f / images.shape[0] for f in fisher]


@register
class SelectiveAmnesia(Unlearner):
    name = "sa"
    summary = "Selective Amnesia: surrogate (uniform noise) for the class + generative replay + EWC (Fisher) penalty"
    config_cls = SAConfig

    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        cfg: SAConfig = self.config  # type: ignore[assignment]
        if not task.base.conditional or task.scope != "class" or not task.forget_labels:
            raise ConfigError("sa forgets classes: it needs a class erasure of a class-conditional model")
        retained = task.retained_labels
        if cfg.surrogate.isdigit() and int(cfg.surrogate) not in retained:
            raise ConfigError(f"surrogate={cfg.surrogate} must be a retained class")
        loop = UnlearningLoop(self.name, task, cfg, checkpoint_dir, progress)
        # Replay, Fisher and its anchor come from the base model and the seed, before any resume,
        # so a resumed run rebuilds the same ones.
        pool_x, pool_y, fisher = self._prepare(cfg, task, loop, retained)
        anchor = [p.detach().clone() for p in loop.params]
        forget_labels = torch.tensor(task.forget_labels, device=loop.device)
        optimizer = loop.adam(cfg.lr)
        loop.resume({"outer": optimizer})
        pixels = loop.forget_x[0].numel()
        bar = loop.bar()
        for step in range(loop.start_step, cfg.steps):
            n = cfg.batch_size
            pick = torch.randint(0, pool_x.shape[0], (n,), generator=loop.gen, device=loop.device)
            x_r, y_r = pool_x[pick], pool_y[pick]
            if cfg.replay == "retain":
                loop.drawn["retain"] += n
            y_f = forget_labels[torch.randint(0, len(forget_labels), (n,), generator=loop.gen, device=loop.device)]
            if cfg.surrogate == "uniform":
                x_f = torch.rand(x_r.shape, generator=loop.gen, device=loop.device) * 2 - 1
            else:
                of_class = (pool_y == int(cfg.surrogate)).nonzero().flatten()
                x_f = pool_x[of_class[torch.randint(0, len(of_class), (n,), generator=loop.gen, device=loop.device)]]
            t = loop.timesteps(n)
            e_r = torch.randn(x_r.shape, generator=loop.gen, device=loop.device)
            e_f = torch.randn(x_f.shape, generator=loop.gen, device=loop.device)
            # Published: no guidance dropout (cond_drop_prob 0 draws nothing); an override applies to both.
            y_f = drop_labels(y_f, loop.model.null_class, loop.cond_drop, loop.gen)
            y_r = drop_labels(y_r, loop.model.null_class, loop.cond_drop, loop.gen)
            loss_f = (loop.predict(loop.fp.add_noise(x_f, e_f, t), t, y_f) - e_f).pow(2).mean() * pixels
            loss_r = (loop.predict(loop.fp.add_noise(x_r, e_r, t), t, y_r) - e_r).pow(2).mean() * pixels
            ewc = sum((f * (p - a).pow(2)).sum() for f, p, a in zip(fisher, loop.params, anchor, strict=True))
            loss = loss_f + cfg.gamma * loss_r + cfg.lmbda * ewc
            grads = torch.autograd.grad(loss, loop.params, allow_unused=True)
            loop.apply(
                optimizer, [torch.zeros_like(p) if g is None else g for p, g in zip(loop.params, grads, strict=True)]
            )
            loop.log(loss_f=loss_f.detach(), loss_r=loss_r.detach(), ewc=ewc.detach())
            bar.update(1)
            loop.maybe_checkpoint(step + 1, {"outer": optimizer})
        bar.close()
        result = loop.finish(cfg.steps)
        result.config["fisher_mean"] = float(sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher))
        return result

    @staticmethod
    def _prepare(
        cfg: SAConfig, task: UnlearningTask, loop: UnlearningLoop, retained: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Replay pool (model space, labels) and the Fisher diagonal, both from the base model."""
        classes = list(range(task.base.meta.num_classes))
        counts = {
            c: max(cfg.fisher_per_class, cfg.replay_per_class if cfg.replay == "generated" and c in retained else 0)
            for c in classes
        }
        labels = torch.tensor([c for c in classes for _ in range(counts[c])], dtype=torch.long)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 104729)  # DDIM with eta > 0 draws from the global generator
            images = sample(
                loop.frozen,
                labels,
                steps=cfg.sample_steps,
                guidance_scale=cfg.sample_guidance,
                seed=cfg.seed + 104729,
                eta=cfg.sample_eta,
            ).to(loop.device)
        labels = labels.to(loop.device)
        first = torch.zeros_like(labels, dtype=torch.bool)
        offset = 0
        for c in classes:
            first[offset : offset + min(cfg.fisher_per_class, counts[c])] = True
            offset += counts[c]
        fisher = diagonal_fisher(loop, images[first], labels[first], cfg.fisher_timesteps)
        if cfg.replay == "retain":
            # Unlabelled records stay -1: drop_labels conditions them on the null class, as training did.
            return to_model_space(loop.retain_x), loop.retain_y, fisher
        keep = torch.zeros_like(first)
        offset = 0
        for c in classes:
            if c in retained:
                keep[offset : offset + cfg.replay_per_class] = True
            offset += counts[c]
        return images[keep], labels[keep], fisher
