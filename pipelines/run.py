"""Run the compliance pipeline as a transaction over the state database.

Before the DAG: the request is admitted (validated against the world and recorded), a run
that died holding it is resumed or rolled back, the model's lease is taken (one run per model
at a time), the requests are claimed for a new run row, and the MLflow parent run is opened.
Bad input is refused before any of that with one line; nothing is registered then. After the
DAG, the outcome is read from the run row, which the steps and the exit handler keep, so it
is known even when MLflow is down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from unlearn_lib.data.selection import select
from unlearn_lib.errors import UnlearnError
from unlearn_lib.requests import DeletionBatch
from unlearn_lib.requests.schema import RequestError
from unlearn_lib.settings import Settings
from unlearn_lib.state import (
    DONE,
    FAILED,
    PENDING,
    REJECTED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_ROLLED_BACK,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RUNNING,
    Heartbeat,
    LeaseBusy,
    RunRow,
    StateStore,
    holder_is_dead,
    model_lease,
)
from unlearn_lib.state.schema import utcnow
from unlearn_lib.workspace import Workspace, open_workspace, sweep_partials

# kfp.local runners: steps as processes of this environment, or each step in its own container.
SUBPROCESS, CONTAINER = "kfp.local", "kfp.local-container"
LOCAL_RUNNERS = (SUBPROCESS, CONTAINER)
RUNNER_NAMES = {"subprocess": SUBPROCESS, "container": CONTAINER}


@dataclass
class RunOutcome:
    status: str  # succeeded | failed | interrupted | already-done | busy
    lineage_run_id: str | None
    version: str | None = None
    alias: str | None = None
    verdict: str | None = None
    failed_step: str | None = None
    error: str | None = None
    message: str = ""
    run_id: str | None = None
    request_ids: list[str] = dataclasses.field(default_factory=list)
    retryable: bool | None = None
    # The audit's gates that passed without the power to fail (audit.json's INCONCLUSIVE).
    inconclusive: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def ok(self) -> bool:
        """The requests are fulfilled: by this run, or by an earlier one."""
        return self.status in ("succeeded", "already-done")


def for_batch(settings: Settings, batch: DeletionBatch) -> Settings:
    """The request names the model; everything else comes from the settings."""
    return settings.replace(model_name=batch.model)


def preflight(settings: Settings, batch: DeletionBatch, dataset_rev: str) -> str:
    """All checks that need no pipeline run; returns the resolved dataset revision."""
    from unlearn_lib.compliance.steps import check_model_registered
    from unlearn_lib.storage import store_from_settings
    from unlearn_lib.tracking import check_reachable

    ws = open_workspace(settings)
    ws.check()
    rev = ws.served() if dataset_rev == "HEAD" else ws.resolve(dataset_rev)
    check_reachable(settings)
    if settings.s3_bucket:
        store_from_settings(settings).check()
    check_model_registered(settings)
    # A batch whose every image stays under retained records would be purged, then refused by unlearning.
    select(ws.dataset(rev), batch.targets, strict=True).erasable_or_refuse()
    return rev


def _already_done(store: StateStore, batch: DeletionBatch) -> RunOutcome | None:
    rows = [store.get_request(rid) for rid in batch.request_ids]
    if rows and all(r is not None and r.state == DONE for r in rows):
        versions = sorted({r.version or "-" for r in rows})  # type: ignore[union-attr]
        reasons = sorted({r.reason for r in rows if r and r.reason})  # type: ignore[union-attr]
        return RunOutcome(
            status="already-done",
            lineage_run_id=None,
            version=",".join(versions),
            request_ids=batch.request_ids,
            message=f"{', '.join(batch.request_ids)} already fulfilled by version {', '.join(versions)} "
            f"of {batch.model}{' (' + '; '.join(reasons) + ')' if reasons else ''}; nothing to do",
        )
    return None


def admit(settings: Settings, store: StateStore, batch: DeletionBatch) -> None:
    """Record requests this database has not seen (validated against the world), all or none.

    A request refused here is stored as ``rejected`` with its reason and the run stops with one line.
    A stored request must be the same request: an ID names one request.
    """
    from unlearn_lib.requests.intake import assess, check_same_request

    new = []
    for req in batch.requests:
        row = store.get_request(req.request_id)
        if row is not None and row.state != REJECTED:
            check_same_request(row, req)
            continue
        verdict = assess(settings, req, store)
        if verdict.state == REJECTED:
            store.add_request(req, REJECTED, verdict.reason)
            raise RequestError(f"request {req.request_id} refused: {verdict.reason}")
        new.append((req, verdict))
    for req, verdict in new:
        store.add_request(req, verdict.state, verdict.reason, verdict.version, verdict.evidence)


@dataclass
class Launch:
    """A run about to execute: its settings, row in the state database and DAG arguments."""

    settings: Settings
    run_id: str
    arguments: dict[str, Any]
    runner: str = SUBPROCESS


def _arguments(settings: Settings, run_id: str, batch: DeletionBatch, config: dict, runner: str) -> dict[str, Any]:
    """The compliance pipeline's parameters for one run (see ``pipelines.compliance``)."""
    if runner in LOCAL_RUNNERS:
        # Exactly this process's settings, minus passwords (the runner injects those as environment).
        # (None is left out: kfp's struct parameters have no null; absent means the default.)
        step_settings = {k: v for k, v in settings.for_steps().items() if v is not None}
        if runner == CONTAINER:
            step_settings.pop("scratch_dir", None)  # a host path means nothing inside the container
    else:
        step_settings = {}  # a cluster's steps read the unlearn-settings ConfigMap
    return {
        "run_id": run_id,
        "request_ids": list(batch.request_ids),
        "dataset_rev": config["dataset_rev"],
        "algorithm": config["algorithm"],
        "options": dict(config["options"]),
        "audit_params": dict(config["audit_params"]),
        "settings": step_settings,
    }


def _open_lineage(settings: Settings, batch: DeletionBatch, run_id: str, config: dict, runner: str, **tags: str) -> str:
    from unlearn_lib.tracking import start_pipeline_run

    return start_pipeline_run(
        settings,
        run_name=f"compliance {batch.batch_id}",
        tags={
            "request_ids": ",".join(batch.request_ids),
            "batch_id": batch.batch_id,
            "run_id": run_id,
            "pipeline": "compliance",
            "runner": runner,
            "status": "running",
            **tags,
        },
        params={
            "dataset_rev": config["dataset_rev"],
            "algorithm": config["algorithm"],
            "options": json.dumps(config["options"], sort_keys=True),
            "audit_params": json.dumps(config["audit_params"], sort_keys=True),
            "model": batch.model,
            "settings": json.dumps(settings.public(), sort_keys=True),
        },
    )


def _holder(runner: str, run_id: str) -> str | None:
    """Local runs are held by this process (dead with it); cluster runs by the run, renewed by its steps."""
    return None if runner in LOCAL_RUNNERS else f"kfp:{run_id}"


def launch(
    settings: Settings,
    batch: DeletionBatch,
    dataset_rev: str,
    algorithm: str,
    options: dict | None,
    audit_params: dict | None,
    runner: str,
    explicit: bool = True,
) -> Launch | RunOutcome:
    """Everything before the DAG. Returns an outcome instead when there is nothing to run or the model is busy.

    ``explicit`` (a person named these requests) also re-runs failed requests that are not
    retried automatically (an audit that failed, with other options this time).
    """
    from unlearn_lib.compliance.steps import check_run_options

    settings = for_batch(settings, batch)
    options, audit_params = dict(options or {}), dict(audit_params or {})
    # Refuse bad options before anything is created.
    check_run_options(algorithm, options, audit_params)
    store = StateStore.open(settings)
    admit(settings, store, batch)
    done = _already_done(store, batch)
    if done is not None:
        return done
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    lease = model_lease(batch.model)
    try:
        store.acquire_lease(lease, run_id, settings.lease_ttl_seconds, _holder(runner, run_id))
    except LeaseBusy as err:
        return RunOutcome(status="busy", lineage_run_id=None, request_ids=batch.request_ids, message=str(err))
    try:
        rows = [store.get_request(rid) for rid in batch.request_ids]
        runnable = [
            r
            for r in rows
            if r is not None
            and (
                r.state == PENDING
                or (r.state == FAILED and (explicit or (r.retryable and r.attempts < settings.max_attempts)))
            )
        ]
        if not runnable:
            store.release_lease(lease, run_id)
            states = ", ".join(f"{r.request_id} {r.state}" for r in rows if r)
            return RunOutcome(
                status="already-done" if all(r and r.state == DONE for r in rows) else "busy",
                lineage_run_id=None,
                request_ids=batch.request_ids,
                message=f"nothing to run: {states}",
            )
        if len(runnable) != len(rows):
            batch = DeletionBatch(tuple(r.request for r in runnable))
        rev = preflight(settings, batch, dataset_rev)
        parent = _production(settings)
        config = {"dataset_rev": rev, "algorithm": algorithm, "options": options, "audit_params": audit_params}
        store.start_run(run_id, batch.model, batch.batch_id, batch.request_ids, runner, config, parent, rev)
    except BaseException:
        store.release_lease(lease, run_id)
        raise
    try:
        lineage = _open_lineage(settings, batch, run_id, config, runner)
        store.update_run(run_id, lineage_run_id=lineage)
    except BaseException as err:
        _abandon(settings, store, store.get_run(run_id), f"could not start: {_line(err)}")  # type: ignore[arg-type]
        raise
    return Launch(
        settings=settings, run_id=run_id, arguments=_arguments(settings, run_id, batch, config, runner), runner=runner
    )


def _line(err: BaseException) -> str:
    from unlearn_lib.compliance.steps import error_line

    return error_line(err)


def _production(settings: Settings) -> str:
    from unlearn_lib.compliance.steps import check_model_registered

    return check_model_registered(settings)


# ---- recovery: runs that died or were interrupted ------------------------------------------------------


def _batch_of(store: StateStore, run: RunRow) -> DeletionBatch:
    return DeletionBatch(tuple(store.get_request(rid).request for rid in run.ids))  # type: ignore[union-attr]


def _is_live(store: StateStore, run: RunRow) -> bool:
    lease = store.lease(model_lease(run.model))
    return (
        run.state == RUN_RUNNING
        and lease is not None
        and lease.run_id == run.run_id
        and lease.expires_at > utcnow()
        and not holder_is_dead(lease.holder)
    )


def _resumable(settings: Settings, store: StateStore, run: RunRow) -> str | None:
    """Why ``run`` cannot be resumed, or None when it can (its inputs are still the world's state)."""
    from unlearn_lib.tracking import PRODUCTION, alias_version, configure

    if run.attempt >= settings.max_attempts and not run.committing:
        return f"it was attempted {run.attempt} times"
    if not run.dataset_rev or not run.parent_version:
        return "it never got past its start"
    ws = open_workspace(settings)
    served = ws.served()
    if served != run.dataset_rev and not (run.committing and served == run.purged_rev):
        return f"the served dataset moved from {run.dataset_rev[:12]} to {served[:12]}"
    production = alias_version(configure(settings), run.model, PRODUCTION)
    if production != run.parent_version and not (run.committing and production == run.version):
        return f"production moved from v{run.parent_version} to v{production}"
    for rid in run.ids:
        row = store.get_request(rid)
        if row is None or row.run_id != run.run_id or row.state not in (RUNNING, FAILED):
            return f"request {rid} is no longer held by it"
    return None


def _close_lineage(settings: Settings, lineage_run_id: str | None, **tags: str) -> None:
    """Mark an abandoned attempt's MLflow parent run failed (best effort: MLflow may be what failed)."""
    if not lineage_run_id:
        return
    with contextlib.suppress(Exception):
        from unlearn_lib.tracking import client_for

        client = client_for(settings)
        if client.get_run(lineage_run_id).info.status == "RUNNING":
            for k, v in tags.items():
                client.set_tag(lineage_run_id, f"unlearn.{k}", v)
            client.set_terminated(lineage_run_id, status="FAILED")


def sweep_run_folder(settings: Settings, run_id: str) -> None:
    """Remove a run's kfp pipeline root (the models, audit and selections its steps passed on)."""
    shutil.rmtree(settings.workspace_path / "runs" / "kfp" / run_id, ignore_errors=True)


def _abandon(settings: Settings, store: StateStore, run: RunRow, why: str) -> None:
    """Roll a run back: nothing it prepared stays; its requests wait again."""
    from unlearn_lib.compliance.runfiles import RunFiles
    from unlearn_lib.tracking import PRODUCTION, TAG_PREFIX, alias_version, configure

    ws = open_workspace(settings)
    ws.drop_run_ref(run.run_id)
    client = configure(settings)
    production = alias_version(client, run.model, PRODUCTION)
    for mv in client.search_model_versions(f"name='{run.model}'"):
        if (mv.tags or {}).get(f"{TAG_PREFIX}run_id") == run.run_id and str(mv.version) != production:
            client.delete_model_version(run.model, mv.version)
    RunFiles(settings, run.run_id).drop()
    sweep_run_folder(settings, run.run_id)
    _close_lineage(settings, run.lineage_run_id, status="failed", run_state=RUN_ROLLED_BACK, error=why[:500])
    held = [rid for rid in run.ids if (r := store.get_request(rid)) and r.run_id == run.run_id and r.state != DONE]
    if held:
        store.requeue(held, run.run_id, f"run {run.run_id} was rolled back: {why}")
    store.update_run(run.run_id, state=RUN_ROLLED_BACK, error=why[:2000])
    store.release_lease(model_lease(run.model), run.run_id)


def _stuck(settings: Settings, store: StateStore, run: RunRow, why: str) -> None:
    error = f"run {run.run_id} died while committing (version {run.version}) and {why}: resolve by hand"
    held = [rid for rid in run.ids if (r := store.get_request(rid)) and r.run_id == run.run_id and r.state != DONE]
    if held:
        store.fail_requests(held, run.run_id, error, retryable=False)
    store.update_run(run.run_id, state=RUN_FAILED, error=error)
    store.release_lease(model_lease(run.model), run.run_id)


def recover(
    settings: Settings, request_ids: list[str] | None = None, model: str | None = None, echo: Any = None
) -> list[RunOutcome]:
    """Resume, or roll back, every run that died (its lease lapsed) or was interrupted.

    A run resumes from its last finished step when the world it started from is still there
    (production on its parent version, the served dataset on its source revision); otherwise
    it is rolled back and its requests wait for a fresh run.
    """
    store = StateStore.open(settings)
    outcomes = []
    if not settings.stateless and settings.workspace_path.is_dir():
        # Half-written outputs of processes that died (a crash, SIGKILL) go before anything reads.
        sweep_partials(settings.workspace_path)
    for run in store.runs([RUN_RUNNING, RUN_INTERRUPTED], model=model):
        if request_ids is not None and not set(run.ids) & set(request_ids):
            continue
        if _is_live(store, run):
            continue
        run_settings = settings.replace(model_name=run.model)
        try:
            store.acquire_lease(model_lease(run.model), run.run_id, settings.lease_ttl_seconds)
        except LeaseBusy:
            continue  # another process is on this model; it recovers the run, or this one will later
        # What the dead attempt was writing when it died goes first.
        sweep_partials(settings.workspace_path, settings.workspace_path / "runs" / "kfp" / run.run_id)
        try:
            why = _resumable(run_settings, store, run)
            if why is not None and run.committing:
                # The purged dataset may already be served: undoing that would put deleted records
                # back, and redoing the run would find them "already erased". A person decides.
                _stuck(run_settings, store, run, why)
                if echo:
                    echo(f"run {run.run_id} ({', '.join(run.ids)}) died while committing and {why}; needs a person")
                outcomes.append(outcome_of(run_settings, run.run_id))
                continue
            if why is not None:
                if echo:
                    echo(f"rolling back run {run.run_id} ({', '.join(run.ids)}): {why}")
                _abandon(run_settings, store, run, why)
                continue
        except Exception as err:
            store.release_lease(model_lease(run.model), run.run_id)
            if echo:
                echo(f"cannot recover run {run.run_id} now ({_line(err)}); it is left as it is")
            continue
        if echo:
            echo(f"resuming run {run.run_id} ({', '.join(run.ids)}) after {run.failed_step or 'its last step'}")
        started = _resume(run_settings, store, run)
        outcomes.append(_execute_local(started, started.runner))
    return outcomes


def _resume(settings: Settings, store: StateStore, run: RunRow) -> Launch:
    batch = _batch_of(store, run)
    store.transition(run.ids, RUNNING, run_id=run.run_id)
    _close_lineage(settings, run.lineage_run_id, status="failed", run_state="resumed")
    lineage = _open_lineage(settings, batch, run.run_id, run.config, run.runner, resumes=run.lineage_run_id or "")
    store.update_run(
        run.run_id, state=RUN_RUNNING, attempt=run.attempt + 1, lineage_run_id=lineage, failed_step=None, error=None
    )
    runner = run.runner if run.runner in LOCAL_RUNNERS else SUBPROCESS
    return Launch(
        settings=settings,
        run_id=run.run_id,
        arguments=_arguments(settings, run.run_id, batch, run.config, runner),
        runner=runner,
    )


def outcome_of(settings: Settings, run_id: str) -> RunOutcome:
    """What a run came to, from its row (MLflow holds the lineage; the state database the truth)."""
    store = StateStore.open(settings)
    run = store.get_run(run_id)
    if run is None:
        raise UnlearnError(f"no run {run_id} in the state database")
    status = {RUN_SUCCEEDED: "succeeded", RUN_INTERRUPTED: "interrupted"}.get(run.state, "failed")
    alias = {"pass": "production", "fail": "candidate"}.get(run.verdict or "") if run.version else None
    return RunOutcome(
        status=status,
        lineage_run_id=run.lineage_run_id,
        version=run.version,
        alias=alias,
        verdict=run.verdict,
        failed_step=None if status == "succeeded" else run.failed_step,
        error=run.error,
        run_id=run.run_id,
        request_ids=run.ids,
        retryable=run.state == RUN_INTERRUPTED,
        inconclusive=list((run.steps.get("audit") or {}).get("inconclusive") or []),
    )


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
    explicit: bool = True,
    runner: str = "subprocess",
) -> RunOutcome:
    """Run the compliance DAG on this machine with ``kfp.local``.

    ``runner``: ``subprocess`` (each step a process of this environment) or ``container`` (each
    step in its own container from the project image, reaching state only over the network:
    needs the stack, see ``unlearn stack up``). A run of the same requests that died earlier is
    resumed first (or rolled back).
    """
    if runner not in RUNNER_NAMES:
        raise UnlearnError(f"unknown runner {runner!r} (known: {', '.join(RUNNER_NAMES)})")
    runner = RUNNER_NAMES[runner]
    if runner == CONTAINER:
        check_container_ready(settings)
    settings = for_batch(settings, batch)
    store = StateStore.open(settings)
    admit(settings, store, batch)
    for outcome in recover(settings, request_ids=batch.request_ids, echo=lambda line: print(line, flush=True)):
        if set(batch.request_ids) <= set(outcome.request_ids):
            return outcome
    started = launch(settings, batch, dataset_rev, algorithm, options, audit_params, runner, explicit)
    if isinstance(started, RunOutcome):
        return started
    outcome = _execute_local(started, runner)
    given = options or {}
    for draw in range(1, settings.utility_redraws + 1):
        reason = redraw_reason(settings, outcome)
        if reason is None:
            break
        # The audit keeps its own seeds: only the unlearning is drawn again, and the same judge
        # measures every draw.
        drawn = {**given, "seed": int(given.get("seed", 0)) + draw}
        print(
            f"{', '.join(outcome.request_ids)}: v{outcome.version} forgot but failed {reason}; "
            f"unlearning again with seed {drawn['seed']} (redraw {draw} of {settings.utility_redraws})",
            flush=True,
        )
        started = launch(settings, batch, dataset_rev, algorithm, drawn, audit_params, runner, explicit=True)
        if isinstance(started, RunOutcome):
            return started
        outcome = _execute_local(started, runner)
    return outcome


def redraw_reason(settings: Settings, outcome: RunOutcome) -> str | None:
    """The failed gates when a run's candidate failed its audit on utility gates alone, else None.

    Read from the candidate version's ``unlearn.audit_failed*`` tags: the register step wrote them
    from the audit record. Anything unreadable (MLflow down, an older version without the tags)
    is not redrawn: the request stays failed for a person, as before.
    """
    if outcome.status != "failed" or outcome.verdict != "fail" or not outcome.version:
        return None
    from unlearn_lib.tracking import TAG_PREFIX, client_for
    from unlearn_lib.tracking.lineage import check_reachable

    try:
        check_reachable(settings)  # fails in seconds where the client would retry for minutes
        tags = client_for(settings).get_model_version(settings.model_name, outcome.version).tags or {}
    except Exception:  # MLflow may be what failed; the failed run stands as it is
        return None
    if tags.get(f"{TAG_PREFIX}audit_failed_groups") != "utility":
        return None
    return tags.get(f"{TAG_PREFIX}audit_failed", "a utility gate")


def check_container_ready(settings: Settings) -> None:
    """Containers share no folder with this machine: every piece of state must be a service."""
    problems = []
    if not settings.stateless:
        problems.append("no git_remote (the workspace repository's URL)")
    if not settings.dvc_remote:
        problems.append("no DVC remote (s3_bucket or dvc_remote_url)")
    if not (settings.mlflow_tracking_uri or "").startswith(("http://", "https://")):
        problems.append("MLflow is not a tracking server (mlflow_tracking_uri http://...)")
    if not settings.state_db_url or settings.state_db_url.startswith("sqlite"):
        problems.append("the state database is not a server (state_db_url postgresql://...)")
    if problems:
        raise UnlearnError(
            "the container runner needs the stack's services: "
            + "; ".join(problems)
            + " -- start them with `unlearn stack up` and `source .stack/env`"
        )


def _container_runner(settings: Settings, env: dict[str, str]) -> Any:
    from kfp import local

    from unlearn_lib.containers import image_info, podman_socket

    os.environ["DOCKER_HOST"] = podman_socket()
    info = image_info()
    passed = {k: v for k in _CONTAINER_ENV if (v := os.environ.get(k))}
    passed |= env | {"UNLEARN_IMAGE_DIGEST": info.get("digest", ""), "UNLEARN_IMAGE": info.get("image", "")}
    # Host networking: the stack listens on 127.0.0.1; nothing of this machine's disk is mounted
    # except kfp's pipeline root (the DAG's artifacts).
    return local.DockerRunner(network_mode="host", environment=passed), info


# What a container step gets from this process's environment (a cluster's pods get it from Secrets).
_CONTAINER_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "UNLEARN_FAILPOINTS",
    "UNLEARN_FAILPOINT_DIR",
    # Threads per step: on a busy small machine OpenMP's spinning threads cost 50x (benchmarks/README).
    "OMP_NUM_THREADS",
)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    """Credentials for the step processes kfp.local starts (they inherit this environment)."""
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute_local(started: Launch, runner: str = SUBPROCESS) -> RunOutcome:
    from kfp import local

    from pipelines.compliance import compliance_pipeline, using_image

    settings = started.settings
    store = StateStore.open(settings)
    run = store.get_run(started.run_id)
    lineage_run_id = run.lineage_run_id if run else started.run_id
    # One pipeline root per run: a resumed attempt's leftovers are found (and swept) by run.
    root = settings.workspace_path / "runs" / "kfp" / started.run_id
    (root / "kfp-workspace").mkdir(parents=True, exist_ok=True)
    image, umask = None, None
    if runner == CONTAINER:
        kfp_runner, info = _container_runner(settings, settings.step_environment())
        image = info["ref"]
        # The steps run as the image's non-root user and write their outputs under the root.
        for folder in (root, root / "kfp-workspace"):
            folder.chmod(0o777)
        umask = os.umask(0)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    # kfp.local mounts a "workspace" folder into every container too: keep it inside the run's root.
    local.init(
        runner=kfp_runner,
        pipeline_root=str(root),
        raise_on_error=False,
        workspace_root=str(root / "kfp-workspace"),
    )
    # The steps' own output (executor inputs, library logs) goes to a log file beside the run;
    # the console keeps kfp's one line per task.
    log_path = settings.workspace_path / "runs" / f"{lineage_run_id}.log"
    lease = model_lease(settings.model_name)
    with (
        using_image(compliance_pipeline, image),
        _environment(settings.step_environment() if runner == SUBPROCESS else {}),
        open(log_path, "w") as log,
        contextlib.redirect_stdout(_ProgressTee(log, sys.stdout)),
        warnings.catch_warnings(),
        Heartbeat(store, lease, started.run_id, settings.lease_ttl_seconds),
    ):
        # Known and harmless locally: the cluster-only task settings (GPU, limits, display names)
        # and the project image, whose code the local runner imports from this environment.
        warnings.filterwarnings("ignore", message=r"Task .* have no effect in the current local runner")
        warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
        try:
            compliance_pipeline(**started.arguments)
        finally:
            if umask is not None:
                os.umask(umask)
    run = store.get_run(started.run_id)
    if run is not None and run.state == RUN_RUNNING:
        # The exit handler itself did not finish: the run is interrupted, to be resumed.
        from unlearn_lib.compliance.steps import StepContext, fail_run

        ctx = StepContext.parse(settings.for_steps(), started.run_id)
        fail_run(ctx, run, None, "the pipeline ended without recording an outcome", True)
    store.release_lease(lease, started.run_id)
    run = store.get_run(started.run_id)
    if run is not None and run.state == RUN_SUCCEEDED:
        from unlearn_lib.compliance.runfiles import RunFiles

        # Everything a finished run made is in MLflow and the state database now; so is what
        # earlier, failed attempts at the same requests left for a person to look at.
        for old in store.runs([RUN_SUCCEEDED, RUN_FAILED, RUN_ROLLED_BACK], model=run.model):
            if old.run_id == run.run_id or set(old.ids) & set(run.ids):
                sweep_run_folder(settings, old.run_id)
                RunFiles(settings, old.run_id).drop()
    outcome = outcome_of(settings, started.run_id)
    outcome.message = f"step logs: {log_path}"
    return outcome


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
    # The cluster's steps renew the lease and its exit handler releases it.
    try:
        client = client or kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            str(package or GOLDEN),
            arguments=started.arguments,
            run_name=f"compliance-{batch.batch_id}",
            enable_caching=False,
        )
    except Exception as err:
        # Nothing runs: the requests must not stay claimed by a run that never started.
        store = StateStore.open(started.settings)
        _abandon(started.settings, store, store.get_run(started.run_id), f"KFP refused the run: {_line(err)}")  # type: ignore[arg-type]
        raise UnlearnError(f"KFP at {host} did not accept the run: {_line(err)}") from None
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
    from unlearn_lib.tracking.retention import base_absorbed

    absorbed = base_absorbed(ws.ledger(rev), ws.root / "models" / "base", ds.digest())
    mv = register_base_model(
        settings, ws.root / "models" / "base", rev, ds.digest(), len(ds), str(ws.root), absorbed=absorbed
    )
    return str(mv.version)
