"""What a compliance run keeps between attempts: the finished model, the audit, unlearning checkpoints.

A killed or preempted step resumes from here. On one machine it is a folder of the workspace
(``checkpoints/<run>/``); for stateless steps (containers, pods) it is the object store under
``checkpoints/<run>/``, each item complete or absent (see :mod:`unlearn_lib.storage.store`),
so a retried pod on another node finds what the previous one finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..settings import Settings

_STEP = re.compile(r"^step-(\d{8})\.pt$")
# Unlearning checkpoints kept in the store: the newest, and one before it in case the newest is torn.
_KEEP_REMOTE = 2


def scratch_root(settings: Settings) -> Path:
    """Where a stateless step keeps clones and caches (nothing there outlives the pod)."""
    return Path(settings.scratch_dir or Path(tempfile.gettempdir()) / "unlearn-scratch")


def cache_root(settings: Settings) -> Path:
    """Downloaded model versions and trained evaluators: the workspace's, or the step's scratch."""
    if settings.stateless:
        return scratch_root(settings) / "cache"
    return settings.workspace_path / "registry-cache"


class RunFiles:
    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings, self.run_id = settings, run_id
        self.folder = settings.workspace_path / "checkpoints" / run_id
        self.key = f"checkpoints/{run_id}"

    @property
    def remote(self) -> bool:
        return self.settings.stateless

    def _store(self) -> Any:  # an ArtifactStore; imported lazily (boto3)
        from ..storage import store_from_settings

        return store_from_settings(self.settings)

    def keep(self, name: str, src: str | os.PathLike[str]) -> None:
        """Keep a finished output (a folder), complete or absent."""
        if self.remote:
            self._store().upload_dir(src, f"{self.key}/{name}")
            return
        dest = self.folder / name
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)

    def restore(self, name: str, dest: str | os.PathLike[str]) -> bool:
        """Put a kept output into ``dest``; False when there is none."""
        shutil.rmtree(dest, ignore_errors=True)
        if self.remote:
            store = self._store()
            if not store.exists(f"{self.key}/{name}"):
                return False
            store.download_dir(f"{self.key}/{name}", dest)
            return True
        kept = self.folder / name
        if not kept.is_dir():
            return False
        shutil.copytree(kept, dest)
        return True

    def drop(self) -> None:
        """Forget everything the run kept (it succeeded, or was rolled back)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.remote:
            self._store().delete(self.key)
            shutil.rmtree(scratch_root(self.settings) / "runs" / self.run_id, ignore_errors=True)

    @contextlib.contextmanager
    def checkpoints(self, interval: float = 5.0) -> Iterator[Path]:
        """The folder the unlearning loop checkpoints into; for stateless steps it is synced to the store.

        The store gets each new verified checkpoint under its own key (``unlearn/step-N``), so an
        upload cut short leaves the previous one usable; a restarted pod starts from the newest.
        """
        if not self.remote:
            yield self.folder / "unlearn-checkpoints"
            return
        local = scratch_root(self.settings) / "runs" / self.run_id / "unlearn-checkpoints"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        store = self._store()
        base = f"{self.key}/unlearn"
        steps = sorted(store.children(base))
        if steps:
            store.download_dir(f"{base}/{steps[-1]}", local)
        sync = _Sync(local, store, base, set(steps), interval)
        sync.start()
        try:
            yield local
        finally:
            sync.stop()


class _Sync(threading.Thread):
    def __init__(self, local: Path, store: object, base: str, uploaded: set[str], interval: float) -> None:
        super().__init__(name="checkpoint-sync", daemon=True)
        self.local, self.store, self.base, self.uploaded = local, store, base, uploaded
        self.interval = interval
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.push()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
        self.push()

    def push(self) -> None:
        from ..checkpoint import _FINGERPRINT
        from ..utils import sha256_file

        try:
            names = sorted(p.name for p in self.local.iterdir() if _STEP.match(p.name))
            if not names:
                return
            newest = names[-1]
            step = newest.removesuffix(".pt")
            if step in self.uploaded:
                return
            path = self.local / newest
            digest = path.with_name(newest + ".sha256")
            if not digest.is_file() or digest.read_text().strip() != sha256_file(path):
                return  # being written; the next round takes it
            with tempfile.TemporaryDirectory() as stage:
                for f in (path, digest, self.local / _FINGERPRINT):
                    if f.is_file():
                        os.link(f, Path(stage) / f.name) if _same_fs(f, stage) else shutil.copy2(f, stage)
                self.store.upload_dir(stage, f"{self.base}/{step}")  # type: ignore[attr-defined]
            self.uploaded.add(step)
            for old in sorted(self.uploaded)[:-_KEEP_REMOTE]:
                self.store.delete(f"{self.base}/{old}")  # type: ignore[attr-defined]
                self.uploaded.discard(old)
        except Exception as err:  # a failed sync costs a resume point, never the run
            self.error = err


def _same_fs(path: Path, folder: str) -> bool:
    return path.stat().st_dev == Path(folder).stat().st_dev
