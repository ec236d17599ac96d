"""The four steps of a compliance run, and the exit handler, as library functions.

Each step reads the dataset from the workspace at a DVC revision, does its work with
``unlearn_lib``, records a nested MLflow run under the pipeline's parent run, and writes
its outputs to the folders it is given (the kfp artifacts). Artifacts carry record IDs and
hashes, never the forgotten images; every step re-materializes data from the workspace.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.manifest import Dataset
from ..data.selection import Selection, select
from ..errors import UnlearnError
from ..requests.queue import RequestQueue
from ..requests.schema import DeletionBatch
from ..settings import Settings
from ..utils import write_json
from ..workspace import Workspace

STEPS = ("extract_forget_set", "unlearn", "audit", "register")


@dataclass
class StepContext:
    settings: Settings
    batch: DeletionBatch
    lineage_run_id: str

    @classmethod
    def parse(cls, settings_json: str, batch_json: str, lineage_run_id: str) -> StepContext:
        return cls(Settings.from_public(json.loads(settings_json)), DeletionBatch.from_json(batch_json), lineage_run_id)

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.settings.workspace, self.settings.dataset_path)

    def dataset(self, rev: str) -> Dataset:
        return self.workspace.dataset(rev)

    def selection(self, rev: str, expected_sha256: str | None = None) -> tuple[Dataset, Selection]:
        ds = self.dataset(rev)
        sel = select(ds, self.batch.targets, strict=True)
        if expected_sha256 and sel.forget_set_sha256() != expected_sha256:
            raise UnlearnError(
                f"forget set at revision {rev[:12]} does not match the extracted one "
                f"({sel.forget_set_sha256()[:12]} != {expected_sha256[:12]})"
            )
        return ds, sel

    def tags(self) -> dict[str, str]:
        return {
            "request_ids": ",".join(self.batch.request_ids),
            "batch_id": self.batch.batch_id,
            "pipeline_run_id": self.lineage_run_id,
        }


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
    ctx: StepContext, dataset_rev: str, forget_dir: str, retain_dir: str, holdout_dir: str, purged_dir: str
) -> dict[str, Any]:
    from ..tracking import log_dataset, step_run

    ws = ctx.workspace
    rev = ws.resolve(dataset_rev)
    with step_run(ctx.settings, ctx.lineage_run_id, "extract_forget_set", ctx.tags()):
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
        log_dataset(f"{name}@{rev[:8]}", str(ws.root), ws.dataset_path, rev, ds.digest(), "source", len(ds))
        _write_ids(
            forget_dir,
            rev,
            sel.forget,
            {"forget_set_sha256": forget_sha, "scope": sel.scope, "targets": summary["targets"]},
        )
        _write_ids(retain_dir, rev, sel.retain)
        _write_ids(holdout_dir, rev, sel.holdout, {"purged": [r.record_id for r in sel.purged_holdout]})
        purged_rev = ws.purge(summary["targets"], ctx.batch.request_ids, forget_sha)
        purged = ws.dataset(purged_rev)
        purged_digest = purged.digest()
        log_dataset(
            f"{name}@{purged_rev[:8]}", str(ws.root), ws.dataset_path, purged_rev, purged_digest, "purged", len(purged)
        )
        mlflow.log_param("dataset_rev_after", purged_rev)
        _write_ids(purged_dir, purged_rev, purged.records, {"digest": purged_digest, "removed": len(ds) - len(purged)})
    return {
        "dataset_rev": rev,
        "purged_rev": purged_rev,
        "forget_set_sha256": forget_sha,
        "scope": sel.scope,
        "forget": len(sel.forget),
    }


# ---- 2. unlearn -----------------------------------------------------------------------------------


def _registry_model(ctx: StepContext, version: str | None = None) -> tuple[str, Path]:
    """The model version (production unless given) downloaded once into the workspace's cache."""
    from ..tracking import configure, download_version, production_version

    client = configure(ctx.settings)
    name = ctx.settings.model_name
    if version is None:
        version = str(production_version(client, name).version)
    dest = ctx.settings.workspace_path / "registry-cache" / name / f"v{version}"
    if not (dest / "unlearn_model.json").is_file():
        download_version(client, name, version, dest)
    return version, dest


def unlearn_step(
    ctx: StepContext, dataset_rev: str, forget_set_sha256: str, algorithm: str, options: dict, model_dir: str
) -> dict[str, Any]:
    import mlflow

    from ..tracking import log_dataset, step_run
    from ..unlearning import erase

    with step_run(ctx.settings, ctx.lineage_run_id, "unlearn", ctx.tags()):
        parent_version, base_dir = _registry_model(ctx)
        ds, sel = ctx.selection(dataset_rev, forget_set_sha256)
        mlflow.log_params(
            {"algorithm": algorithm, "parent_version": parent_version, **{f"option.{k}": v for k, v in options.items()}}
        )
        name = Path(ctx.settings.dataset_path).name
        log_dataset(
            f"{name}-retain@{dataset_rev[:8]}",
            str(ctx.workspace.root),
            ctx.workspace.dataset_path,
            dataset_rev,
            sel.forget_set_sha256(),
            "retain",
            len(sel.retain),
        )
        # Checkpoints outlive a preempted pod: a restarted step with the same request resumes.
        ckpt = ctx.settings.workspace_path / "checkpoints" / f"{ctx.batch.batch_id}-{forget_set_sha256[:12]}"
        result, record = erase(
            base_dir,
            ds.root,
            ctx.batch.targets,
            algorithm,
            model_dir,
            overrides=options,
            overwrite=True,
            progress=False,
            checkpoint_dir=ckpt,
        )
        mlflow.log_metrics({"unlearning_steps": result.steps, "unlearning_seconds": result.seconds})
        for key in ("loss_r", "loss_f", "lam"):
            values = result.history.get(key, [])
            if values:
                mlflow.log_metric(f"final_{key}", values[-1])
        mlflow.log_dict(record | {"history": {}}, "unlearning.json")
        curves = Path(model_dir) / "unlearning_curves.png"
        if curves.is_file():
            mlflow.log_artifact(str(curves))
    return {
        "parent_version": parent_version,
        "steps": result.steps,
        "seconds": result.seconds,
        "stop": (result.stop or {}).get("reason", ""),
    }


# ---- 3. audit -------------------------------------------------------------------------------------


def _evaluator(ctx: StepContext, ds: Dataset) -> Path:
    """One evaluator per dataset version, kept in the workspace so re-audits share the judge."""
    from ..audit import train_evaluator

    dest = ctx.settings.workspace_path / "registry-cache" / "evaluators" / ds.digest()[:16]
    if not (dest / "evaluator.json").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        train_evaluator(ds, progress=False).save(dest)
    return dest


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
    from ..tracking import step_run
    from ..unlearning.base import build_config

    with step_run(ctx.settings, ctx.lineage_run_id, "audit", ctx.tags()):
        params = build_config(AuditParams, {"redact_forget_images": True, **audit_params}, where="the audit")
        _, base_dir = _registry_model(ctx, parent_version)
        ds, sel = ctx.selection(dataset_rev, forget_set_sha256)
        # The judge of a class erasure must know the class; for record deletions it is trained
        # on the purged version, so no model kept after the run was fitted on deleted records.
        judge_ds = ds if sel.scope == "class" else ctx.dataset(purged_rev)
        result = run_audit(
            base_dir,
            model_dir,
            ds.root,
            ctx.batch.targets,
            audit_dir,
            params=params,
            evaluator_dir=_evaluator(ctx, judge_ds),
            overwrite=True,
        )
        metrics = {f"audit.{m.name}": m.value for m in result.metrics if m.value is not None}
        mlflow.log_metrics(metrics | {"audit.passed": float(result.passed)})
        mlflow.set_tag("unlearn.audit_verdict", result.record["verdict"])
        mlflow.log_artifacts(audit_dir, artifact_path="audit")
    return {"verdict": result.record["verdict"], "passed": result.passed, "metrics": metrics}


# ---- 4. register ----------------------------------------------------------------------------------


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

    from ..storage import store_from_settings
    from ..tracking import configure, log_dataset, promote, register_version, step_run, versions_for_request

    client = configure(ctx.settings)
    name = ctx.settings.model_name
    audit = json.loads((Path(audit_dir) / "audit.json").read_text())
    passed = audit["verdict"] == "pass"
    existing = [
        mv
        for rid in ctx.batch.request_ids
        for mv in versions_for_request(client, name, rid)
        if (mv.tags or {}).get("unlearn.forget_set_sha256") == forget_set_sha256
    ]
    with step_run(ctx.settings, ctx.lineage_run_id, "register", ctx.tags()):
        if existing:
            mv = existing[0]
            mlflow.set_tag("unlearn.reused_version", mv.version)
            return {"version": str(mv.version), "alias": "", "verdict": audit["verdict"], "reused": True}
        mlflow.log_artifacts(model_dir, artifact_path="model")
        # The version's own run names the dataset versions it stands between.
        ws, name_ds = ctx.workspace, Path(ctx.settings.dataset_path).name
        for rev, context in ((dataset_rev, "source"), (purged_rev, "purged")):
            ds = ws.dataset(rev)
            log_dataset(f"{name_ds}@{rev[:8]}", str(ws.root), ws.dataset_path, rev, ds.digest(), context, len(ds))
        tags = {
            "request_ids": ",".join(ctx.batch.request_ids),
            "batch_id": ctx.batch.batch_id,
            "forget_set_sha256": forget_set_sha256,
            "parent_version": parent_version,
            "dataset_rev_before": dataset_rev,
            "dataset_rev_after": purged_rev,
            "algorithm": algorithm,
            "audit_verdict": audit["verdict"],
            "pipeline_run_id": ctx.lineage_run_id,
            "bases": ",".join(sorted({r.basis for r in ctx.batch.requests})),
        }
        mv = register_version(
            client,
            name,
            mlflow.active_run().info.run_id,
            tags,
            description=f"unlearned {', '.join(ctx.batch.request_ids)} from v{parent_version}",
        )
        alias = promote(client, name, mv.version, passed)
        store = store_from_settings(ctx.settings)
        model_uri = store.upload_dir(model_dir, f"models/{name}/v{mv.version}")
        report_uri = store.upload_dir(audit_dir, f"reports/{ctx.batch.batch_id}/v{mv.version}")
        client.set_model_version_tag(name, mv.version, "unlearn.export_uri", model_uri)
        client.set_model_version_tag(name, mv.version, "unlearn.report_uri", report_uri)
        mlflow.set_tags({"unlearn.version": mv.version, "unlearn.alias": alias})
        queue = RequestQueue(ctx.settings.workspace_path / "requests")
        evidence = {
            "model": name,
            "version": str(mv.version),
            "alias": alias,
            "verdict": audit["verdict"],
            "forget_set_sha256": forget_set_sha256,
            "dataset_rev_after": purged_rev,
            "pipeline_run_id": ctx.lineage_run_id,
            "report_uri": report_uri,
        }
        for req in ctx.batch.requests:
            if passed:
                queue.mark_done(req, evidence)
            else:
                queue.record_attempt(req.request_id, evidence)
    return {"version": str(mv.version), "alias": alias, "verdict": audit["verdict"], "reused": False}


# ---- exit handler ---------------------------------------------------------------------------------


def finalize_step(ctx: StepContext, state: str, error_message: str = "") -> dict[str, Any]:
    """Close the parent run; on failure name the failing step and keep the requests pending."""
    from ..tracking import client_for, configure

    configure(ctx.settings)
    client = client_for(ctx.settings)
    parent = client.get_run(ctx.lineage_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{ctx.lineage_run_id}'"
    )
    status = {c.data.tags.get("unlearn.step"): c.info.status for c in children}
    failed_step = next((s for s in STEPS if status.get(s) in ("FAILED", "RUNNING")), None)
    if failed_step is None and state != "SUCCEEDED":
        failed_step = next((s for s in STEPS if status.get(s) != "FINISHED"), "unknown")
    ok = state == "SUCCEEDED" and failed_step is None
    register = next((c for c in children if c.data.tags.get("unlearn.step") == "register"), None)
    tags = {"unlearn.status": "succeeded" if ok else "failed", "unlearn.kfp_state": state}
    if register is not None:
        for key in ("unlearn.version", "unlearn.alias"):
            if key in register.data.tags:
                tags[key] = register.data.tags[key]
    if not ok:
        tags["unlearn.failed_step"] = failed_step or "unknown"
        child = next((c for c in children if c.data.tags.get("unlearn.step") == failed_step), None)
        err = (child.data.tags.get("unlearn.error") if child else None) or error_message
        if err:
            tags["unlearn.error"] = err[:500]
        queue = RequestQueue(ctx.settings.workspace_path / "requests")
        for rid in ctx.batch.request_ids:
            queue.record_attempt(
                rid,
                {
                    "pipeline_run_id": ctx.lineage_run_id,
                    "failed_step": failed_step,
                    "error": tags.get("unlearn.error", ""),
                },
            )
    for k, v in tags.items():
        client.set_tag(ctx.lineage_run_id, k, v)
    client.set_terminated(ctx.lineage_run_id, status="FINISHED" if ok else "FAILED")
    return {"ok": ok, "failed_step": failed_step, **tags}


def check_model_registered(settings: Settings) -> str:
    """Preflight: the model exists and has a production version; returns it."""
    from ..tracking import configure, production_version

    return str(production_version(configure(settings), settings.model_name).version)
