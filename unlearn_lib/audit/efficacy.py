"""Class-level forgetting and retained-class utility, judged by the evaluator on generated samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..data.tensors import TensorSet
from ..models.diffusion import DiffusionModel
from ..models.sampling import class_grid_labels, sample
from .evaluator import Evaluator


@dataclass
class ClassSamples:
    """Samples conditioned on each class, with the evaluator's probabilities."""

    classes: list[int]
    per_class: int
    images: torch.Tensor  # [len(classes) * per_class, C, H, W] in [-1, 1]
    probs: torch.Tensor  # [len(classes) * per_class, K]

    def for_class(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.classes.index(c)
        sl = slice(i * self.per_class, (i + 1) * self.per_class)
        return self.images[sl], self.probs[sl]

    def images_of(self, classes: Iterable[int]) -> torch.Tensor:
        """The samples conditioned on any of `classes`, in grid order."""
        wanted = set(classes)
        mask = torch.tensor([c in wanted for c in self.classes]).repeat_interleave(self.per_class)
        return self.images[mask]


def generate_class_samples(
    model: DiffusionModel,
    evaluator: Evaluator,
    per_class: int,
    steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    classes: list[int] | None = None,
    progress: bool = False,
) -> ClassSamples:
    classes = list(range(model.meta.num_classes)) if classes is None else list(classes)
    labels = class_grid_labels(model, per_class, classes)
    images = sample(model, labels, steps=steps, guidance_scale=guidance_scale, seed=seed, progress=progress)
    return ClassSamples(classes=classes, per_class=per_class, images=images, probs=evaluator.predict_proba(images))


def nearest_class(evaluator: Evaluator, of: torch.Tensor, data: TensorSet, candidates: Sequence[int]) -> int:
    """The candidate class whose images in ``data`` lie nearest the images ``of``, by their means in
    the evaluator's features. Over-erasure shows first on the neighbour of what was erased (EraseBench's
    point): a mean over every retained class hides it."""
    present = [c for c in candidates if bool((data.labels == c).any())]
    if not present:
        raise ValueError(f"none of the classes {list(candidates)} has an image to compare with")
    centre = evaluator.features(of).mean(0)
    feats = evaluator.features(data.images)
    return min(present, key=lambda c: float((feats[data.labels == c].mean(0) - centre).norm()))


@dataclass
class ClassFigures:
    forget_labels: list[int]
    per_class: int
    # Per class: evaluator accuracy on samples conditioned on it.
    accuracy: dict[int, float] = field(default_factory=dict)
    # Per forgotten class: mean probability / rate of the forgotten class, prediction entropy.
    forgotten_probability: dict[int, float] = field(default_factory=dict)
    forgotten_rate: dict[int, float] = field(default_factory=dict)
    forgotten_entropy: dict[int, float] = field(default_factory=dict)

    @property
    def mean_forgotten_probability(self) -> float:
        v = list(self.forgotten_probability.values())
        return sum(v) / len(v) if v else math.nan

    @property
    def retained_accuracy(self) -> float:
        v = [a for c, a in self.accuracy.items() if c not in self.forget_labels]
        return sum(v) / len(v) if v else math.nan

    def to_dict(self) -> dict:
        return {
            "forget_labels": self.forget_labels,
            "samples_per_class": self.per_class,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "forgotten_probability": {str(k): v for k, v in self.forgotten_probability.items()},
            "forgotten_rate": {str(k): v for k, v in self.forgotten_rate.items()},
            "forgotten_entropy": {str(k): v for k, v in self.forgotten_entropy.items()},
            "mean_forgotten_probability": self.mean_forgotten_probability,
            "retained_accuracy": self.retained_accuracy,
        }


def class_figures(samples: ClassSamples, forget_labels: list[int]) -> ClassFigures:
    figs = ClassFigures(forget_labels=list(forget_labels), per_class=samples.per_class)
    for c in samples.classes:
        _, p = samples.for_class(c)
        pred = p.argmax(-1)
        figs.accuracy[c] = float((pred == c).float().mean())
        if c in forget_labels:
            f = forgotten_figures(p, c)
            figs.forgotten_probability[c] = f.probability
            figs.forgotten_rate[c] = f.rate
            figs.forgotten_entropy[c] = f.entropy
    return figs


@dataclass
class ForgottenFigures:
    """One forgotten class, on every sample drawn of it: the judge's mean probability of the class,
    its standard error, the share classified as it and the prediction entropy (nats)."""

    probability: float
    stderr: float
    rate: float
    entropy: float
    samples: int


def forgotten_figures(probs: torch.Tensor, label: int) -> ForgottenFigures:
    """``probs``: the judge's probabilities ``[N, K]`` on N samples conditioned on ``label``."""
    p = probs[:, label]
    n = len(p)
    return ForgottenFigures(
        probability=float(p.mean()),
        # One sample has no spread of its own: the largest a probability can have (never conclusive).
        stderr=float(p.std() / math.sqrt(n)) if n > 1 else 0.5,
        rate=float((probs.argmax(-1) == label).float().mean()),
        entropy=float(-(probs * probs.clamp(min=1e-12).log()).sum(-1).mean()),
        samples=n,
    )
