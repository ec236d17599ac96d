"""Sampling with DDIM and classifier-free guidance, batched, cond and uncond in one forward."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .diffusion import DiffusionModel


@torch.no_grad()
def sample(
    model: DiffusionModel,
    labels: Sequence[int] | torch.Tensor | None = None,
    num_samples: int | None = None,
    steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    progress: bool = False,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate images in [-1, 1] as a CPU float tensor ``[N, C, H, W]``.

    For a conditional model ``labels`` picks each sample's class (the null class gives
    unconditional samples); ``guidance_scale`` defaults to the model's own. The initial
    noise is drawn once from ``seed`` for all N, so results do not depend on ``batch_size``;
    ``noise`` (``[N, C, H, W]``) gives it instead, so that a slice of a larger draw can be
    sampled on its own.
    """
    device = model.device
    if model.conditional:
        if labels is None:
            raise ConfigError("a class-conditional model needs labels to sample")
        y_all = torch.as_tensor(labels, dtype=torch.long).flatten()
        bad = y_all[(y_all < 0) | (y_all > model.meta.num_classes)]
        if bad.numel():
            raise ConfigError(
                f"label {int(bad[0])} is out of range: the model has classes 0-{model.meta.num_classes - 1} "
                f"and the null class {model.null_class}"
            )
        n = y_all.numel()
    else:
        if labels is not None:
            raise ConfigError("an unconditional model takes no labels")
        if not num_samples or num_samples < 1:
            raise ConfigError("num_samples must be >= 1")
        n = num_samples
        y_all = None
    if steps < 1:
        raise ConfigError(f"sampling steps must be >= 1, got {steps}")
    w = model.meta.guidance_scale if guidance_scale is None else float(guidance_scale)
    c, h, wd = model.meta.image_shape
    if noise is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((n, c, h, wd), generator=gen)
    elif tuple(noise.shape) != (n, c, h, wd):
        raise ConfigError(f"initial noise of shape {tuple(noise.shape)} for {n} samples of {(c, h, wd)}")
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    model.unet.eval()
    use_bf16 = device.type == "cuda"
    out = torch.empty((n, c, h, wd))
    batches = range(0, n, batch_size)
    bar = tqdm(total=len(batches) * steps, desc="sample", disable=not progress, mininterval=1.0)
    for start in batches:
        x = noise[start : start + batch_size].to(device)
        y = None if y_all is None else y_all[start : start + batch_size].to(device)
        for t in sched.timesteps:
            eps = _guided_eps(model, x, int(t), y, w, use_bf16)
            x = sched.step(eps, t, x, eta=eta).prev_sample
            bar.update(1)
        out[start : start + x.shape[0]] = x.float().clamp(-1, 1).cpu()
    bar.close()
    return out


def _guided_eps(
    model: DiffusionModel, x: torch.Tensor, t: int, y: torch.Tensor | None, w: float, bf16: bool
) -> torch.Tensor:
    """The noise prediction sampling follows at ``x``: classifier-free guided at scale ``w`` for a label."""
    unet, device = model.unet, x.device
    tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        # Samples asking for the null class are unconditional already: no second branch.
        if y is not None and w != 1.0:
            null = torch.full_like(y, model.null_class)
            eps = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([y, null])).sample
            e_c, e_u = eps.float().chunk(2)
            is_null = (y == model.null_class).view(-1, 1, 1, 1)
            return torch.where(is_null, e_c, e_u + w * (e_c - e_u))
        return unet(x, tt, class_labels=y).sample.float()


@torch.no_grad()
def trajectory_states(
    model: DiffusionModel, labels: torch.Tensor, steps: int = 25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The x_t that guided DDIM sampling under ``labels`` passes through, as :func:`sample` samples
    (the model's guidance scale, eta 0): ``[steps, N, C, H, W]`` on the model's device, each state
    before the step at its timestep, and those timesteps ``[steps]``. The model's training mode is
    left as it was."""
    if not model.conditional:
        raise ConfigError("trajectory states are drawn under labels: the model must be class-conditional")
    from diffusers import DDIMScheduler

    device = model.device
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    y = torch.as_tensor(labels, dtype=torch.long).flatten().to(device)
    c, h, wd = model.meta.image_shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((y.numel(), c, h, wd), generator=gen).to(device)
    training = model.unet.training
    model.unet.eval()
    states = []
    try:
        for t in sched.timesteps:
            states.append(x)
            eps = _guided_eps(model, x, int(t), y, float(model.meta.guidance_scale), device.type == "cuda")
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    finally:
        model.unet.train(training)
    return torch.stack(states).float(), sched.timesteps.to(device=device, dtype=torch.long)


def class_grid_labels(model: DiffusionModel, per_class: int, classes: Sequence[int] | None = None) -> torch.Tensor:
    """Labels for a grid with one row per class."""
    classes = list(range(model.meta.num_classes)) if classes is None else list(classes)
    return torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.long)
