"""Resumable loops: periodic single-file checkpoints, written atomically, tied to one run.

A checkpoint folder belongs to one configuration (its fingerprint). A restarted job
(a preempted pod, a killed process) that finds checkpoints of the same fingerprint
resumes from the newest; checkpoints of another configuration are refused rather than
silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .utils import sha256_file


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

_NAME = re.compile(r"^step-(\d{8})\.pt$")
_FINGERPRINT = "fingerprint.json"


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class CheckpointManager:
    def __init__(self, folder: str | os.PathLike[str], fingerprint_obj: Any, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint(fingerprint_obj)
        self.keep = max(1, keep)
        marker = self.folder / _FINGERPRINT
        if marker.is_file():
            stored = json.loads(marker.read_text()).get("fingerprint")
            if stored != self.fingerprint and self._steps():
                raise ConfigError(
                    f"checkpoints in {self.folder} belong to a different run (other configuration or data); "
                    "remove the folder or point the checkpoint directory elsewhere"
                )

    def _steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def latest(self) -> dict | None:
        """The newest checkpoint that verifies; a torn or tampered file is skipped, never loaded."""
        for step in reversed(self._steps()):
            path = self.folder / f"step-{step:08d}.pt"
            digest = path.with_name(path.name + ".sha256")
            if not digest.is_file() or digest.read_text().strip() != sha256_file(path):
                continue
            try:
                # weights_only: a checkpoint is data, never code to run.
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # an unreadable checkpoint is as good as none
                continue
        return None

    def save(self, step: int, state: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / _FINGERPRINT).write_text(json.dumps({"fingerprint": self.fingerprint}))
        final = self.folder / f"step-{step:08d}.pt"
        tmp = final.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        # The digest is written before the file takes its name: a checkpoint is never trusted unverified.
        write_text_atomic(final.with_name(final.name + ".sha256"), sha256_file(tmp))
        os.replace(tmp, final)
        for old in self._steps()[: -self.keep]:
            (self.folder / f"step-{old:08d}.pt").unlink(missing_ok=True)
            (self.folder / f"step-{old:08d}.pt.sha256").unlink(missing_ok=True)
        return final

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
