"""Run the compliance pipeline: checks first, then the DAG (locally with kfp.local, or on KFP).

Preflight refuses bad input before anything is created: a malformed request, an unknown
model or one without a production version, a dataset revision that does not exist,
targets that match nothing, an unreachable MLflow or S3. Nothing is registered then.
A request already fulfilled is reported and not run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from unlearn_lib.data.selection import select
from unlearn_lib.errors import UnlearnError
from unlearn_lib.requests import DeletionBatch
from unlearn_lib.settings import Settings
from unlearn_lib.workspace import Workspace


@dataclass
class RunOutcome:
    status: str  # succeeded | failed | already-done
    lineage_run_id: str | None
    version: str | None = None
    alias: str | None = None
    verdict: str | None = None
    failed_step: str | None = None
    error: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def for_batch(settings: Settings, batch: DeletionBatch) -> Settings:
    """The request names the model; everything else comes from the settings."""
    return dataclasses.replace(settings, model_name=batch.model)


def already_fulfilled(settings: Settings, batch: DeletionBatch) -> RunOutcome | None:
    """If every request of the batch has a production lineage already, say so instead of running."""
    from unlearn_lib.requests import RequestQueue

    queue = RequestQueue(settings.workspace_path / "requests")
    evidence = [queue.done_evidence(rid) for rid in batch.request_ids]
    if all(e is not None for e in evidence):
        versions = sorted({e["evidence"]["version"] for e in evidence})  # type: ignore[index]
        return RunOutcome(
            status="already-done",
            lineage_run_id=None,
            version=",".join(versions),
            message=f"{', '.join(batch.request_ids)} already fulfilled by version {', '.join(versions)} "
            f"of {batch.model}; nothing to do",
        )
    return None


def preflight(settings: Settings, batch: DeletionBatch, dataset_rev: str) -> str:
    """All checks that need no pipeline run; returns the resolved dataset revision."""
    from unlearn_lib.compliance.steps import check_model_registered
    from unlearn_lib.storage import store_from_settings
    from unlearn_lib.tracking import check_reachable

    ws = Workspace(settings.workspace, settings.dataset_path)
    ws.check()
    rev = ws.resolve(dataset_rev)
    check_reachable(settings)
    if settings.s3_bucket:
        store_from_settings(settings).check()
    check_model_registered(settings)
    select(ws.dataset(rev), batch.targets, strict=True)
    return rev


@dataclass
class Launch:
    """A validated run about to start: its settings, dataset revision and MLflow parent run."""

    settings: Settings
    arguments: dict[str, str]

    @property
    def lineage_run_id(self) -> str:
        return self.arguments["lineage_run_id"]


def launch(
    settings: Settings,
    batch: DeletionBatch,
    dataset_rev: str,
    algorithm: str,
    options: dict | None,
    audit_params: dict | None,
    runner: str,
) -> Launch | RunOutcome:
    """Everything before the DAG: fulfilled-request check, validation, preflight, the parent run.

    Returns the outcome instead when the batch was already fulfilled.
    """
    from unlearn_lib.audit import AuditParams
    from unlearn_lib.tracking import start_pipeline_run
    from unlearn_lib.unlearning import make_unlearner
    from unlearn_lib.unlearning.base import build_config

    settings = for_batch(settings, batch)
    options, audit_params = dict(options or {}), dict(audit_params or {})
    done = already_fulfilled(settings, batch)
    if done is not None:
        return done
    # Refuse bad options before anything is created.
    make_unlearner(algorithm, options)
    build_config(AuditParams, audit_params, where="the audit").validate()
    rev = preflight(settings, batch, dataset_rev)
    lineage = start_pipeline_run(
        settings,
        run_name=f"compliance {batch.batch_id}",
        tags={
            "request_ids": ",".join(batch.request_ids),
            "batch_id": batch.batch_id,
            "pipeline": "compliance",
            "runner": runner,
            "status": "running",
        },
        params={
            "dataset_rev": rev,
            "algorithm": algorithm,
            "options": json.dumps(options, sort_keys=True),
            "audit_params": json.dumps(audit_params, sort_keys=True),
            "model": batch.model,
            "settings": json.dumps(settings.public(), sort_keys=True),
        },
    )
    arguments = {
        "settings_json": json.dumps(settings.public()),
        "batch_json": batch.to_json(),
        "lineage_run_id": lineage,
        "dataset_rev": rev,
        "algorithm": algorithm,
        "options_json": json.dumps(options),
        "audit_params_json": json.dumps(audit_params),
    }
    return Launch(settings=settings, arguments=arguments)


class _ProgressTee(io.TextIOBase):
    """Stdout for the local run: everything goes to the log file, kfp's task lines also to the console.

    kfp.local replaces the root logger's handlers with one bound to ``sys.stdout`` for each task,
    so filtering has to happen on the stream rather than with a logging handler.
    """

    _PROGRESS = ("Executing task", " finished with status ")

    def __init__(self, log: TextIO, console: TextIO) -> None:
        self._log, self._console, self._pending = log, console, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if any(mark in line for mark in self._PROGRESS):
                self._console.write(f"  {line.strip()}\n")
                self._console.flush()
        return len(text)

    def flush(self) -> None:
        self._log.flush()


def run_local(
    settings: Settings,
    batch: DeletionBatch,
    dataset_rev: str = "HEAD",
    algorithm: str = "erasediff",
    options: dict | None = None,
    audit_params: dict | None = None,
) -> RunOutcome:
    """Run the compliance DAG on this machine with ``kfp.local`` (subprocesses, this environment)."""
    from kfp import local

    from pipelines.compliance import compliance_pipeline

    started = launch(settings, batch, dataset_rev, algorithm, options, audit_params, runner="kfp.local")
    if isinstance(started, RunOutcome):
        return started
    settings = started.settings
    root = settings.workspace_path / "runs" / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False)
    # The steps' own output (executor inputs, library logs) goes to a log file beside the run;
    # the console keeps kfp's one line per task.
    log_path = settings.workspace_path / "runs" / f"{started.lineage_run_id}.log"
    with (
        open(log_path, "w") as log,
        contextlib.redirect_stdout(_ProgressTee(log, sys.stdout)),
        warnings.catch_warnings(),
    ):
        # Known and harmless locally: the cluster-only task settings (GPU, limits, display names)
        # and the project image, whose code the local runner imports from this environment.
        warnings.filterwarnings("ignore", message=r"Task .* have no effect in the current local runner")
        warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
        compliance_pipeline(**started.arguments)
    outcome = outcome_of(settings, started.lineage_run_id)
    outcome.message = f"step logs: {log_path}"
    return outcome


def outcome_of(settings: Settings, lineage_run_id: str) -> RunOutcome:
    from unlearn_lib.tracking import client_for

    client = client_for(settings)
    run = client.get_run(lineage_run_id)
    tags = run.data.tags
    status = tags.get("unlearn.status", "failed")
    if run.info.status == "RUNNING":
        status = "failed"  # the exit handler never ran
    return RunOutcome(
        status=status,
        lineage_run_id=lineage_run_id,
        version=tags.get("unlearn.version"),
        alias=tags.get("unlearn.alias"),
        verdict=_verdict(client, run),
        failed_step=tags.get("unlearn.failed_step"),
        error=tags.get("unlearn.error"),
    )


def _verdict(client: Any, parent: Any) -> str | None:
    """The audit step's verdict, from the nested run it logged under ``parent``."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`unlearn.step` = 'audit'",
    )
    return runs[0].data.tags.get("unlearn.audit_verdict") if runs else None


def submit(
    settings: Settings,
    batch: DeletionBatch,
    host: str,
    dataset_rev: str = "HEAD",
    algorithm: str = "erasediff",
    options: dict | None = None,
    audit_params: dict | None = None,
    package: Path | None = None,
    client: Any = None,
) -> str:
    """Submit the compiled pipeline to a KFP cluster; returns the KFP run ID."""
    import kfp

    from pipelines.compliance import GOLDEN

    started = launch(settings, batch, dataset_rev, algorithm, options, audit_params, runner="kfp")
    if isinstance(started, RunOutcome):
        raise UnlearnError(started.message)
    client = client or kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(
        str(package or GOLDEN),
        arguments=started.arguments,
        run_name=f"compliance-{batch.batch_id}",
        enable_caching=False,
    )
    return str(run.run_id)


def ensure_workspace(settings: Settings, dvc_cache: Path | None = None) -> Workspace:
    """A workspace with data and a trained base model (DVC restores the model from its run cache)."""
    ws = Workspace(settings.workspace, settings.dataset_path)
    if (ws.root / ".git").exists():
        ws.check()
        return ws
    ws = Workspace.init(ws.root, settings.dataset_path)
    if dvc_cache is not None:
        dvc_cache.mkdir(parents=True, exist_ok=True)
        ws.dvc("cache", "dir", str(dvc_cache.resolve()))
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "use the shared DVC cache")
    ws.repro(stream=True)
    return ws


def ensure_base_registered(settings: Settings, ws: Workspace) -> str:
    """Version 1 of the model: the workspace's base model, alias production."""
    from unlearn_lib.data import load_dataset
    from unlearn_lib.tracking import configure, register_base_model

    client = configure(settings)
    if client.search_model_versions(f"name='{settings.model_name}'"):
        from unlearn_lib.tracking import production_version

        return str(production_version(client, settings.model_name).version)
    rev = ws.head()
    ds = load_dataset(ws.root / settings.dataset_path)
    mv = register_base_model(settings, ws.root / "models" / "base", rev, ds.digest(), len(ds), str(ws.root))
    return str(mv.version)
