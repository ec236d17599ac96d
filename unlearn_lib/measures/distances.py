"""Image distances: nearest neighbours among training images and generated samples.

The extraction criterion (after Carlini et al. 2023): a record's distance to its nearest
generated sample, divided by alpha times the mean distance from the record to its k nearest
*other* training images. Below 1 the model produced something far closer to the record than
its natural neighbourhood explains. The audit's extraction test and the method's calibrated
stop both compute it from these functions, each with its own samples, seed, alpha and k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..data.tensors import TensorSet, to_uint8


def flat01(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float ``[N, C*H*W]`` in [0, 1]: the space all distances are taken in."""
    return images_u8.float().div(255.0).flatten(1)


def neighbourhood_distance(forget: TensorSet, train: TensorSet, k: int) -> torch.Tensor:
    """Mean L2 distance (pixels in [0, 1]) from each forget image to its k nearest other training images.

    Copies of the same image (same content hash) are not "other" images.
    """
    same = torch.tensor([[a == b for b in train.sha256] for a in forget.sha256], dtype=torch.bool)
    d = torch.cdist(flat01(forget.images), flat01(train.images))
    d = torch.where(same, torch.full_like(d, float("inf")), d)
    k = min(k, int((~same).sum(1).min()))
    return d.topk(k, largest=False).values.mean(1)


class NearestSamples(NamedTuple):
    """Each forget record's nearest generated sample, and its extraction ratio."""

    ratios: torch.Tensor  # [n_forget] float: nearest distance / (alpha * neighbourhood); < 1 is extracted
    index: torch.Tensor  # [n_forget] long: which of ``samples_u8`` is nearest
    samples_u8: torch.Tensor  # [M, C, H, W] uint8: the generated samples, quantised as saved images


def extraction_ratios(
    forget_u8: torch.Tensor, neighbourhood: torch.Tensor, generated: torch.Tensor, alpha: float
) -> NearestSamples:
    """``forget_u8``: uint8 records; ``neighbourhood``: from :func:`neighbourhood_distance`;
    ``generated``: samples in [-1, 1], quantised to uint8 first (what a user of the model would see).
    """
    gen_u8 = to_uint8(generated)
    d = torch.cdist(flat01(forget_u8), flat01(gen_u8))
    nearest_d, nearest_i = d.min(1)
    ratios = nearest_d / (alpha * neighbourhood.clamp(min=1e-12))
    return NearestSamples(ratios=ratios, index=nearest_i, samples_u8=gen_u8)
