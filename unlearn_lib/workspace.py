"""The workspace: a git repository with DVC where the served dataset is versioned.

Every deletion is a git revision: the request's targets are appended to the ledger
(``deletions.jsonl``), ``dvc repro purge`` writes the new ``data/digits`` without the
records, and both are committed. Any revision of the dataset can be materialized.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .data.manifest import Dataset, load_dataset
from .errors import UnlearnError

LEDGER = "deletions.jsonl"
_GIT_ID = ["-c", "user.name=unlearn", "-c", "user.email=unlearn@localhost"]
_IGNORED = [
    "/mlflow.db",
    "/mlartifacts/",
    "/runs/",
    "/requests/",
    "/checkpoints/",
    "/exports/",
    "/reports/",
    "/registry-cache/",
]


class WorkspaceError(UnlearnError):
    """The workspace repository is missing, not a git + DVC repository, or a revision is unknown."""


def project_file(name: str) -> Path:
    """``dvc.yaml`` and ``params.yaml`` at the project root are the workspace's templates."""
    path = Path(__file__).resolve().parents[1] / name
    if not path.is_file():
        raise WorkspaceError(f"template {name} not found beside the unlearn_lib package ({path})")
    return path


class Workspace:
    def __init__(self, root: str | os.PathLike[str], dataset_path: str = "data/digits") -> None:
        self.root = Path(root).resolve()
        self.dataset_path = dataset_path

    # ---- commands ------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Stages call `unlearn`; make it the one of this interpreter whether or not a venv is active.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("DVC_NO_ANALYTICS", "1")
        return env

    def _run(self, args: list[str], what: str, stream: bool = False) -> str:
        if stream:
            # Long stages (training the base model) show their progress on the console.
            proc = subprocess.run(args, cwd=self.root, env=self._env(), text=True)
            if proc.returncode != 0:
                raise WorkspaceError(f"{what} failed in {self.root} (exit status {proc.returncode}; output above)")
            return ""
        proc = subprocess.run(args, cwd=self.root, env=self._env(), capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
            raise WorkspaceError(f"{what} failed in {self.root}: {detail}")
        return proc.stdout

    def git(self, *args: str) -> str:
        return self._run(["git", *_GIT_ID, *args], f"git {args[0]}")

    def dvc(self, *args: str, stream: bool = False) -> str:
        return self._run([sys.executable, "-m", "dvc", *args], f"dvc {args[0]}", stream=stream)

    # ---- set-up --------------------------------------------------------------------------------
    def check(self) -> None:
        if not self.root.is_dir():
            raise WorkspaceError(f"workspace {self.root} does not exist (create it with `unlearn workspace init`)")
        if not (self.root / ".git").exists() or not (self.root / ".dvc").is_dir():
            raise WorkspaceError(f"workspace {self.root} is not a git + DVC repository")

    @classmethod
    def init(
        cls, root: str | os.PathLike[str], dataset_path: str = "data/digits", params: Path | None = None
    ) -> Workspace:
        ws = cls(root, dataset_path)
        ws.root.mkdir(parents=True, exist_ok=True)
        if (ws.root / ".git").exists():
            raise WorkspaceError(f"{ws.root} is already a git repository")
        ws.git("init", "-q", "-b", "main")
        ws.dvc("init", "-q")
        ws.dvc("config", "core.autostage", "true")
        shutil.copy(project_file("dvc.yaml"), ws.root / "dvc.yaml")
        shutil.copy(params or project_file("params.yaml"), ws.root / "params.yaml")
        (ws.root / LEDGER).touch()
        (ws.root / ".gitignore").write_text("\n".join(_IGNORED) + "\n")
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "workspace: dvc.yaml, params.yaml, empty deletion ledger")
        return ws

    def repro(self, *stages: str, stream: bool = False) -> str:
        """Run DVC stages and commit the result; returns the new revision."""
        self.dvc("repro", *stages, stream=stream)
        self.git("add", "-A")
        if self.git("status", "--porcelain").strip():
            self.git("commit", "-q", "-m", f"dvc repro {' '.join(stages) or '(all)'}")
        return self.head()

    # ---- revisions -----------------------------------------------------------------------------
    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def resolve(self, rev: str) -> str:
        """The commit a revision names; refuses revisions that do not exist."""
        self.check()
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise WorkspaceError(f"dataset revision {rev!r} does not exist in workspace {self.root}")
        return proc.stdout.strip()

    def _export(self, sha: str, dest: Path, rev: str) -> None:
        from dvc.api import DVCFileSystem

        if dest.exists():
            shutil.rmtree(dest)
        try:
            DVCFileSystem(str(self.root), rev=sha).get(self.dataset_path, str(dest), recursive=True)
        except FileNotFoundError:
            raise WorkspaceError(f"{self.dataset_path} does not exist at revision {rev}") from None

    def materialize(self, rev: str, dest: str | os.PathLike[str]) -> Dataset:
        """Copy ``dataset_path`` as of ``rev`` into ``dest`` (from the DVC cache) and load it."""
        dest = Path(dest)
        self._export(self.resolve(rev), dest, rev)
        return load_dataset(dest)

    def dataset(self, rev: str, cache_root: str | os.PathLike[str] | None = None) -> Dataset:
        """The dataset at ``rev``, materialized once per revision under ``cache_root``."""
        sha = self.resolve(rev)
        root = Path(cache_root) if cache_root else self.root / "runs" / "datasets"
        dest = root / sha
        if (dest / "manifest.jsonl").is_file():
            return load_dataset(dest)
        # Export and validate beside the cache entry, then rename: a reader never sees a partial
        # or invalid copy.
        tmp = root / f".{sha}.partial-{os.getpid()}"
        self._export(sha, tmp, rev)
        ds = load_dataset(tmp)
        if dest.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return load_dataset(dest)
        os.replace(tmp, dest)
        return dataclasses.replace(ds, root=dest)

    # ---- deletions -----------------------------------------------------------------------------
    def ledger(self) -> list[dict]:
        path = self.root / LEDGER
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def purge(self, targets: dict, request_ids: list[str], forget_set_sha256: str) -> str:
        """Append a deletion to the ledger, rebuild the served dataset without it, commit. Returns the revision.

        A deletion already in the ledger (same requests, same forget set) is not applied twice.
        """
        if any(
            e.get("forget_set_sha256") == forget_set_sha256 and e.get("request_ids") == request_ids
            for e in self.ledger()
        ):
            return self.head()
        entry = {
            "request_ids": request_ids,
            "targets": targets,
            "forget_set_sha256": forget_set_sha256,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(self.root / LEDGER, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        try:
            self.dvc("repro", "--single-item", "purge")
            self.git("add", "-A")
            self.git("commit", "-q", "-m", f"purge {', '.join(request_ids)}: {forget_set_sha256[:12]}")
        except WorkspaceError:
            # Leave the repository as it was: the deletion is not recorded unless it is committed.
            self.git("checkout", "--", LEDGER, "dvc.lock")
            self.dvc("checkout", "--force", self.dataset_path)
            raise
        return self.head()
