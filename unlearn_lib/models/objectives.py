"""The DDPM forward process and denoising losses shared by training, unlearning and audits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel


class ForwardProcess:
    """q(x_t | x_0) for a DDPM scheduler, with its coefficients cached on one device."""

    def __init__(self, scheduler: DDPMScheduler, device: torch.device) -> None:
        ab = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.num_timesteps = int(ab.shape[0])
        self.sqrt_ab = ab.sqrt()
        self.sqrt_1mab = (1.0 - ab).sqrt()

    def coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sqrt_ab[t].view(-1, 1, 1, 1), self.sqrt_1mab[t].view(-1, 1, 1, 1)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coeffs(t)
        return a * x0 + s * eps


def predict_eps(unet: UNet2DModel, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    out = unet(x_t, t, class_labels=labels).sample
    return out.float()


def conditioning(labels: torch.Tensor, null_class: int | None) -> torch.Tensor | None:
    """The labels a model is conditioned on: a record without a label (``-1``) under the null class,
    where training learned it (:func:`drop_labels`); None for an unconditional model."""
    if null_class is None:
        return None
    return torch.where(labels < 0, torch.full_like(labels, null_class), labels)


def drawing_classes(labels: torch.Tensor, null_class: int | None) -> list[int]:
    """The classes a conditional model is asked for to draw records with these labels again: their
    classes, and the null class where a record has none (:func:`conditioning`); ``[]`` for an
    unconditional model."""
    if null_class is None:
        return []
    present = labels.tolist()
    return sorted({int(v) for v in present if v >= 0}) + ([null_class] if any(v < 0 for v in present) else [])


def drop_labels(
    labels: torch.Tensor, null_class: int | None, p: float, generator: torch.Generator | None
) -> torch.Tensor | None:
    """Classifier-free guidance training: replace labels by the null class with probability ``p``.

    Records without a label (``-1``) always use the null class.
    """
    out = conditioning(labels, null_class)
    if out is None:
        return None
    if p > 0:
        mask = torch.rand(labels.shape, generator=generator, device=labels.device) < p
        out = torch.where(mask, torch.full_like(out, null_class), out)
    return out


@torch.no_grad()
def per_sample_denoising_error(
    unet: UNet2DModel,
    fp: ForwardProcess,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    timesteps: list[int],
    noise_draws: int,
    seed: int,
    batch_size: int = 512,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared denoising error per image, ``[N, len(timesteps)]``, over fixed noise draws.

    The noise is drawn from ``seed`` independently of the batch split, so two models are
    compared on exactly the same (x_t, t) pairs; this is the statistic behind the loss
    (t-error) membership attack and the calibrated stop. ``noise``
    (``[noise_draws, len(timesteps), N, ...]``) gives it instead: a slice of the images can then
    be measured with exactly the noise it gets among all of them.
    """
    n = x0.shape[0]
    device = x0.device
    if noise is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((noise_draws, len(timesteps), *x0.shape), generator=gen)
    elif tuple(noise.shape) != (noise_draws, len(timesteps), *x0.shape):
        raise ValueError(f"noise of shape {tuple(noise.shape)} for {noise_draws} draws, {len(timesteps)} timesteps")
    eps_all = noise.to(device)
    # Every (draw, timestep, image) triple in one flat batch: on small images a forward pass costs
    # about the same for 3 images as for 400, and the calibrated stop measures after every step.
    reps = noise_draws * len(timesteps)
    eps = eps_all.reshape(reps * n, *x0.shape[1:])
    t_all = torch.tensor(timesteps, device=device, dtype=torch.long).repeat_interleave(n).repeat(noise_draws)
    y_all = None if labels is None else labels.repeat(reps)
    total = reps * n
    err = torch.empty(total, device=device)
    for start in range(0, total, batch_size):
        rows = torch.arange(start, min(start + batch_size, total), device=device)
        xb, t, e = x0[rows % n], t_all[rows], eps[rows]
        pred = predict_eps(unet, fp.add_noise(xb, e, t), t, None if y_all is None else y_all[rows])
        err[rows] = (pred - e).pow(2).flatten(1).mean(1)
    return err.reshape(noise_draws, len(timesteps), n).mean(0).T.contiguous().cpu()
