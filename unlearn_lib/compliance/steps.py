"""The four steps of a compliance run, and the exit handler, as library functions.

A run is one row of the state database (``runs``), created before the DAG starts and passed
to each step by its ID; the run's requests, model and MLflow parent run are read from there.
Every step

- checks that its run still holds the model's lease (a run that lost it to another stops),
  and keeps the lease alive while it works;
- reuses what an earlier attempt of the same run finished (a killed run resumes from its last
  finished step: the purged revision on the run's ref, the unlearned model and the audit kept
  under ``checkpoints/<run>/`` -- a workspace folder, or the object store for stateless steps --
  and the unlearning checkpoints themselves);
- records its outputs, or its error, in the run row.

Nothing a user sees changes before the register step: the purged dataset version lives on
``refs/unlearn/runs/<run>``, the model is a kfp artifact. Register is the commit: a version,
then (audit passed, production still on the run's parent, the served dataset still the run's
source) the served dataset and ``production`` move and the requests are marked done.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit.gates import failed_gate_groups, failed_gates, inconclusive_gates
from ..data.manifest import Dataset
from ..data.selection import Selection, select
from ..errors import ConfigError, DatasetError, ModelError, SelectionError, UnlearnError
from ..faults import failpoint
from ..requests.schema import DeletionBatch
from ..settings import Settings
from ..state import (
    DONE,
    FAILED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    Heartbeat,
    RunRow,
    StateError,
    StateStore,
    model_lease,
)
from ..utils import write_json
from ..workspace import Workspace, open_workspace
from .runfiles import RunFiles, cache_root

if TYPE_CHECKING:
    from ..audit import Evaluator

STEPS = ("extract_forget_set", "unlearn", "audit", "register")


class RunConflict(UnlearnError):
    """Production or the served dataset moved while the run worked: it must be redone on the new state."""


# Errors that a retry of the same run cannot fix: the request or the options are wrong.
_PERMANENT = (SelectionError, ConfigError, DatasetError, ModelError)


def redact(text: str) -> str:
    from ..redact import redact_text

    return redact_text(text)


def is_text_to_image_folder(path: str | os.PathLike[str]) -> bool:
    # Imported when asked: the text-to-image stack (transformers) is slow to import.
    from ..t2i.model import is_text_to_image_folder as check

    return check(path)


def error_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return redact(f"{type(err).__name__}: {first}" if not isinstance(err, UnlearnError) else first)[:1000]


def step_settings(settings: Mapping[str, Any] | str | None) -> Settings:
    """A step's settings: exactly those given (a local run passes them), else the environment's.

    On a cluster the pipeline passes none: the ``unlearn-settings`` ConfigMap and the Secrets
    are the step's environment, read the way ``unlearn`` reads them anywhere.
    """
    if isinstance(settings, str):
        settings = json.loads(settings or "{}")
    return Settings.from_public(settings) if settings else Settings.load()


@dataclass
class StepContext:
    settings: Settings
    run_id: str
    batch: DeletionBatch
    lineage_run_id: str
    _workspace: Workspace | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | str | None, run_id: str) -> StepContext:
        s = step_settings(settings)
        store = StateStore.open(s)
        run = store.get_run(run_id)
        if run is None:
            from ..redact import redact_url

            raise StateError(f"no compliance run {run_id} in the state database {redact_url(store.url)}")
        if not run.lineage_run_id:
            raise StateError(f"run {run_id} has no MLflow parent run; it was not started by `unlearn`")
        requests = [store.get_request(rid) for rid in run.ids]
        missing = [rid for rid, row in zip(run.ids, requests, strict=True) if row is None]
        if missing:
            raise StateError(f"run {run_id} names unknown requests {', '.join(missing)}")
        batch = DeletionBatch(tuple(row.request for row in requests))  # type: ignore[union-attr]
        return cls(s, run_id, batch, run.lineage_run_id)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = open_workspace(self.settings)
        return self._workspace

    @property
    def store(self) -> StateStore:
        return StateStore.open(self.settings)

    def run(self) -> RunRow:
        run = self.store.get_run(self.run_id)
        if run is None:
            raise StateError(f"run {self.run_id} is gone from the state database")
        return run

    def files(self, run_id: str) -> RunFiles:
        """What a run keeps between attempts: unlearning checkpoints, the finished model and audit."""
        return RunFiles(self.settings, run_id)

    @property
    def dataset_source(self) -> str:
        """Where the dataset's versions live, as lineage names it (never with a password)."""
        from ..redact import redact_url

        return redact_url(self.settings.git_remote) if self.settings.git_remote else str(self.workspace.root)

    def dataset(self, rev: str) -> Dataset:
        # This run's own deletion may already be published (a resumed commit): it still reads its source.
        return self.workspace.dataset(rev, own=tuple(self.batch.request_ids))

    def selection(self, rev: str, expected_sha256: str | None = None) -> tuple[Dataset, Selection]:
        ds = self.dataset(rev)
        sel = select(ds, self.batch.targets, strict=True)
        if expected_sha256 and sel.forget_set_sha256() != expected_sha256:
            raise UnlearnError(
                f"forget set at revision {rev[:12]} does not match the extracted one "
                f"({sel.forget_set_sha256()[:12]} != {expected_sha256[:12]})"
            )
        return ds, sel

    def tags(self, run_id: str) -> dict[str, str]:
        from ..containers import container_identity

        # In a container: which one ran the step (its ID and image digest), and what of the host's
        # disk it could see, for the audit trail.
        identity = container_identity()
        where = {f"container.{k}": v for k, v in identity.items() if v}
        if identity:
            where["container.host_mounts"] = json.dumps(host_mounts())
        return {
            "request_ids": ",".join(self.batch.request_ids),
            "batch_id": self.batch.batch_id,
            "pipeline_run_id": self.lineage_run_id,
            "run_id": run_id,
            **where,
        }


@contextlib.contextmanager
def guarded(ctx: StepContext, step: str) -> Iterator[RunRow]:
    """Fence, heartbeat and bookkeeping around one step of a run."""
    from ..tracking import check_reachable

    store = ctx.store
    run = ctx.run()
    lease = model_lease(run.model)
    ttl = ctx.settings.lease_ttl_seconds
    if run.state != RUN_RUNNING:
        raise StateError(f"run {run.run_id} is {run.state}; step {step} does not start")
    if not store.renew_lease(lease, run.run_id, ttl):
        raise StateError(f"run {run.run_id} no longer holds {lease} (another run took it over); stopping")
    beat = Heartbeat(store, lease, run.run_id, ttl)
    try:
        with beat:
            check_reachable(ctx.settings)
            yield run
        if beat.lost:
            raise StateError(f"run {run.run_id} lost {lease} while {step} ran; its result is not used")
    except BaseException as err:
        retryable = not isinstance(err, _PERMANENT)
        with contextlib.suppress(StateError):
            fail_run(ctx, store.get_run(run.run_id) or run, step, error_line(err), retryable)
        raise


# Files every container engine mounts into a container; they are not the host's data.
_ENGINE_MOUNTS = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run/.containerenv", "/dev/termination-log")


def host_mounts(mountinfo: str | None = None) -> list[str]:
    """The host folders bind-mounted into this container (``/proc/self/mountinfo``), by host path."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        root, point = fields[3], fields[4]
        # A bind mount shows the host folder it exposes as its root; the container's own
        # filesystems (its image, proc, sys, tmpfs) show "/".
        if root == "/" or point in _ENGINE_MOUNTS or point.startswith(("/proc", "/sys", "/dev", "/run/secrets")):
            continue
        found.append(root)
    return sorted(set(found))


def fail_run(ctx: StepContext, run: RunRow, step: str | None, error: str, retryable: bool) -> None:
    """A failed step: the run stops; its requests wait for a retry (resuming this run) or a person."""
    store = ctx.store
    if run.state != RUN_RUNNING:
        return
    store.update_run(
        run.run_id, state=RUN_INTERRUPTED if retryable else RUN_FAILED, failed_step=step, error=error[:2000]
    )
    held = [r.request_id for r in store.list_requests() if r.run_id == run.run_id and r.state != DONE]
    if held:
        store.fail_requests(held, run.run_id, f"{step or 'run'}: {error}", retryable)


def _write_ids(folder: str | os.PathLike[str], rev: str, records: list, extra: dict | None = None) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "selection.json",
        {
            "dataset_rev": rev,
            "records": len(records),
            "record_ids": [r.record_id for r in records],
            "sha256": [r.sha256 for r in records],
            **(extra or {}),
        },
    )


# ---- 1. extract_forget_set ----------------------------------------------------------------------


def extract_step(
    ctx: StepContext,
    dataset_rev: str,
    forget_dir: str,
    retain_dir: str,
    holdout_dir: str,
    purged_dir: str,
    kfp_run_id: str = "",
) -> dict[str, Any]:
    from ..tracking import client_for, log_dataset, step_run

    with guarded(ctx, "extract_forget_set") as run:
        ws = ctx.workspace
        rev = ws.resolve(run.dataset_rev or dataset_rev)
        if kfp_run_id:
            # The Kubeflow run that executes this compliance run, on its MLflow parent run.
            client_for(ctx.settings).set_tag(ctx.lineage_run_id, "kfp.run_id", kfp_run_id)
        with step_run(ctx.settings, ctx.lineage_run_id, "extract_forget_set", ctx.tags(run.run_id)):
            import mlflow

            ds, sel = ctx.selection(rev)
            summary, forget_sha = sel.summary(), sel.forget_set_sha256()
            mlflow.log_params(
                {
                    "dataset_rev": rev,
                    "scope": sel.scope,
                    "forget_records": len(sel.forget),
                    "retain_records": len(sel.retain),
                    "holdout_records": len(sel.holdout),
                    "purged_holdout_records": len(sel.purged_holdout),
                    "forget_set_sha256": forget_sha,
                }
            )
            name = Path(ctx.settings.dataset_path).name
            log_dataset(f"{name}@{rev[:8]}", ctx.dataset_source, ws.dataset_path, rev, ds.digest(), "source", len(ds))
            _write_ids(
                forget_dir,
                rev,
                sel.forget,
                {"forget_set_sha256": forget_sha, "scope": sel.scope, "targets": summary["targets"]},
            )
            _write_ids(retain_dir, rev, sel.retain)
            _write_ids(holdout_dir, rev, sel.holdout, {"purged": [r.record_id for r in sel.purged_holdout]})
            failpoint("extract")
            # Prepared on the run's own ref; served only when register publishes it.
            purged_rev = ws.prepare_purge(rev, summary["targets"], ctx.batch.request_ids, forget_sha, run.run_id)
            purged = ws.dataset(purged_rev)
            purged_digest = purged.digest()
            log_dataset(
                f"{name}@{purged_rev[:8]}",
                ctx.dataset_source,
                ws.dataset_path,
                purged_rev,
                purged_digest,
                "purged",
                len(purged),
            )
            mlflow.log_param("dataset_rev_after", purged_rev)
            _write_ids(
                purged_dir, purged_rev, purged.records, {"digest": purged_digest, "removed": len(ds) - len(purged)}
            )
        out = {
            "dataset_rev": rev,
            "purged_rev": purged_rev,
            "forget_set_sha256": forget_sha,
            "scope": sel.scope,
            "forget": len(sel.forget),
            "erased": len(ds) - len(purged),
        }
        ctx.store.finish_step(
            run.run_id, "extract_forget_set", out, purged_rev=purged_rev, forget_set_sha256=forget_sha
        )
    return out


# ---- 2. unlearn -----------------------------------------------------------------------------------


def _registry_model(ctx: StepContext, version: str) -> Path:
    """A model version's folder, downloaded once into the workspace's cache."""
    from ..tracking import configure, download_version

    client = configure(ctx.settings)
    name = ctx.settings.model_name
    dest = cache_root(ctx.settings) / name / f"v{version}"
    if not (dest / "unlearn_model.json").is_file():
        download_version(client, name, version, dest)
    return dest


def _original_model(ctx: StepContext, parent_version: str, base_dir: Path) -> tuple[Path | None, str]:
    """The lineage's first model for the audit's utility gates, and what became of it (a tag's value).

    None when the parent is that model, or when it can no longer be read: retired (its weights
    hold deleted data and are gone) or not the model the parent's lineage started from. The audit
    then judges utility against the parent alone, as for a first deletion.
    """
    from ..models.digest import model_digest
    from ..models.lineage import prior_deletions
    from ..tracking import TAG_PREFIX, configure
    from ..tracking.registry import lineage_root

    meta = json.loads((base_dir / "unlearn_model.json").read_text())
    deletions = prior_deletions(meta.get("lineage"))
    if not deletions:
        return None, "parent"
    root = lineage_root(configure(ctx.settings), ctx.settings.model_name, parent_version)
    version = str(root.version)
    if (root.tags or {}).get(f"{TAG_PREFIX}tombstone") == "true":
        return None, f"v{version} retired"
    path = _registry_model(ctx, version)
    if model_digest(path) != deletions[0].get("parent_model_sha256"):
        return None, f"v{version} is not the lineage's first model"
    return path, f"v{version}"


def unlearn_step(
    ctx: StepContext, dataset_rev: str, forget_set_sha256: str, algorithm: str, options: dict, model_dir: str
) -> dict[str, Any]:
    import mlflow

    from ..models.digest import model_digest
    from ..tracking import log_dataset, step_run
    from ..unlearning import erase

    with guarded(ctx, "unlearn") as run:
        parent_version = str(run.parent_version)
        files = ctx.files(run.run_id)
        done = run.steps.get("unlearn")
        with step_run(ctx.settings, ctx.lineage_run_id, "unlearn", ctx.tags(run.run_id), system_metrics=True):
            if (
                done
                and files.restore("model", model_dir)
                and (Path(model_dir) / "unlearn_model.json").is_file()
                and model_digest(model_dir) == done["model_sha256"]
            ):
                # An earlier attempt of this run finished unlearning: reuse its model.
                mlflow.set_tag("unlearn.reused_from_attempt", "true")
                out = {k: done[k] for k in ("parent_version", "steps", "seconds", "stop")}
            else:
                base_dir = _registry_model(ctx, parent_version)
                ds, sel = ctx.selection(dataset_rev, forget_set_sha256)
                text_to_image = is_text_to_image_folder(base_dir)
                mlflow.log_params(
                    {
                        "algorithm": algorithm,
                        "parent_version": parent_version,
                        **{f"option.{k}": v for k, v in typed_options(algorithm, options, text_to_image).items()},
                    }
                )
                name = Path(ctx.settings.dataset_path).name
                log_dataset(
                    f"{name}-retain@{dataset_rev[:8]}",
                    ctx.dataset_source,
                    ctx.workspace.dataset_path,
                    dataset_rev,
                    sel.forget_set_sha256(),
                    "retain",
                    len(sel.retain),
                )
                if text_to_image:
                    from ..t2i.run import erase_t2i

                    # Each deleted record's influence, conditioned on its own caption.
                    method = erase_t2i
                else:
                    method = erase
                # Checkpoints belong to the run: a restarted or resumed attempt continues from them.
                with files.checkpoints() as checkpoint_dir:
                    result, record = method(
                        base_dir,
                        ds.root,
                        ctx.batch.targets,
                        algorithm,
                        model_dir,
                        overrides=options,
                        overwrite=True,
                        progress=False,
                        checkpoint_dir=checkpoint_dir,
                    )
                mlflow.log_metrics({"unlearning_steps": result.steps, "unlearning_seconds": result.seconds})
                for key in ("loss_r", "loss_f", "lam"):
                    values = result.history.get(key, [])
                    if values:
                        mlflow.log_metric(f"final_{key}", values[-1])
                _log_history(result.history)
                mlflow.log_dict(record | {"history": {}}, "unlearning.json")
                curves = Path(model_dir) / "unlearning_curves.png"
                if curves.is_file():
                    mlflow.log_artifact(str(curves))
                out = {
                    "parent_version": parent_version,
                    "steps": result.steps,
                    "seconds": result.seconds,
                    "stop": (getattr(result, "stop", None) or {}).get("reason", ""),
                }
                files.keep("model", model_dir)
        ctx.store.finish_step(run.run_id, "unlearn", out | {"model_sha256": model_digest(model_dir)})
    return out


def typed_options(algorithm: str, options: Mapping[str, Any], text_to_image: bool = False) -> dict[str, Any]:
    """The run's options as the unlearner reads them, for the run's params.

    kfp hands options over as JSON, where every number is a float: a seed of 1 arrives as 1.0
    and would be logged so. The algorithm's config knows each option's type.
    """
    from ..unlearning.base import make_unlearner

    given = dict(options)
    if text_to_image:
        from ..t2i.run import t2i_unlearner

        unlearner, per_prompt = t2i_unlearner(algorithm, given)
        if "generate_per_prompt" in given:
            given["generate_per_prompt"] = per_prompt
    else:
        unlearner = make_unlearner(algorithm, given)
    config = unlearner.config
    return {k: getattr(config, k.replace("-", "_"), v) for k, v in given.items()}


def _log_history(history: dict[str, list[float]]) -> None:
    """Every recorded training curve as MLflow metric history (``unlearn.<key>`` by step): charts in the UI."""
    import math
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"unlearn.{key}", float(v), now, step)
        for key, values in sorted(history.items())
        for step, v in enumerate(values)
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    for at in range(0, len(metrics), 1000):  # the tracking API takes at most 1000 per batch
        client.log_batch(run_id, metrics=metrics[at : at + 1000])


# ---- 3. audit -------------------------------------------------------------------------------------


def _evaluator(ctx: StepContext, ds: Dataset, rev: str) -> Path:
    """One evaluator per dataset version, kept in the workspace so re-audits share the judge.

    The judge is a model fitted on ``rev``'s records (a commit the extract step resolved) and names
    that revision in its meta, so the erasure after a commit retires it once those records are gone
    (``erasure.sweep_judges``).
    """
    from ..audit import train_evaluator
    from ..audit.evaluator import META, RECIPE

    digest = ds.digest()
    name = f"{digest[:16]}-{RECIPE}"
    dest = cache_root(ctx.settings) / "evaluators" / name
    if not (dest / META).is_file():
        ev = stored_judge(name, digest)
        if ev is None:
            ev = train_evaluator(ds, progress=False)
            store_judge(name, ev)
        ev.meta.dataset_rev = rev
        ev.save(dest, overwrite=True)  # staged and renamed: a killed step leaves no half judge
    return dest


# A judge is a function of the dataset's content and the recipe: where ``UNLEARN_JUDGE_STORE`` names
# a folder, judges are kept there by dataset digest and shared by every workspace on the machine
# (the test suite and the benchmarks start hundreds of workspaces from the same data; training one
# judge costs ~1 CPU-minute, most of a cheap audit). Off by default, and for synthetic data only:
# the erasure sweeps a workspace's judges, never this folder, which keeps models fitted on records
# that a later request erases.
JUDGE_STORE_ENV = "UNLEARN_JUDGE_STORE"


def stored_judge(name: str, digest: str) -> Evaluator | None:
    """The store's judge ``name`` when it loads and was fitted on the dataset of ``digest``."""
    from ..audit import Evaluator

    root = os.environ.get(JUDGE_STORE_ENV)
    if not root:
        return None
    try:
        ev = Evaluator.load(Path(root) / name)
    except Exception:  # absent, torn (safetensors raises its own error) or foreign: trained again
        return None
    return ev if ev.meta.dataset_digest == digest else None


def store_judge(name: str, ev: Evaluator) -> None:
    """Keep ``ev`` in the store, replacing whatever did not load there."""
    root = os.environ.get(JUDGE_STORE_ENV)
    if not root or stored_judge(name, ev.meta.dataset_digest) is not None:
        return
    try:
        ev.save(Path(root) / name, overwrite=True)
    except OSError:
        pass  # read-only, or another process stored it first: the next workspace loads or trains one


def audit_step(
    ctx: StepContext,
    dataset_rev: str,
    purged_rev: str,
    forget_set_sha256: str,
    model_dir: str,
    parent_version: str,
    audit_params: dict,
    audit_dir: str,
) -> dict[str, Any]:
    import mlflow

    from ..audit import AuditParams, run_audit
    from ..audit.gates import relaxed_summary
    from ..models.digest import model_digest
    from ..t2i.audit import T2IAuditParams, audit_request
    from ..tracking import step_run
    from ..unlearning.base import build_config

    with guarded(ctx, "audit") as run:
        files = ctx.files(run.run_id)
        done = run.steps.get("audit")
        digest = model_digest(model_dir)
        with step_run(ctx.settings, ctx.lineage_run_id, "audit", ctx.tags(run.run_id), system_metrics=True):
            if (
                done
                and done.get("model_sha256") == digest
                and files.restore("audit", audit_dir)
                and (Path(audit_dir) / "audit.json").is_file()
            ):
                record = json.loads((Path(audit_dir) / "audit.json").read_text())
                metrics = done["metrics"]
                mlflow.set_tag("unlearn.reused_from_attempt", "true")
            else:
                base_dir = _registry_model(ctx, parent_version)
                t2i = is_text_to_image_folder(base_dir)
                if t2i:
                    params = build_config(T2IAuditParams, audit_params, where="the text-to-image audit")
                else:
                    params = build_config(
                        AuditParams, {"redact_forget_images": True, **audit_params}, where="the audit"
                    )
                ds, sel = ctx.selection(dataset_rev, forget_set_sha256)
                # The judge of a class erasure must know the class (the erasure after the commit
                # retires it); for record deletions it is trained on the purged version.
                judge_rev = dataset_rev if sel.scope == "class" else purged_rev
                judge_ds = ds if sel.scope == "class" else ctx.dataset(purged_rev)
                failpoint("audit.running")
                audit = audit_request if t2i else run_audit
                extra: dict[str, Any] = {}
                if not t2i:
                    original, about = _original_model(ctx, parent_version, base_dir)
                    mlflow.set_tag("unlearn.audit_original", about)
                    extra["original_dir"] = original
                result = audit(
                    base_dir,
                    model_dir,
                    ds.root,
                    ctx.batch.targets,
                    audit_dir,
                    params=params,
                    evaluator_dir=_evaluator(ctx, judge_ds, judge_rev),
                    overwrite=True,
                    progress=False,
                    hard_limits=ctx.settings.audit_hard_limits,
                    **extra,
                )
                record = result.record
                metrics = {f"audit.{m.name}": m.value for m in result.metrics if m.value is not None}
                files.keep("audit", audit_dir)
            passed = record["verdict"] == "pass"
            mlflow.log_metrics(metrics | {"audit.passed": float(passed)})
            mlflow.set_tag("unlearn.audit_verdict", record["verdict"])
            mlflow.set_tag("unlearn.audit_relaxed", relaxed_summary(record.get("relaxed") or {}))
            mlflow.set_tag("unlearn.audit_hard_limits", "on" if record.get("hard_limits", True) else "off")
            mlflow.log_artifacts(audit_dir, artifact_path="audit")
        # The run's outcome line names these: a pass that rests on fewer gates than it shows is said so.
        inconclusive = inconclusive_gates(record)
        ctx.store.finish_step(
            run.run_id,
            "audit",
            {"verdict": record["verdict"], "metrics": metrics, "model_sha256": digest, "inconclusive": inconclusive},
        )
    return {"verdict": record["verdict"], "passed": passed, "metrics": metrics}


# ---- 4. register: the commit ----------------------------------------------------------------------


def _failed_gates(audit: dict) -> str:
    return ", ".join(failed_gates(audit)) or "see the report"


def _run_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version an earlier attempt of this run registered, if any (registering is idempotent)."""
    from ..tracking import TAG_PREFIX

    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get(f"{TAG_PREFIX}run_id") == run_id:
            return mv
    return None


def register_step(
    ctx: StepContext,
    model_dir: str,
    audit_dir: str,
    parent_version: str,
    dataset_rev: str,
    purged_rev: str,
    forget_set_sha256: str,
    algorithm: str,
) -> dict[str, Any]:
    import mlflow

    from ..audit.gates import relaxed_summary
    from ..storage import store_from_settings
    from ..tracking import (
        CANDIDATE,
        PRODUCTION,
        alias_version,
        check_reachable,
        configure,
        log_dataset,
        register_version,
        set_alias,
        step_run,
    )

    with guarded(ctx, "register") as run:
        store, ws = ctx.store, ctx.workspace
        client = configure(ctx.settings)
        name = ctx.settings.model_name
        audit = json.loads((Path(audit_dir) / "audit.json").read_text())
        passed = audit["verdict"] == "pass"
        with step_run(ctx.settings, ctx.lineage_run_id, "register", ctx.tags(run.run_id)):
            failpoint("register.before")
            check_reachable(ctx.settings)
            mv = _run_version(client, name, run.run_id)
            created = mv is None
            if mv is None:
                from ..tracking.pyfunc import log_model_folder

                log_model_folder(model_dir, artifact_path="model")
                name_ds = Path(ctx.settings.dataset_path).name
                for rev, context in ((dataset_rev, "source"), (purged_rev, "purged")):
                    ds = ctx.dataset(rev)
                    log_dataset(
                        f"{name_ds}@{rev[:8]}", ctx.dataset_source, ws.dataset_path, rev, ds.digest(), context, len(ds)
                    )
                tags = {
                    "request_ids": ",".join(ctx.batch.request_ids),
                    "batch_id": ctx.batch.batch_id,
                    "run_id": run.run_id,
                    "forget_set_sha256": forget_set_sha256,
                    "parent_version": parent_version,
                    "dataset_rev_before": dataset_rev,
                    "dataset_rev_after": purged_rev,
                    "algorithm": algorithm,
                    "audit_verdict": audit["verdict"],
                    # Every audit setting looser than the defaults that judged this version.
                    "audit_relaxed": relaxed_summary(audit.get("relaxed") or {}),
                    "audit_hard_limits": "on" if audit.get("hard_limits", True) else "off",
                    # Gates that did not fail but could not have (too few forget images or samples for the test).
                    "audit_inconclusive": ",".join(inconclusive_gates(audit)) or "none",
                    "pipeline_run_id": ctx.lineage_run_id,
                    "bases": ",".join(sorted({r.basis for r in ctx.batch.requests})),
                    # What failed, by gate and by group: the driver draws the unlearning again only
                    # when every failed gate is a utility gate (pipelines.run.redraw_reason).
                    "audit_failed": ",".join(failed_gates(audit)) or "none",
                    "audit_failed_groups": ",".join(failed_gate_groups(audit)) or "none",
                }
                mv = register_version(
                    client,
                    name,
                    mlflow.active_run().info.run_id,
                    tags,
                    description=f"unlearned {', '.join(ctx.batch.request_ids)} from v{parent_version}",
                )
            version = str(mv.version)
            failpoint("register.after_version")
            try:
                exports = store_from_settings(ctx.settings)
                model_uri = exports.upload_dir(model_dir, f"models/{name}/v{version}")
                report_uri = exports.upload_dir(audit_dir, f"reports/{ctx.batch.batch_id}/v{version}")
                client.set_model_version_tag(name, version, "unlearn.export_uri", model_uri)
                client.set_model_version_tag(name, version, "unlearn.report_uri", report_uri)
            except Exception:
                # No version without its exports: the retry registers afresh. (A crash here instead
                # leaves it for the resumed attempt, which finds it by its run_id tag.)
                if created:
                    with contextlib.suppress(Exception):
                        client.delete_model_version(name, version)
                raise
            _write_card(ctx, client, name, version, audit, report_uri)
            evidence = {
                "model": name,
                "version": version,
                "verdict": audit["verdict"],
                "forget_set_sha256": forget_set_sha256,
                "dataset_rev_before": dataset_rev,
                "dataset_rev_after": purged_rev,
                "parent_version": parent_version,
                "run_id": run.run_id,
                "pipeline_run_id": ctx.lineage_run_id,
                "report_uri": report_uri,
            }
            if not passed:
                set_alias(client, name, CANDIDATE, version)
                mlflow.set_tags({"unlearn.version": version, "unlearn.alias": CANDIDATE})
                # The purged revision was never served; the run's prepared state goes with it.
                ws.drop_run_ref(run.run_id)
                fail_run(
                    ctx,
                    run,
                    "audit",
                    f"audit failed ({_failed_gates(audit)}): version {version} is a candidate; production "
                    f"stays on v{parent_version}",
                    retryable=False,
                )
                store.update_run(run.run_id, version=version, verdict="fail")
                return {"version": version, "alias": CANDIDATE, "verdict": audit["verdict"], "reused": False}
            # ---- the commit point: every check first, then the effects, in an order a resumed
            # attempt can finish from wherever a crash left it.
            current = str(alias_version(client, name, PRODUCTION))
            if current not in (parent_version, version):
                raise RunConflict(
                    f"production moved from v{parent_version} to v{current} during the run; rerun the request"
                )
            served = ws.served()
            if served not in (dataset_rev, purged_rev):
                raise RunConflict(
                    f"the served dataset moved from {dataset_rev[:12]} to {served[:12]} during the run; "
                    "rerun the request"
                )
            if not store.renew_lease(model_lease(run.model), run.run_id, ctx.settings.lease_ttl_seconds):
                raise StateError(f"run {run.run_id} lost its lease before publishing; nothing was published")
            store.update_run(run.run_id, committing=True, version=version, verdict="pass")
            ws.publish(purged_rev, dataset_rev)
            failpoint("register.after_publish")
            set_alias(client, name, PRODUCTION, version)
            with contextlib.suppress(Exception):
                if str(alias_version(client, name, CANDIDATE)) == version:
                    client.delete_registered_model_alias(name, CANDIDATE)
            mlflow.set_tags({"unlearn.version": version, "unlearn.alias": PRODUCTION})
            store.complete(run.run_id, ctx.batch.request_ids, version, evidence)
            _after_commit(ctx, run, client, dataset_rev, purged_rev)
        ws.drop_run_ref(run.run_id)
        ctx.files(run.run_id).drop()
    return {"version": version, "alias": PRODUCTION, "verdict": audit["verdict"], "reused": False}


def _write_card(ctx: StepContext, client: Any, name: str, version: str, audit: dict, report_uri: str) -> None:
    """The version's page in MLflow: a model card and a link to the audit report it was judged by."""
    from ..tracking import TAG_PREFIX
    from ..tracking.card import find_step_run, model_card

    links = {"report (exported)": f"{report_uri}/report.html"}
    audit_run = find_step_run(client, ctx.lineage_run_id, "audit")
    if audit_run is not None:
        report = f"runs:/{audit_run.info.run_id}/audit/report.html"
        links["report (MLflow artifact of the audit step)"] = report
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}audit_run_id", audit_run.info.run_id)
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}report", report)
    mv = client.get_model_version(name, version)
    tags = {k.removeprefix(TAG_PREFIX): v for k, v in (mv.tags or {}).items() if k.startswith(TAG_PREFIX)}
    client.update_model_version(name, version, description=model_card(tags, audit, links))


def _after_commit(ctx: StepContext, run: RunRow, client: Any, dataset_rev: str, purged_rev: str) -> None:
    """The deletion stands; now its data leaves the stores and the versions holding it retire.

    Neither may fail the committed run: a failure is recorded and finished by the next
    ``unlearn requests run-pending`` or ``unlearn registry prune``.
    """
    import mlflow

    from .erasure import ERASE_FAILED, apply_retention, erase_committed

    records = (run.steps.get("extract_forget_set") or {}).get("erased")
    try:
        failpoint("register.before_erase")
        counts = erase_committed(
            ctx.settings, ctx.workspace, ctx.store, run.run_id, ctx.batch.request_ids, dataset_rev, purged_rev, records
        )
        mlflow.log_metrics({f"erased.{k}": float(v) for k, v in counts.items() if isinstance(v, int)})
    except Exception as err:
        for rid in ctx.batch.request_ids:
            ctx.store.record_event(ERASE_FAILED, request_id=rid, run_id=run.run_id, error=error_line(err))
        mlflow.set_tag("unlearn.erase_error", error_line(err))
    try:
        retired = apply_retention(ctx.settings, client)
        mlflow.set_tag("unlearn.retired_versions", ",".join(r.version for r in retired) or "none")
    except Exception as err:
        mlflow.set_tag("unlearn.retention_error", error_line(err))


# ---- exit handler ---------------------------------------------------------------------------------


def finalize_step(ctx: StepContext, state: str, error_message: str = "", kfp_run_id: str = "") -> dict[str, Any]:
    """Close the run: its row first (the record of truth), then the MLflow parent run, then the lease.

    A step that died without recording its failure (killed, out of memory) leaves the run
    ``running``: it is marked interrupted here, and its requests wait for a retry that resumes it.
    """
    store = ctx.store
    run = ctx.run()
    if run.state == RUN_RUNNING:
        step = next((s for s in STEPS if s not in run.steps), "unknown")
        fail_run(ctx, run, step, redact(error_message or f"step {step} ended without a result ({state})"), True)
        run = ctx.run()
    ok = run.state == RUN_SUCCEEDED
    tags = {
        "unlearn.status": "succeeded" if ok else "failed",
        "unlearn.kfp_state": state,
        "unlearn.run_state": run.state,
    }
    if run.version:
        tags["unlearn.version"] = run.version
    if kfp_run_id:
        tags["kfp.run_id"] = kfp_run_id
    from ..containers import container_identity

    tags.update({f"unlearn.exit_handler.{k}": v for k, v in container_identity().items() if v})
    if not ok:
        tags["unlearn.failed_step"] = run.failed_step or "unknown"
        if run.error:
            tags["unlearn.error"] = run.error[:500]
    try:
        from ..tracking import client_for, configure

        configure(ctx.settings)
        client = client_for(ctx.settings)
        for k, v in tags.items():
            client.set_tag(ctx.lineage_run_id, k, v)
        client.set_terminated(ctx.lineage_run_id, status="FINISHED" if ok else "FAILED")
    except Exception as err:
        tags["unlearn.mlflow_error"] = error_line(err)
    store.release_lease(model_lease(run.model), run.run_id)
    return {"ok": ok, "failed_step": run.failed_step, **tags}


def check_run_options(algorithm: str, options: Mapping[str, Any], audit_params: Mapping[str, Any]) -> None:
    """Refuse options that no model family takes, before anything is created.

    Which family a run unlearns is only known once its model is downloaded; the unlearn and
    audit steps check the options again against that family (a mismatch fails the run
    permanently, with the same message).
    """
    from ..audit import AuditParams
    from ..unlearning import make_unlearner
    from ..unlearning.base import build_config

    def class_conditional() -> None:
        make_unlearner(algorithm, dict(options))
        build_config(AuditParams, dict(audit_params), where="the audit").validate()

    def text_to_image() -> None:
        # Only where the options are not the class-conditional family's: the text-to-image
        # modules import diffusers and transformers (seconds for every `pipeline run`).
        from ..t2i.audit import T2IAuditParams
        from ..t2i.run import t2i_unlearner

        t2i_unlearner(algorithm, dict(options))
        build_config(T2IAuditParams, dict(audit_params), where="the text-to-image audit").validate()

    try:
        class_conditional()
    except UnlearnError as first:
        try:
            text_to_image()
        except UnlearnError:
            raise first from None


def check_model_registered(settings: Settings) -> str:
    """Preflight: the model exists and has a production version; returns it."""
    from ..tracking import configure, production_version

    return str(production_version(configure(settings), settings.model_name).version)


__all__ = [
    "FAILED",
    "STEPS",
    "RunConflict",
    "StepContext",
    "audit_step",
    "extract_step",
    "finalize_step",
    "register_step",
    "unlearn_step",
]
