"""Runs, params, metrics and dataset inputs in MLflow.

Layout: one parent run per pipeline run, one nested run per step (``MLFLOW_RUN_ID`` is
honoured when an orchestrator injects it). Datasets are logged as run inputs with their DVC
revision and digest, never their content: the forgotten images never reach MLflow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, UnlearnError
from ..settings import Settings

TAG_PREFIX = "unlearn."


def configure(settings: Settings) -> Any:
    """Point MLflow at the settings' tracking server (or the workspace's SQLite file)."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(settings.mlflow_experiment) is None:
        artifact_location = None
        if uri.startswith("sqlite:///"):
            artifact_location = (settings.workspace_path / "mlartifacts").as_uri()
        mlflow.create_experiment(settings.mlflow_experiment, artifact_location=artifact_location)
    mlflow.set_experiment(settings.mlflow_experiment)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client_for(settings: Settings) -> Any:
    """A client bound to the settings' tracking *and* registry URI (never the process-global ones)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def check_reachable(settings: Settings, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking server cannot be reached."""
    from ..redact import redact_url

    uri = settings.tracking_uri
    parsed = urlparse(uri)
    shown = redact_url(uri)
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            resp = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as err:
            raise UnlearnError(f"MLflow tracking server {shown} is not reachable ({type(err).__name__})") from None
        if resp.status_code != 200:
            raise UnlearnError(f"MLflow tracking server {shown} answered {resp.status_code} on /health")
    elif parsed.scheme == "sqlite":
        parent = Path(uri[len("sqlite:///") :]).parent
        if not parent.is_dir():
            raise UnlearnError(f"MLflow SQLite store {shown}: folder {parent} does not exist")
    elif parsed.scheme not in ("file", ""):
        raise ConfigError(f"unsupported MLflow tracking URI scheme {parsed.scheme!r} in {shown}")


def start_pipeline_run(settings: Settings, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create the parent run of a pipeline run; returns its ID (left open until the exit handler ends it)."""
    configure(settings)
    client = client_for(settings)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    run = client.create_run(
        exp.experiment_id, run_name=run_name, tags={f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items()}
    )
    from ..redact import redact_text

    for k, v in params.items():
        client.log_param(run.info.run_id, k, redact_text(str(v))[:6000])
    return run.info.run_id


@contextlib.contextmanager
def step_run(
    settings: Settings,
    parent_run_id: str,
    step: str,
    tags: dict[str, str] | None = None,
    system_metrics: bool = False,
) -> Iterator[Any]:
    """A nested run for one pipeline step, FAILED with the error when the step raises.

    ``system_metrics``: CPU, memory, disk and (where present) GPU use are sampled into the run
    while the step works, for the long steps whose cost people compare between runs.
    """
    import mlflow

    configure(settings)
    if system_metrics:
        # MLflow's defaults (10 s, then batches of 10 samples) log nothing for a two-minute step.
        mlflow.set_system_metrics_sampling_interval(2)
        mlflow.set_system_metrics_samples_before_logging(1)
    injected = os.environ.get("MLFLOW_RUN_ID")
    all_tags = {f"{TAG_PREFIX}step": step, **{f"{TAG_PREFIX}{k}": str(v) for k, v in (tags or {}).items()}}
    if injected:
        run = mlflow.start_run(run_id=injected, log_system_metrics=system_metrics)
        mlflow.set_tags(all_tags)
    else:
        run = mlflow.start_run(
            run_name=step,
            nested=True,
            parent_run_id=parent_run_id or None,
            tags=all_tags,
            log_system_metrics=system_metrics,
        )
    try:
        yield run
    except BaseException as err:
        from ..redact import redact_text

        first = str(err).splitlines()[0] if str(err) else ""
        # MLflow itself may be what failed: its bookkeeping must not replace the step's error.
        with contextlib.suppress(Exception):
            mlflow.set_tag(f"{TAG_PREFIX}error", redact_text(f"{type(err).__name__}: {first}")[:500])
        with contextlib.suppress(Exception):
            mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _dvc_source() -> Any:
    from mlflow.data.dataset_source import DatasetSource

    class _DVCDatasetSource(DatasetSource):
        """Where a dataset version lives: a path in a git + DVC repository at a revision."""

        def __init__(self, repo: str, path: str, rev: str) -> None:
            self.repo, self.path, self.rev = repo, path, rev

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, dst_path: str | None = None) -> str:
            from dvc.api import DVCFileSystem

            dst = dst_path or os.path.join(os.getcwd(), Path(self.path).name)
            DVCFileSystem(self.repo, rev=self.rev).get(self.path, dst, recursive=True)
            return dst

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> _DVCDatasetSource:
            raise NotImplementedError

        def to_dict(self) -> dict[str, str]:
            return {"repo": self.repo, "path": self.path, "rev": self.rev}

        @classmethod
        def from_dict(cls, source_dict: dict) -> _DVCDatasetSource:
            return cls(source_dict["repo"], source_dict["path"], source_dict["rev"])

    return _DVCDatasetSource


def DVCDatasetSource(repo: str, path: str, rev: str) -> Any:
    return _dvc_source()(repo, path, rev)


def log_dataset(name: str, repo: str, path: str, rev: str, digest: str, context: str, records: int) -> None:
    """Log a dataset version as an input of the active run: source, revision, digest, size; no content."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    ds = MetaDataset(DVCDatasetSource(repo, path, rev), name=name, digest=digest[:36])
    mlflow.log_input(ds, context=context, tags={"dvc_rev": rev, "records": str(records), "sha256": digest})
