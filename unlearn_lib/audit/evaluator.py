"""The evaluator: a small CNN trained on the dataset's training split.

It judges class-level forgetting (which class does a generated sample show?) and gives
the feature space for utility metrics. It is saved with its hold-out accuracy so a
report can say how far its judgement can be trusted.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data.manifest import Dataset
from ..data.tensors import TensorSet, to_model_space
from ..errors import ModelError
from ..utils import atomic_output_dir, write_json

WEIGHTS = "evaluator.safetensors"
META = "evaluator.json"


class ConvClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width * 2, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width * 2, width * 4, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(width * 4 * 4, feature_dim),
            nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class EvaluatorMeta:
    channels: int
    num_classes: int
    width: int
    feature_dim: int
    holdout_accuracy: float
    train_records: int
    dataset_digest: str
    seed: int
    epochs: int
    seconds: float
    schema_version: int = 1


class Evaluator:
    def __init__(self, net: ConvClassifier, meta: EvaluatorMeta) -> None:
        self.net = net.eval()
        self.meta = meta

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def fingerprint(self) -> str:
        """Hash of the weights: two evaluators with the same fingerprint judge alike."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = to_model_space(images) if images.dtype == torch.uint8 else images.float()
        return x.to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        outs = [
            self.net(self._prep(images[i : i + batch_size])).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0, self.meta.num_classes)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(-1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        outs = [
            self.net.body(self._prep(images[i : i + batch_size])).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(outs)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(images).argmax(-1) == labels.cpu()).float().mean())

    def save(self, out: str | os.PathLike[str], overwrite: bool = False) -> Path:
        with atomic_output_dir(out, overwrite=overwrite) as stage:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, stage / WEIGHTS)
            write_json(stage / META, asdict(self.meta))
        return Path(out)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Evaluator:
        path = Path(path)
        if not (path / WEIGHTS).is_file() or not (path / META).is_file():
            raise ModelError(f"{path} is not an evaluator folder ({WEIGHTS} and {META} expected)")
        import json

        meta = EvaluatorMeta(**json.loads((path / META).read_text()))
        net = ConvClassifier(meta.channels, meta.num_classes, meta.width, meta.feature_dim)
        net.load_state_dict(load_file(path / WEIGHTS))
        return cls(net.to(device), meta)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random one-pixel shifts: generated samples are rarely centred like the scans."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_evaluator(
    dataset: Dataset,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Evaluator:
    """Train on distinct training images (duplicates count once); report hold-out accuracy."""
    labelled = [r for r in dataset.train if r.label is not None]
    train = TensorSet.from_records(dataset, labelled).distinct()
    hold = TensorSet.from_records(dataset, [r for r in dataset.holdout if r.label is not None])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c = dataset.image_shape[0]
    net = ConvClassifier(c, dataset.num_classes).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    x_all = to_model_space(train.images).to(device)
    y_all = train.labels.to(device)
    t0 = time.perf_counter()
    for _ in tqdm(range(epochs), desc="evaluator", disable=not progress, mininterval=1.0):
        net.train()
        perm = torch.randperm(len(train), generator=gen).to(device)
        for i in range(0, len(train), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(_augment(x_all[idx], gen)), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    meta = EvaluatorMeta(
        channels=c,
        num_classes=dataset.num_classes,
        width=32,
        feature_dim=128,
        holdout_accuracy=0.0,
        train_records=len(train),
        dataset_digest=dataset.digest(),
        seed=seed,
        epochs=epochs,
        seconds=round(time.perf_counter() - t0, 2),
    )
    ev = Evaluator(net, meta)
    if len(hold):
        ev.meta.holdout_accuracy = round(ev.accuracy(hold.images, hold.labels), 4)
    return ev
