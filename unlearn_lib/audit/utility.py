"""Utility: does the model still serve its users on what it was not asked to forget?

FID and KID compare generated samples with real retained data in a feature space. The
Inception network of the textbook FID cannot be downloaded here, so the extractor is
pluggable: by default the evaluator's penultimate layer (trained on this dataset), or any
TorchScript feature network a user has on disk (for example an Inception export).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..data.tensors import TensorSet, to_model_space
from ..errors import ModelError
from ..models.diffusion import DiffusionModel
from ..models.objectives import ForwardProcess, per_sample_denoising_error
from .evaluator import Evaluator


class FeatureExtractor(Protocol):
    name: str

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 or floats in [-1, 1], ``[N, C, H, W]`` -> ``[N, D]``."""
        ...


class EvaluatorFeatures:
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.name = "evaluator-penultimate"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluator.features(images)


class TorchScriptFeatures:
    """A TorchScript feature network on disk (e.g. Inception-v3 pool features).

    Images are resized to ``size`` and greyscale is repeated to three channels when the
    network expects them; inputs are passed in [-1, 1].
    """

    def __init__(self, path: str | os.PathLike[str], size: int = 299, channels: int = 3, device: str = "cpu") -> None:
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelError(f"cannot load TorchScript feature network {path}: {str(err).splitlines()[0]}") from None
        self.size, self.channels, self.device = size, channels, device
        self.name = f"torchscript:{os.path.basename(str(path))}"

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size]
            x = to_model_space(x) if x.dtype == torch.uint8 else x.float()
            if x.shape[1] == 1 and self.channels == 3:
                x = x.repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out.append(self.net(x.to(self.device)).float().flatten(1).cpu())
        return torch.cat(out)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    x, y = a.double().numpy(), b.double().numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # Tr sqrt(s1 s2) through the symmetric form sqrt(s1) s2 sqrt(s1), stable under round-off.
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def kernel_inception_distance(
    a: torch.Tensor, b: torch.Tensor, subsets: int = 10, subset_size: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (mean, std)."""
    x, y = a.double().numpy(), b.double().numpy()
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def denoising_loss(
    model: DiffusionModel, data: TensorSet, seed: int, timesteps: list[int] | None = None, noise_draws: int = 2
) -> float:
    """Mean denoising loss on held-out retained records, over timesteps spread across the schedule."""
    ts = timesteps or list(range(25, model.scheduler.config.num_train_timesteps, 100))
    device = model.device
    labels = data.labels.clamp(min=0).to(device) if model.conditional else None
    fp = ForwardProcess(model.scheduler, device)
    err = per_sample_denoising_error(
        model.unet, fp, to_model_space(data.images).to(device), labels, ts, noise_draws, seed
    )
    return float(err.mean())
