"""Utility: does the model still serve its users on what it was not asked to forget?

FID and KID compare generated samples with real retained data in a feature space; torchmetrics
computes both (``RealReference``). The Inception network of the textbook FID cannot be
downloaded here, so the extractor is pluggable: by default the evaluator's penultimate layer
(trained on this dataset), or any TorchScript feature network a user has on disk (for example
an Inception export).
"""

from __future__ import annotations

import os
import warnings
from typing import Protocol

import torch
import torch.nn.functional as F

from ..data.tensors import TensorSet, to_model_space
from ..errors import ModelError
from ..models.diffusion import DiffusionModel
from ..models.objectives import ForwardProcess, conditioning, per_sample_denoising_error
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


class _Features(torch.nn.Module):
    """The ``feature`` module handed to torchmetrics: features are extracted once by our own
    extractor before ``update`` (FID and KID would otherwise each run it on the same images), so
    here they only pass through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


class RealReference:
    """FID and KID of generated images against one set of real images (torchmetrics).

    Images go through ``extractor`` once per set; torchmetrics computes both distances on those
    features. The real images' statistics are kept across models (``reset_real_features=False``);
    each call measures one set of generated images. KID draws its subsets from torch's global
    generator, so it runs under a forked generator seeded with ``seed``: the same images give the
    same KID, and no caller's random stream moves.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        real_images: torch.Tensor,
        subsets: int = 10,
        subset_size: int = 200,
        seed: int = 0,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        if real_images.shape[0] < 2:
            raise ModelError(f"FID/KID need at least 2 real images, got {real_images.shape[0]}")
        real = extractor.features(real_images)
        module = _Features(int(real.shape[1]))
        self.extractor, self.seed, self.subset_size = extractor, seed, subset_size
        self.n_real = int(real.shape[0])
        self._fid = FrechetInceptionDistance(feature=module, reset_real_features=False)
        with warnings.catch_warnings():
            # "will save all extracted features in buffer": the audit's sets are a few thousand images.
            warnings.filterwarnings("ignore", message=".*save all extracted features", category=UserWarning)
            self._kid = KernelInceptionDistance(
                feature=module, subsets=subsets, subset_size=min(subset_size, self.n_real), reset_real_features=False
            )
        self._fid.update(real, real=True)
        self._kid.update(real, real=True)

    def measure(self, fake_images: torch.Tensor) -> dict[str, float]:
        """``{"fid", "kid", "kid_std"}`` of these generated images."""
        if fake_images.shape[0] < 2:
            raise ModelError(f"FID/KID need at least 2 generated images, got {fake_images.shape[0]}")
        fake = self.extractor.features(fake_images)
        self._fid.reset()
        self._kid.reset()
        self._fid.update(fake, real=False)
        self._kid.update(fake, real=False)
        # A small generated set (few retained classes) takes smaller subsets rather than failing.
        self._kid.subset_size = min(self.subset_size, self.n_real, int(fake_images.shape[0]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid, kid_std = self._kid.compute()
        return {"fid": float(self._fid.compute()), "kid": float(kid), "kid_std": float(kid_std)}


def denoising_loss(
    model: DiffusionModel, data: TensorSet, seed: int, timesteps: list[int] | None = None, noise_draws: int = 2
) -> float:
    """Mean denoising loss on held-out retained records, over timesteps spread across the schedule."""
    ts = timesteps or list(range(25, model.scheduler.config.num_train_timesteps, 100))
    device = model.device
    labels = conditioning(data.labels.to(device), model.null_class)
    fp = ForwardProcess(model.scheduler, device)
    err = per_sample_denoising_error(
        model.unet, fp, to_model_space(data.images).to(device), labels, ts, noise_draws, seed
    )
    return float(err.mean())
