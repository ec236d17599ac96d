"""The workspace: a git repository with DVC where the served dataset is versioned.

Every deletion is a git revision: the request's targets are appended to the ledger
(``deletions.jsonl``), ``dvc repro purge`` writes the new ``data/digits`` without the
records, and both are committed -- first on a run's own ref (``refs/unlearn/runs/<run>``),
and on ``main`` (the served revision) only when the run's audit passed. Any revision of the
dataset can be materialized.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data.manifest import Dataset, load_dataset
from .errors import UnlearnError
from .faults import failpoint

LEDGER = "deletions.jsonl"
_GIT_ID = ["-c", "user.name=unlearn", "-c", "user.email=unlearn@localhost"]
_IGNORED = [
    "/mlflow.db",
    "/state.db*",
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
    """``dvc.yaml`` and ``params.yaml`` at the project root are the workspace's templates.

    The root's are the source of truth; an installed package (the image) carries copies of them
    made at build time (``infra/Dockerfile``), found inside the package.
    """
    package = Path(__file__).resolve().parent
    for path in (package.parent / name, package / name):
        if path.is_file():
            return path
    raise WorkspaceError(f"template {name} found neither beside the unlearn_lib package nor in it ({package})")


class Workspace:
    def __init__(self, root: str | os.PathLike[str], dataset_path: str = "data/digits") -> None:
        self.root = Path(root).resolve()
        self.dataset_path = dataset_path

    @property
    def source_path(self) -> str:
        """The ingested data the served dataset is purged from (``prepare``'s output)."""
        return str(Path(self.dataset_path).parent / "source")

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

    def erasures(self) -> list[dict]:
        """The deletions the served revision has published: each erased its records for good."""
        return self.ledger(self.served())

    def check_not_erased(
        self, sha: str, rev: str, own: tuple[str, ...] = (), published: list[dict] | None = None
    ) -> None:
        """Refuse a revision that still holds records a published deletion erased, naming it.

        ``own``: the requests of the run asking. A run resumed mid-commit (its deletion published,
        its data not yet erased) still reads the revision it started from. ``published``: the
        served revision's ledger (``erasures()``), when the caller checks many revisions.
        """
        published = self.erasures() if published is None else published
        if not published:
            return
        absorbed = {rid for e in self.ledger(sha) for rid in e.get("request_ids", [])}
        for entry in published:
            ids = entry.get("request_ids", [])
            if ids and not absorbed.intersection(ids) and not set(ids) <= set(own):
                on = str(entry.get("at", ""))[:10] or "an unknown date"
                raise WorkspaceError(
                    f"dataset revision {rev} predates records erased by {', '.join(ids)} on {on}; "
                    "its data is gone: use a revision after the deletion (e.g. HEAD)"
                )

    def _export(self, sha: str, dest: Path, rev: str, own: tuple[str, ...] = ()) -> None:
        from dvc.api import DVCFileSystem

        self.check_not_erased(sha, rev, own)
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

    def dataset(
        self, rev: str, cache_root: str | os.PathLike[str] | None = None, own: tuple[str, ...] = ()
    ) -> Dataset:
        """The dataset at ``rev``, materialized once per revision under ``cache_root``."""
        sha = self.resolve(rev)
        root = Path(cache_root) if cache_root else self.root / "runs" / "datasets"
        dest = root / sha
        self.check_not_erased(sha, rev, own)
        if (dest / "manifest.jsonl").is_file():
            return load_dataset(dest)
        # Export and validate beside the cache entry, then rename: a reader never sees a partial
        # or invalid copy.
        tmp = root / f".{sha}.partial-{os.getpid()}"
        self._export(sha, tmp, rev, own)
        ds = load_dataset(tmp)
        if dest.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return load_dataset(dest)
        os.replace(tmp, dest)
        return dataclasses.replace(ds, root=dest)

    # ---- deletions: prepared on a run ref, published by compare-and-set --------------------------
    def ledger(self, rev: str = "HEAD") -> list[dict]:
        """The deletion ledger as of ``rev``: what every deletion published up to there removed."""
        sha = self.resolve(rev)
        proc = subprocess.run(
            ["git", "show", f"{sha}:{LEDGER}"], cwd=self.root, capture_output=True, text=True, env=self._env()
        )
        if proc.returncode != 0:
            return []
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def ref_sha(self, ref: str) -> str | None:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", ref], cwd=self.root, capture_output=True, text=True
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def served(self) -> str:
        """The served dataset revision: the tip of the workspace's main branch."""
        sha = self.ref_sha(SERVED_REF)
        if sha is None:
            raise WorkspaceError(f"workspace {self.root} has no {SERVED_REF}")
        return sha

    def _worktree(self, run_id: str) -> Path:
        return self.root / "runs" / "worktrees" / run_id

    def drop_worktree(self, run_id: str) -> None:
        path = self._worktree(run_id)
        if path.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=self.root, capture_output=True)
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=self.root, capture_output=True)

    def prepare_purge(
        self, base_rev: str, targets: dict, request_ids: list[str], forget_set_sha256: str, run_id: str
    ) -> str:
        """The purged dataset version as a commit on ``refs/unlearn/runs/<run_id>``; nothing served changes.

        The ledger line and ``dvc repro purge`` happen in a git worktree of their own (sharing the
        DVC cache), so the served branch, the working tree and other runs never see a half-made
        deletion; publishing it is :meth:`publish`'s job, after the audit. Idempotent per run.
        """
        base = self.resolve(base_rev)
        ref = run_ref(run_id)
        done = self.ref_sha(ref)
        if done is not None and self.git("rev-parse", f"{done}^").strip() == base:
            return done
        cache = self.dvc("cache", "dir").strip()
        wt = self._worktree(run_id)
        self.drop_worktree(run_id)
        wt.parent.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "add", "--detach", "-f", str(wt), base)
        try:
            tree = Workspace(wt, self.dataset_path)
            tree.dvc("cache", "dir", "--local", cache)
            source = self.source_path
            self._bring(tree, source)
            entry = {
                "request_ids": request_ids,
                "targets": targets,
                "forget_set_sha256": forget_set_sha256,
                "run_id": run_id,
                "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            with open(wt / LEDGER, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            failpoint("purge.worktree_ready")
            # The source loses the records as well (art. 17 asks for the data, not only the served
            # copy). `prepare` is frozen from then on: rebuilding it would bring them back.
            from .data.purge import erase_from_source

            if erase_from_source(wt / source, wt / LEDGER):
                tree.dvc("commit", "-f", "-q", "prepare")
            _freeze(wt / "dvc.yaml", "prepare")
            tree.dvc("repro", "--single-item", "purge")
            tree.git("add", "-A")
            tree.git("commit", "-q", "-m", f"purge {', '.join(request_ids)}: {forget_set_sha256[:12]} (run {run_id})")
            sha = tree.head()
            self._share(tree, sha, ref)
            self.git("update-ref", ref, sha)
        finally:
            self.drop_worktree(run_id)
        return sha

    def _bring(self, tree: Workspace, target: str) -> None:
        """Put ``target``'s data in the worktree (here: from the shared local DVC cache)."""
        tree.dvc("checkout", target)

    def _share(self, tree: Workspace, sha: str, ref: str) -> None:
        """Make a prepared revision visible to the run's other steps (here they share the repository)."""

    def run_ref_sha(self, run_id: str) -> str | None:
        """The revision a run prepared, if it is still there."""
        return self.ref_sha(run_ref(run_id))

    def drop_run_ref(self, run_id: str) -> None:
        """Forget a run's prepared (never published) dataset version."""
        if self.ref_sha(run_ref(run_id)) is not None:
            self.git("update-ref", "-d", run_ref(run_id))
        self.drop_worktree(run_id)

    # ---- after the commit: the erased records' bytes leave every store ------------------------------
    def _lock_outs(self, sha: str) -> dict[str, str]:
        """Output path -> DVC hash (``<md5>.dir`` for folders) as ``dvc.lock`` records it at ``sha``."""
        import yaml

        proc = subprocess.run(["git", "show", f"{sha}:dvc.lock"], cwd=self.root, capture_output=True, text=True)
        if proc.returncode != 0:
            return {}
        outs = {}
        for stage in (yaml.safe_load(proc.stdout) or {}).get("stages", {}).values():
            for out in stage.get("outs", []) or []:
                if out.get("md5"):
                    outs[out["path"]] = out["md5"]
        return outs

    def cache_dirs(self) -> list[Path]:
        """The DVC cache(s) this workspace writes to (a shared one included)."""
        return [Path(self.dvc("cache", "dir").strip())]

    def _object(self, md5: str) -> bytes | None:
        for cache in self.cache_dirs():
            path = cache / "files" / "md5" / md5[:2] / md5[2:]
            if path.is_file():
                return path.read_bytes()
        return None

    def _delete_remote_objects(self, md5s: set[str]) -> int:
        """Delete objects from the DVC remote (none here: a local workspace has only its cache)."""
        return 0

    def _out_files(self, sha: str) -> set[str]:
        found: set[str] = set()
        for path, md5 in self._lock_outs(sha).items():
            if path not in (self.source_path, self.dataset_path):
                continue
            if not md5.endswith(".dir"):
                found.add(md5)
                continue
            raw = self._object(md5)
            if raw is None:
                raise WorkspaceError(f"the listing of {path} at {sha[:12]} ({md5}) is in no DVC cache or remote")
            found.update(entry["md5"] for entry in json.loads(raw))
        return found

    def erase_blobs(self, before_rev: str, after_rev: str) -> dict[str, int]:
        """Delete, from the DVC cache(s) and remote, every data file ``after_rev`` dropped.

        Scoped like a `dvc gc` that keeps the served revision: an object goes only if the data
        folders at ``before_rev`` (the revision a deletion started from) list it and those at
        ``after_rev`` (its published purge) do not -- the erased images and the manifests that
        named them; anything a kept record shares stays. Idempotent.
        """
        before, after = self._out_files(self.resolve(before_rev)), self._out_files(self.resolve(after_rev))
        gone = before - after
        local = 0
        for cache in self.cache_dirs():
            for md5 in gone:
                path = cache / "files" / "md5" / md5[:2] / md5[2:]
                if path.is_file():
                    path.unlink()
                    local += 1
        remote = self._delete_remote_objects(gone)
        runs = sum(self._drop_run_cache(cache) for cache in self.cache_dirs())
        return {"blobs": len(gone), "blobs_local": local, "blobs_remote": remote, "run_cache_entries": runs}

    def _drop_run_cache(self, cache: Path) -> int:
        """Forget DVC's run-cache entries of the data stages.

        Committing the erased source records a run-cache entry for ``prepare`` under its unchanged
        command and parameters: a new workspace sharing the cache would get the *erased* source
        from it instead of running the stage, and the older entries name objects now deleted.
        The data stages rerun in seconds; the base model's entries stay.
        """
        import yaml

        root = cache / "runs"
        if not root.is_dir():
            return 0
        data = {self.source_path, self.dataset_path}
        gone = 0
        for entry in [p for p in root.rglob("*") if p.is_file()]:
            try:
                outs = {o.get("path") for o in (yaml.safe_load(entry.read_text()) or {}).get("outs", [])}
            except (OSError, yaml.YAMLError, AttributeError):
                continue
            if outs & data:
                entry.unlink()
                gone += 1
                # DVC takes a key's folder as an entry: an empty one breaks `dvc repro`.
                for folder in (entry.parent, entry.parent.parent):
                    if folder != root and not any(folder.iterdir()):
                        folder.rmdir()
        return gone

    def sweep_datasets(
        self, cache_root: str | os.PathLike[str] | None = None, published: list[dict] | None = None
    ) -> int:
        """Remove materialized copies of revisions that hold erased records; returns how many went.

        The served ledger is read once and a failure to read it propagates: a git remote that is
        down must not pass for "every copy holds erased records" (the erasure is retried).
        ``published``: that ledger, when the caller has read it.
        """
        root = Path(cache_root) if cache_root else self.root / "runs" / "datasets"
        if not root.is_dir():
            return 0
        published = self.erasures() if published is None else published
        gone = 0
        for entry in sorted(root.iterdir()):
            try:
                self.check_not_erased(entry.name, entry.name[:12], published=published)
                continue
            except WorkspaceError:
                pass  # erased records inside, or a revision this repository no longer knows
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            gone += not entry.exists() and not entry.is_symlink()
        return gone

    def publish(self, purged_rev: str, expected_rev: str) -> str:
        """Serve ``purged_rev``: main moves from ``expected_rev`` to it, or nothing changes.

        Compare-and-set under a lock on the workspace: if main no longer points at the revision
        the run started from (another deletion was published meanwhile), this refuses with one
        line and the run must be redone on the new revision. Publishing twice is a no-op.
        """
        purged, expected = self.resolve(purged_rev), self.resolve(expected_rev)
        with _file_lock(self.root / ".git" / "unlearn-publish.lock"):
            head = self.served()
            if head not in (expected, purged):
                raise WorkspaceError(
                    f"the served dataset moved from {expected[:12]} to {head[:12]} during the run; rerun the request"
                )
            if head == expected:
                self.git("update-ref", SERVED_REF, purged, expected)
            # The working tree follows the served revision (readers of data/ see the purged files).
            self.git("reset", "-q", "--hard", purged)
            # Emptied first: a checkout leaves files the new version no longer lists.
            for out in (self.source_path, self.dataset_path):
                shutil.rmtree(self.root / out, ignore_errors=True)
            self.dvc("checkout", "--force", self.source_path, self.dataset_path)
        return purged


SERVED_REF = "refs/heads/main"
_REMOTE_MAIN = "refs/remotes/origin/main"
DVC_REMOTE_NAME = "unlearn"


class RemoteWorkspace(Workspace):
    """The workspace repository reached over the network: a clone of ``git_remote`` with the DVC
    remote on S3, for steps that share no folder with anyone (containers, pods).

    The clone lives in a scratch folder and is only a cache: every read of the served revision
    asks the remote, a prepared purge is pushed to the run's ref on the remote (its new DVC
    objects first), and publishing is a compare-and-set push of ``main``
    (``--force-with-lease=main:<expected>``: receive-pack updates the ref only if it still
    holds the expected revision, so two publishers cannot both win).
    """

    def __init__(
        self,
        remote: str,
        root: str | os.PathLike[str],
        dataset_path: str = "data/digits",
        dvc_remote: str | None = None,
        s3_endpoint_url: str | None = None,
    ) -> None:
        super().__init__(root, dataset_path)
        self.remote, self.dvc_remote, self.s3_endpoint_url = remote, dvc_remote, s3_endpoint_url
        self._fetched = False

    @classmethod
    def open(cls, settings: Any) -> RemoteWorkspace:
        import hashlib
        import tempfile

        if not settings.git_remote:
            raise WorkspaceError("no git_remote is configured for a stateless step")
        if not settings.dvc_remote:
            raise WorkspaceError("no DVC remote: set dvc_remote_url (or s3_bucket) with git_remote")
        scratch = Path(settings.scratch_dir or Path(tempfile.gettempdir()) / "unlearn-scratch")
        key = hashlib.sha256(settings.git_remote.encode()).hexdigest()[:12]
        ws = cls(
            settings.git_remote,
            scratch / "workspaces" / key,
            settings.dataset_path,
            settings.dvc_remote,
            settings.s3_endpoint_url,
        )
        ws.ensure_clone()
        return ws

    def _remote_error(self, what: str, err: WorkspaceError) -> WorkspaceError:
        from .redact import redact_url

        return WorkspaceError(f"{what} on the workspace remote {redact_url(self.remote)} failed: {err}")

    def ensure_clone(self) -> None:
        if not (self.root / ".git").exists():
            partial = self.root.with_name(f".{self.root.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                ["git", "clone", "-q", "--branch", "main", self.remote, str(partial)],
                capture_output=True,
                text=True,
                env=self._env(),
            )
            if proc.returncode != 0:
                from .redact import redact_text

                shutil.rmtree(partial, ignore_errors=True)
                lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
                raise WorkspaceError(f"cannot clone the workspace repository: {redact_text(lines[-1])}")
            shutil.rmtree(self.root, ignore_errors=True)
            os.replace(partial, self.root)
        self._configure_dvc(self)

    def _configure_dvc(self, tree: Workspace) -> None:
        # config.local, never committed: where the data is and how to reach it belong to the
        # deployment (the endpoint differs between a laptop and a cluster), not to the dataset.
        # A workspace made with a shared cache commits that folder's absolute path; it is the
        # creator's machine, not this one's.
        tree.dvc("cache", "dir", "--local", str(self.root / ".dvc" / "cache"))
        tree.dvc("remote", "add", "--local", "-f", "-d", DVC_REMOTE_NAME, self.dvc_remote or "")
        if self.s3_endpoint_url:
            tree.dvc("remote", "modify", "--local", DVC_REMOTE_NAME, "endpointurl", self.s3_endpoint_url)

    def fetch(self) -> None:
        try:
            self.git("fetch", "-q", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*",
                     "+refs/unlearn/*:refs/unlearn/*")
        except WorkspaceError as err:
            raise self._remote_error("git fetch", err) from None
        self._fetched = True

    def resolve(self, rev: str) -> str:
        # HEAD of a clone is whatever was checked out when it was made; the remote's main is served.
        name = _REMOTE_MAIN if rev in ("HEAD", "main", SERVED_REF) else rev
        if not self._fetched or name == _REMOTE_MAIN:
            self.fetch()
        try:
            return super().resolve(name)
        except WorkspaceError:
            self.fetch()  # another step pushed it since this clone last looked
            return super().resolve(name)

    def head(self) -> str:
        return self.resolve("HEAD")

    def served(self) -> str:
        try:
            out = self.git("ls-remote", "origin", SERVED_REF)
        except WorkspaceError as err:
            raise self._remote_error("git ls-remote", err) from None
        if not out.strip():
            raise WorkspaceError(f"the workspace remote has no {SERVED_REF}")
        return out.split()[0]

    def _bring(self, tree: Workspace, target: str) -> None:
        self._configure_dvc(tree)
        tree.dvc("pull", "-q", target)

    def _share(self, tree: Workspace, sha: str, ref: str) -> None:
        tree.dvc("push", "-q", "prepare", "purge")
        try:
            tree.git("push", "-q", "-f", "origin", f"{sha}:{ref}")
        except WorkspaceError as err:
            raise self._remote_error("git push", err) from None

    def run_ref_sha(self, run_id: str) -> str | None:
        self.fetch()
        return super().run_ref_sha(run_id)

    def drop_run_ref(self, run_id: str) -> None:
        ref = run_ref(run_id)
        if self.git("ls-remote", "origin", ref).strip():
            try:
                self.git("push", "-q", "origin", f":{ref}")
            except WorkspaceError as err:
                raise self._remote_error("git push --delete", err) from None
        super().drop_run_ref(run_id)

    def _remote_store(self) -> Any:
        from urllib.parse import urlparse

        from .storage.store import S3Store

        url = urlparse(self.dvc_remote or "")
        if url.scheme != "s3":
            return None
        return S3Store(url.netloc, url.path, self.s3_endpoint_url)

    def cache_dirs(self) -> list[Path]:
        return [self.root / ".dvc" / "cache"]

    def _object(self, md5: str) -> bytes | None:
        found = super()._object(md5)
        if found is None and (store := self._remote_store()) is not None:
            found = store.read(f"files/md5/{md5[:2]}/{md5[2:]}")
        return found

    def _delete_remote_objects(self, md5s: set[str]) -> int:
        store = self._remote_store()
        if store is None:
            return 0
        return store.delete_objects([f"files/md5/{m[:2]}/{m[2:]}" for m in sorted(md5s)])

    def publish(self, purged_rev: str, expected_rev: str) -> str:
        purged, expected = self.resolve(purged_rev), self.resolve(expected_rev)
        head = self.served()
        if head == purged:
            return purged
        if head != expected:
            raise WorkspaceError(
                f"the served dataset moved from {expected[:12]} to {head[:12]} during the run; rerun the request"
            )
        try:
            self.git("push", "-q", f"--force-with-lease={SERVED_REF}:{expected}", "origin", f"{purged}:{SERVED_REF}")
        except WorkspaceError:
            head = self.served()
            if head == purged:
                return purged
            raise WorkspaceError(
                f"the served dataset moved from {expected[:12]} to {head[:12]} during the run; rerun the request"
            ) from None
        self.fetch()
        return purged


def open_workspace(settings: Any) -> Workspace:
    """The workspace the settings name: the local folder, or the remote repository for stateless steps."""
    if getattr(settings, "git_remote", None):
        return RemoteWorkspace.open(settings)
    return Workspace(settings.workspace, settings.dataset_path)


_PARTIAL = re.compile(r"\.partial-(\d+)(?=-|$)|\.partial$")


def sweep_partials(root: Path, everything_under: Path | None = None) -> list[Path]:
    """Remove half-written outputs (``*.partial-<pid>``) whose writer died; returns what went.

    Under ``everything_under`` (a dead run's own folder) every partial goes, whoever wrote it.
    """
    from .state.store import pid_alive

    gone = []
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in [*dirnames, *filenames]:
            m = _PARTIAL.search(name)
            if not m:
                continue
            path = Path(dirpath) / name
            owned = everything_under is not None and everything_under in path.parents
            if owned or (m.group(1) and not pid_alive(int(m.group(1)))):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    dirnames.remove(name) if name in dirnames else None
                else:
                    path.unlink(missing_ok=True)
                gone.append(path)
    return gone


def _freeze(dvc_yaml: Path, stage: str) -> None:
    """Mark a stage frozen (`dvc freeze` cannot rewrite a stage that uses ${params})."""
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    header = f"  {stage}:\n"
    if header not in lines:
        raise WorkspaceError(f"{dvc_yaml} has no stage {stage!r} to freeze")
    at = lines.index(header) + 1
    if at < len(lines) and lines[at].strip() == "frozen: true":
        return
    lines.insert(at, "    frozen: true\n")
    dvc_yaml.write_text("".join(lines))


def run_ref(run_id: str) -> str:
    return f"refs/unlearn/runs/{run_id}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (released if the holder dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
