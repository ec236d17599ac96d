"""The dataset contract: a folder with ``manifest.jsonl`` and the image files it names.

Every record carries ``schema_version``; loading validates the whole folder and refuses
with one message that names the record and the problem, so a bad dataset never reaches
training or unlearning. Images are read, hash-checked and decoded in one pass and kept
in memory (the data sets this tool targets are small images).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
MANIFEST_NAME = "manifest.jsonl"
INFO_NAME = "dataset.json"
SPLITS = ("train", "holdout")
_FIELDS = ("record_id", "subject_id", "label", "caption", "path", "sha256", "split", "schema_version")


@dataclass(frozen=True)
class Record:
    record_id: str
    subject_id: str | None
    label: int | None
    caption: str | None
    path: str
    sha256: str
    split: str
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


@dataclass
class Dataset:
    """A validated dataset folder. ``records`` keep manifest order; ``images`` align with them."""

    root: Path
    records: list[Record]
    info: dict
    images: np.ndarray  # uint8 [N, C, H, W]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def train(self) -> list[Record]:
        return [r for r in self.records if r.split == "train"]

    @property
    def holdout(self) -> list[Record]:
        return [r for r in self.records if r.split == "holdout"]

    @property
    def labels(self) -> list[int]:
        return sorted({r.label for r in self.records if r.label is not None})

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.info:
            return int(self.info["num_classes"])
        return (max(self.labels) + 1) if self.labels else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def digest(self) -> str:
        """Content digest over the manifest (which pins every file's hash)."""
        return manifest_digest(self.records)

    def load_images(self, records: Sequence[Record]) -> np.ndarray:
        """uint8 array ``[N, C, H, W]`` for ``records`` (decoded and hash-checked at load)."""
        index = {r.record_id: i for i, r in enumerate(self.records)}
        try:
            return self.images[[index[r.record_id] for r in records]]
        except KeyError as err:
            raise DatasetError(f"record {err.args[0]!r} is not in dataset {self.root}") from None


def manifest_digest(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r.record_id):
        h.update(rec.to_json().encode())
        h.update(b"\n")
    return h.hexdigest()


def write_manifest(root: Path, records: Sequence[Record], info: dict) -> None:
    """Write ``manifest.jsonl`` and ``dataset.json`` through temporary names."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w") as f:
        for rec in records:
            f.write(rec.to_json() + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    tmp_info = root / f".{INFO_NAME}.tmp"
    tmp_info.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp_info, root / INFO_NAME)


def load_dataset(root: str | os.PathLike[str], verify_hashes: bool = True) -> Dataset:
    """Load and validate a dataset folder; raise :class:`DatasetError` on the first problem."""
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not manifest.is_file():
        raise DatasetError(f"{root} is not a dataset: {MANIFEST_NAME} is missing")
    info: dict = {}
    info_path = root / INFO_NAME
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{info_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    records: list[Record] = []
    blobs: list[bytes] = []
    seen: dict[str, int] = {}
    with open(manifest) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(raw, dict):
                raise DatasetError(f"{where}: each line must be a JSON object")
            rec = _parse_record(raw, where)
            if rec.record_id in seen:
                raise DatasetError(
                    f"{where}: duplicate record_id {rec.record_id!r} (first on line {seen[rec.record_id]})"
                )
            seen[rec.record_id] = lineno
            path = _resolve_inside(root, rec.path, where)
            if not path.is_file():
                raise DatasetError(f"{where}: file {rec.path!r} of record {rec.record_id!r} is missing")
            try:
                data = path.read_bytes()
            except OSError as err:
                raise DatasetError(f"{where}: file {rec.path!r} cannot be read ({err.strerror})") from None
            if verify_hashes:
                digest = hashlib.sha256(data).hexdigest()
                if digest != rec.sha256:
                    raise DatasetError(
                        f"{where}: sha256 mismatch for {rec.path!r} of record {rec.record_id!r} "
                        f"(manifest {rec.sha256[:12]}…, file {digest[:12]}…)"
                    )
            records.append(rec)
            blobs.append(data)
    if not records:
        raise DatasetError(f"{manifest} holds no records")
    images = _decode_all(records, blobs, info.get("image_shape"))
    info.setdefault("image_shape", list(images.shape[1:]))
    return Dataset(root=root, records=records, info=info, images=images)


def _parse_record(raw: dict, where: str) -> Record:
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DatasetError(
            f"{where}: unknown schema_version {version!r} (this version of unlearn reads "
            f"{sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    missing = [k for k in _FIELDS if k not in raw]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(set(raw) - set(_FIELDS))
    if extra:
        raise DatasetError(f"{where}: unexpected field(s) {', '.join(extra)}")
    if not isinstance(raw["record_id"], str) or not raw["record_id"]:
        raise DatasetError(f"{where}: record_id must be a non-empty string")
    if raw["subject_id"] is not None and not isinstance(raw["subject_id"], str):
        raise DatasetError(f"{where}: subject_id must be a string or null")
    if raw["label"] is not None and (isinstance(raw["label"], bool) or not isinstance(raw["label"], int)):
        raise DatasetError(f"{where}: label must be an integer or null, got {raw['label']!r}")
    if raw["caption"] is not None and not isinstance(raw["caption"], str):
        raise DatasetError(f"{where}: caption must be a string or null")
    if raw["split"] not in SPLITS:
        raise DatasetError(f"{where}: split must be one of {SPLITS}, got {raw['split']!r}")
    if not isinstance(raw["sha256"], str) or len(raw["sha256"]) != 64:
        raise DatasetError(f"{where}: sha256 must be a 64-character hex digest")
    if not isinstance(raw["path"], str) or not raw["path"]:
        raise DatasetError(f"{where}: path must be a non-empty string")
    return Record(**{k: raw[k] for k in _FIELDS})


def _resolve_inside(root: Path, rel: str, where: str) -> Path:
    if os.path.isabs(rel):
        raise DatasetError(f"{where}: path {rel!r} is absolute; paths must be relative to the dataset folder")
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: path {rel!r} escapes the dataset folder")
    return resolved


def _decode_image(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(records: Sequence[Record], blobs: Sequence[bytes], shape: Sequence[int] | None) -> np.ndarray:
    out: np.ndarray | None = None
    channels = int(shape[0]) if shape else None
    for i, (rec, data) in enumerate(zip(records, blobs, strict=True)):
        try:
            if channels is None:
                with Image.open(io.BytesIO(data)) as im:
                    channels = 1 if im.mode in ("L", "1", "I", "I;16", "F") else 3
            arr = _decode_image(data, channels)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DatasetError(
                f"file {rec.path!r} of record {rec.record_id!r} is not a readable image ({err})"
            ) from None
        if out is None:
            expected = tuple(int(v) for v in shape) if shape else arr.shape
            out = np.empty((len(records), *expected), dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise DatasetError(
                f"file {rec.path!r} of record {rec.record_id!r} has shape {tuple(arr.shape)}, "
                f"dataset images are {tuple(out.shape[1:])}"
            )
        out[i] = arr
    assert out is not None
    return out
