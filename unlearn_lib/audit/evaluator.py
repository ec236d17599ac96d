"""The evaluator: small CNNs trained on the dataset's training split.

It judges class-level forgetting (which class does a generated sample show?) and gives
the feature space for utility metrics. It is saved with its hold-out accuracy so a
report can say how far its judgement can be trusted.

The judgement is the mean probability of ``members`` CNNs that differ only in their training
seed: a gate near the judge's own confusion must not turn on which seed trained it. Five judges
of one pipeline's dataset version scored the same erased model's "8" at 0.033-0.053 against the
gate's 0.05 (benchmarks/README.md, "The judge's floor and one judge's seed"). Features (FID, KID) are the first
member's, which is the single judge of earlier versions.

The members are trained with plain cross-entropy. Until 2026-12-02 they used label smoothing
0.05, which teaches a network to put 0.005 on every wrong class of a clean training image: the
judge read P(3) 0.015 on real hold-out 9s (0.001 without it, at the same hold-out accuracy), a
floor under every class's "probability of the forgotten class" that no erasure could go below
(benchmarks/README.md, "The judge without label smoothing").
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
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
MEMBER_WEIGHTS = "evaluator-members.safetensors"
META = "evaluator.json"
MEMBERS = 3
# Bumped when what train_evaluator makes changes, so caches keyed on it train a new judge.
RECIPE = f"members-{MEMBERS}-smoothing-0"


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
    members: int = 1  # folders from before the ensemble hold one
    member_holdout_accuracy: list[float] | None = None
    # The dataset revision it was fitted on, where its trainer knows one (the compliance pipeline's
    # judges: the erasure after a deletion retires those fitted on revisions that held the records).
    dataset_rev: str | None = None
    # The members' training label smoothing; None: a judge saved before it was recorded (0.05).
    label_smoothing: float | None = None


class Evaluator:
    """``net``: the first member (its features are the evaluator's); ``others``: the rest."""

    def __init__(self, net: ConvClassifier, meta: EvaluatorMeta, others: list[ConvClassifier] | None = None) -> None:
        self.net = net.eval()
        self.others = [m.eval() for m in others or []]
        self.meta = meta

    @property
    def members(self) -> list[ConvClassifier]:
        return [self.net, *self.others]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def fingerprint(self) -> str:
        """Hash of the weights: two evaluators with the same fingerprint judge alike."""
        import hashlib

        h = hashlib.sha256()
        for i, member in enumerate(self.members):
            for k, v in sorted(member.state_dict().items()):
                h.update(f"{i}.{k}".encode() if i else k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = to_model_space(images) if images.dtype == torch.uint8 else images.float()
        return x.to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Log of the members' mean probability (one member: its own log-softmax)."""
        outs = []
        for i in range(0, images.shape[0], batch_size):
            x = self._prep(images[i : i + batch_size])
            probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
            outs.append(probs.clamp_min(1e-12).log().cpu())
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
            if self.others:
                rest = {
                    f"{i}.{k}": v.detach().cpu().contiguous()
                    for i, m in enumerate(self.others, 1)
                    for k, v in m.state_dict().items()
                }
                save_file(rest, stage / MEMBER_WEIGHTS)
            write_json(stage / META, asdict(self.meta) | {"members": len(self.members)})
        return Path(out)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Evaluator:
        path = Path(path)
        if not (path / WEIGHTS).is_file() or not (path / META).is_file():
            raise ModelError(f"{path} is not an evaluator folder ({WEIGHTS} and {META} expected)")
        import json

        # Keys a later release adds are ignored, so a judge it saves still loads here.
        known = {f.name for f in fields(EvaluatorMeta)}
        meta = EvaluatorMeta(**{k: v for k, v in json.loads((path / META).read_text()).items() if k in known})

        def member(state: dict[str, torch.Tensor]) -> ConvClassifier:
            net = ConvClassifier(meta.channels, meta.num_classes, meta.width, meta.feature_dim)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise ModelError(f"{path}: an evaluator member's weights do not fit its network") from exc
            return net.to(device)

        others: list[ConvClassifier] = []
        if meta.members > 1:
            if not (path / MEMBER_WEIGHTS).is_file():
                raise ModelError(f"{path}: {meta.members} members in {META} but no {MEMBER_WEIGHTS}")
            rest = load_file(path / MEMBER_WEIGHTS)
            for i in range(1, meta.members):
                prefix = f"{i}."
                others.append(member({k[len(prefix) :]: v for k, v in rest.items() if k.startswith(prefix)}))
        return cls(member(load_file(path / WEIGHTS)), meta, others)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random one-pixel shifts: generated samples are rarely centred like the scans."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _train_member(
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    bar: tqdm,
    label_smoothing: float,
) -> ConvClassifier:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = ConvClassifier(x_all.shape[1], num_classes).to(x_all.device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = x_all.shape[0]
    steps_per_epoch = -(-n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen).to(x_all.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(_augment(x_all[idx], gen)), y_all[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.update()
    return net.eval()


def train_evaluator(
    dataset: Dataset,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    members: int = MEMBERS,
    label_smoothing: float = 0.0,
) -> Evaluator:
    """Train ``members`` CNNs (seeds ``seed``, ``seed + 1``, ...) on distinct training images
    (duplicates count once); report the ensemble's hold-out accuracy and each member's."""
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    labelled = [r for r in dataset.train if r.label is not None]
    train = TensorSet.from_records(dataset, labelled).distinct()
    hold = TensorSet.from_records(dataset, [r for r in dataset.holdout if r.label is not None])
    x_all = to_model_space(train.images).to(device)
    y_all = train.labels.to(device)
    t0 = time.perf_counter()
    with tqdm(total=members * epochs, desc="evaluator", disable=not progress, mininterval=1.0) as bar:
        nets = [
            _train_member(x_all, y_all, dataset.num_classes, epochs, batch_size, lr, seed + i, bar, label_smoothing)
            for i in range(members)
        ]
    meta = EvaluatorMeta(
        channels=dataset.image_shape[0],
        num_classes=dataset.num_classes,
        width=32,
        feature_dim=128,
        holdout_accuracy=0.0,
        train_records=len(train),
        dataset_digest=dataset.digest(),
        seed=seed,
        epochs=epochs,
        seconds=round(time.perf_counter() - t0, 2),
        members=members,
        label_smoothing=label_smoothing,
    )
    ev = Evaluator(nets[0], meta, nets[1:])
    if len(hold):
        ev.meta.holdout_accuracy = round(ev.accuracy(hold.images, hold.labels), 4)
        ev.meta.member_holdout_accuracy = [
            round(Evaluator(net, meta).accuracy(hold.images, hold.labels), 4) for net in nets
        ]
    return ev
