"""Purge: a new dataset version without the deleted records (files and manifest lines)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import DatasetError
from ..utils import atomic_output_dir
from .manifest import Dataset, Record, load_dataset, write_manifest
from .selection import ForgetTargets, target_matcher


def read_ledger(path: str | os.PathLike[str]) -> list[dict]:
    """The deletion ledger: one JSON object per line with ``targets`` and ``request_ids``."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"deletion ledger {p} does not exist")
    entries = []
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{p}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("targets"), dict):
            raise DatasetError(f"{p}:{lineno}: each ledger line needs a 'targets' object")
        entries.append(entry)
    return entries


def ledger_targets(entry: dict) -> ForgetTargets:
    t = entry["targets"]
    return ForgetTargets.build(
        record_ids=t.get("record_ids", []),
        subject_ids=t.get("subject_ids", []),
        labels=t.get("labels", []),
        caption_pattern=t.get("caption_pattern"),
    )


def deleted_record_ids(dataset: Dataset, entries: list[dict]) -> set[str]:
    """Every record (train or hold-out) that any ledger entry targets."""
    gone: set[str] = set()
    for entry in entries:
        targets = ledger_targets(entry)
        if not targets.is_empty():
            matches = target_matcher(targets)
            gone.update(r.record_id for r in dataset.records if matches(r))
    return gone


def _write_subset(
    src: Dataset, keep: list[Record], info: dict, out: str | os.PathLike[str], overwrite: bool
) -> None:
    """``keep``'s files and manifest as the folder ``out``, complete or not at all."""
    with atomic_output_dir(out, overwrite=overwrite) as stage:
        for rec in keep:
            dst = stage / rec.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src.root / rec.path, dst)
        write_manifest(stage, keep, info)


def purge_dataset(
    source: str | os.PathLike[str], ledger: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False
) -> tuple[Dataset, int]:
    """Write ``out``: ``source`` minus every record the ledger deletes. Returns (dataset, removed)."""
    src = load_dataset(source)
    gone = deleted_record_ids(src, read_ledger(ledger))
    keep = [r for r in src.records if r.record_id not in gone]
    # Records already erased from the source count too: the same ledger gives the same version.
    info = dict(src.info) | {"purged_records": len(gone) + int(src.info.get("erased_records", 0))}
    _write_subset(src, keep, info, out, overwrite)
    return load_dataset(out), len(gone)


def erase_from_source(source: str | os.PathLike[str], ledger: str | os.PathLike[str]) -> list[Record]:
    """Remove every record the ledger deletes from the source folder itself; returns them.

    The purge writes a served version without them; this removes the files they came from, so
    no later version can be built from them. The folder is rewritten beside itself and swapped
    in, so a crash leaves either the old or the new folder.
    """
    src = load_dataset(source)
    gone = deleted_record_ids(src, read_ledger(ledger))
    erased = [r for r in src.records if r.record_id in gone]
    if not erased:
        return []
    keep = [r for r in src.records if r.record_id not in gone]
    info = dict(src.info) | {"erased_records": int(src.info.get("erased_records", 0)) + len(erased)}
    _write_subset(src, keep, info, source, overwrite=True)
    return erased
