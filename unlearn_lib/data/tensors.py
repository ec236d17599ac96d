"""Records as tensors for training: uint8 images kept compact, converted per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .manifest import Dataset, Record


def to_model_space(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the diffusion model's data space."""
    return images_u8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class TensorSet:
    """Images (uint8 ``[N, C, H, W]``), labels (``-1`` where absent) and record IDs."""

    images: torch.Tensor
    labels: torch.Tensor
    record_ids: list[str]
    sha256: list[str]

    def __len__(self) -> int:
        return len(self.record_ids)

    @classmethod
    def from_records(cls, dataset: Dataset, records: Sequence[Record]) -> TensorSet:
        images = torch.from_numpy(dataset.load_images(records))
        labels = torch.tensor([r.label if r.label is not None else -1 for r in records], dtype=torch.long)
        return cls(
            images=images, labels=labels, record_ids=[r.record_id for r in records], sha256=[r.sha256 for r in records]
        )

    def distinct(self) -> TensorSet:
        """One entry per distinct image content (duplicated uploads count once)."""
        seen: dict[str, int] = {}
        for i, digest in enumerate(self.sha256):
            seen.setdefault(digest, i)
        keep = sorted(seen.values())
        return self.subset(keep)

    def subset(self, index: Sequence[int]) -> TensorSet:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return TensorSet(
            images=self.images[idx],
            labels=self.labels[idx],
            record_ids=[self.record_ids[i] for i in index],
            sha256=[self.sha256[i] for i in index],
        )

    def concat(self, other: TensorSet) -> TensorSet:
        return TensorSet(
            images=torch.cat([self.images, other.images.to(self.images.device)]),
            labels=torch.cat([self.labels, other.labels.to(self.labels.device)]),
            record_ids=self.record_ids + other.record_ids,
            sha256=self.sha256 + other.sha256,
        )

    def to(self, device: torch.device) -> TensorSet:
        return TensorSet(self.images.to(device), self.labels.to(device), self.record_ids, self.sha256)
