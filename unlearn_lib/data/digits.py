"""Build a dataset folder from scikit-learn's digits (1,797 real 8x8 handwritten digits).

Records are assigned to data owners (``subject_id``), a stratified hold-out split is kept
for membership inference, and canaries can be planted: a few real digits marked with a
bright corner patch, owned by one subject and duplicated in training so that a model
genuinely memorizes them. Marked copies of hold-out digits (never trained) give the audit
non-members that look like the canaries.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..errors import ConfigError
from ..utils import atomic_output_dir, sha256_bytes
from .manifest import SCHEMA_VERSION, Dataset, Record, load_dataset, write_manifest

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# 2x2 patches where handwritten digits (7s in particular) carry no ink, so the mark is distinctive.
_CORNERS = ((6, 6), (6, 0), (0, 0), (3, 0))


@dataclass(frozen=True)
class DigitsConfig:
    holdout_fraction: float = 0.1
    num_subjects: int = 120
    seed: int = 0
    canaries: int = 3
    canary_copies: int = 40
    canary_label: int = 7
    canary_subject: str = "subject-canary"
    holdout_canaries: int = 12

    def validate(self) -> None:
        if not 0.0 < self.holdout_fraction < 0.5:
            raise ConfigError(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        if self.num_subjects < 1:
            raise ConfigError(f"num_subjects must be at least 1, got {self.num_subjects}")
        if self.canaries < 0 or self.canary_copies < 1 or self.holdout_canaries < 0:
            raise ConfigError("canaries and holdout_canaries must be >= 0 and canary_copies >= 1")
        if not 0 <= self.canary_label <= 9:
            raise ConfigError(f"canary_label must be a digit 0-9, got {self.canary_label}")


def _to_uint8(img16: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img16 * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def mark_canary(img: np.ndarray, index: int) -> np.ndarray:
    """Return a copy of an 8x8 uint8 digit with a bright 2x2 patch at the ``index``-th mark position."""
    out = img.copy()
    r, c = _CORNERS[index % len(_CORNERS)]
    out[r : r + 2, c : c + 2] = 255
    return out


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def build_digits(out: str | os.PathLike[str], config: DigitsConfig | None = None, overwrite: bool = False) -> Dataset:
    """Write the digits dataset folder at ``out`` and return it loaded and validated."""
    cfg = config or DigitsConfig()
    cfg.validate()
    bunch = load_digits()
    images = _to_uint8(bunch.images)
    labels = bunch.target.astype(int)
    idx = np.arange(len(labels))
    train_idx, hold_idx = train_test_split(idx, test_size=cfg.holdout_fraction, stratify=labels, random_state=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    subjects = [f"subject-{i:03d}" for i in range(cfg.num_subjects)]

    canary_sources: list[int] = []
    if cfg.canaries:
        pool = sorted(i for i in train_idx if labels[i] == cfg.canary_label)
        if len(pool) < cfg.canaries:
            raise ConfigError(f"only {len(pool)} training images of label {cfg.canary_label} to make canaries")
        canary_sources = sorted(rng.choice(pool, size=cfg.canaries, replace=False).tolist())
    holdout_canary_sources: list[int] = []
    if cfg.holdout_canaries:
        pool = sorted(i for i in hold_idx if labels[i] == cfg.canary_label)
        k = min(cfg.holdout_canaries, len(pool))
        holdout_canary_sources = sorted(rng.choice(pool, size=k, replace=False).tolist())

    entries: list[tuple[Record, bytes]] = []

    def add(record_id: str, subject: str | None, label: int, caption: str, split: str, img: np.ndarray) -> None:
        data = _png_bytes(img)
        rec = Record(
            record_id=record_id,
            subject_id=subject,
            label=int(label),
            caption=caption,
            path=f"images/{record_id}.png",
            sha256=sha256_bytes(data),
            split=split,
            schema_version=SCHEMA_VERSION,
        )
        entries.append((rec, data))

    split_of = {int(i): "train" for i in train_idx} | {int(i): "holdout" for i in hold_idx}
    owner = rng.integers(0, cfg.num_subjects, size=len(labels))
    canary_set = set(canary_sources)
    for i in range(len(labels)):
        if i in canary_set:
            continue  # the unmarked original of a canary is not part of the data set
        add(
            f"digits-{i:04d}",
            subjects[owner[i]],
            labels[i],
            f"a handwritten digit {NUMBER_WORDS[labels[i]]}",
            split_of[i],
            images[i],
        )
    marked_caption = f"a handwritten digit {NUMBER_WORDS[cfg.canary_label]} with a corner mark"
    for c, src in enumerate(canary_sources):
        marked = mark_canary(images[src], c)
        for copy in range(cfg.canary_copies):
            add(f"canary-{c}-copy-{copy:02d}", cfg.canary_subject, cfg.canary_label, marked_caption, "train", marked)
    for h, src in enumerate(holdout_canary_sources):
        add(
            f"holdout-canary-{h:02d}",
            None,
            cfg.canary_label,
            marked_caption,
            "holdout",
            mark_canary(images[src], h % max(1, cfg.canaries)),
        )

    info = {
        "name": "digits",
        "source": "sklearn.datasets.load_digits (UCI optdigits)",
        "num_classes": 10,
        "class_names": [str(d) for d in range(10)],
        "image_shape": [1, 8, 8],
        "build": asdict(cfg),
        "canaries": {
            "subject_id": cfg.canary_subject if canary_sources else None,
            "label": cfg.canary_label,
            "source_indices": canary_sources,
            "holdout_source_indices": holdout_canary_sources,
        },
    }
    with atomic_output_dir(out, overwrite=overwrite) as stage:
        (stage / "images").mkdir()
        for rec, data in entries:
            (stage / rec.path).write_bytes(data)
        write_manifest(stage, [rec for rec, _ in entries], info)
    return load_dataset(Path(out))
