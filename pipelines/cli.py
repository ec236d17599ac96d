"""`unlearn pipeline ...` and `unlearn requests run-pending`: commands that need kfp.

Registered into the `unlearn` command through the ``unlearn.commands`` entry point, so the
core library stays free of kfp.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from unlearn_lib.errors import ConfigError, UnlearnError
from unlearn_lib.requests import DeletionBatch, RequestQueue, load_request, parse_request
from unlearn_lib.settings import Settings

EXIT_FAILED = 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.settings, workspace=getattr(args, "workspace", None))


def _options(args: argparse.Namespace) -> tuple[dict, dict]:
    from unlearn_lib.cli import overrides_from

    return overrides_from(args.options, args.set), overrides_from(args.audit_params, args.audit_set)


def _print_outcome(outcome: Any, settings: Settings) -> int:
    from rich.console import Console

    c = Console()
    if outcome.status == "already-done":
        c.print(f"[yellow]{outcome.message}")
        return 0
    color = "green" if outcome.status == "succeeded" and outcome.verdict == "pass" else "red"
    c.print(
        f"[bold {color}]{outcome.status}[/]: verdict {outcome.verdict or '-'}, version {outcome.version or '-'} "
        f"(alias {outcome.alias or '-'}), MLflow run {outcome.lineage_run_id}"
    )
    if outcome.failed_step:
        c.print(f"[red]failed step: {outcome.failed_step}: {outcome.error or ''}")
    c.print(f"open the lineage: mlflow ui --backend-store-uri {settings.tracking_uri}")
    return 0 if outcome.status == "succeeded" else EXIT_FAILED


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compliance import compile_pipeline

    print(f"wrote {compile_pipeline(args.out)}")
    return 0


def _batch(args: argparse.Namespace) -> DeletionBatch:
    return DeletionBatch(tuple(load_request(p) for p in args.request))


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_local

    settings = _settings(args)
    options, audit = _options(args)
    outcome = run_local(settings, _batch(args), args.dataset_rev, args.algorithm, options, audit)
    return _print_outcome(outcome, settings)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.run import submit

    settings = _settings(args)
    host = args.host or settings.kfp_host
    if not host:
        raise ConfigError("no KFP host: pass --host or set UNLEARN_KFP_HOST")
    options, audit = _options(args)
    run_id = submit(settings, _batch(args), host, args.dataset_rev, args.algorithm, options, audit)
    print(f"submitted KFP run {run_id}")
    return 0


def cmd_run_pending(args: argparse.Namespace) -> int:
    from pipelines.run import run_local

    settings = _settings(args)
    options, audit = _options(args)
    queue = RequestQueue(settings.workspace_path / "requests")
    batches = queue.batches(args.max_batch)
    if not batches:
        print("no pending deletion requests")
        return 0
    worst = 0
    for batch in batches:
        print(f"batch {batch.batch_id}: {', '.join(batch.request_ids)}")
        worst = max(worst, _print_outcome(run_local(settings, batch, "HEAD", args.algorithm, options, audit), settings))
    return worst


DEMO_REQUESTS = [
    {
        "request_id": "REQ-0001",
        "received_at": "2026-11-20T09:30:00Z",
        "basis": "gdpr-art17",
        "targets": {"subject_ids": ["subject-canary"]},
        "deadline": "2026-12-20",
    },
    {"request_id": "REQ-0002", "received_at": "2026-11-21T14:05:00Z", "basis": "safety", "targets": {"labels": [3]}},
]


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: workspace, base model (cached), version 1 in production, two deletions."""
    from rich.console import Console

    from pipelines.run import ensure_base_registered, ensure_workspace, run_local

    c = Console()
    t0 = time.perf_counter()
    settings = Settings.load(args.settings, workspace=args.workspace)
    if settings.workspace_path.exists() and not args.keep:
        c.print(f"resetting the demo workspace {settings.workspace_path} (the base model stays cached in DVC)")
        shutil.rmtree(settings.workspace_path)
    c.rule("workspace: git + DVC, data, base model")
    ws = ensure_workspace(settings, dvc_cache=Path(args.dvc_cache))
    c.print(f"{ws.root} at {ws.head()[:12]} ({time.perf_counter() - t0:.0f}s)")
    version = ensure_base_registered(settings, ws)
    c.print(f"registered model {settings.model_name!r}: version {version} is production")
    queue = RequestQueue(settings.workspace_path / "requests")
    for raw in DEMO_REQUESTS:
        req = parse_request(raw | {"model": settings.model_name})
        if not queue.is_done(req.request_id) and not (queue.root / "pending" / f"{req.request_id}.json").exists():
            queue.submit(req)
            c.print(f"filed {req.request_id} ({req.basis}): {json.dumps(raw['targets'])}")
    worst = 0
    options, audit = _options(args)
    for batch in queue.batches():
        c.rule(f"compliance run: {', '.join(batch.request_ids)}")
        worst = max(worst, _print_outcome(run_local(settings, batch, "HEAD", "erasediff", options, audit), settings))
    c.rule("done")
    c.print(f"total {time.perf_counter() - t0:.0f}s; reports under {settings.workspace_path / 'exports' / 'reports'}")
    return worst


def _common(p: argparse.ArgumentParser, targets: bool = True) -> None:
    from unlearn_lib.cli import add_override_flags

    p.add_argument("--settings", help="settings file (YAML); default $UNLEARN_SETTINGS")
    p.add_argument("--workspace", help="workspace folder (default: settings, then ./workspace)")
    p.add_argument("--algorithm", default="erasediff")
    add_override_flags(p, "algorithm option")
    add_override_flags(p, "audit parameter", set_flag="--audit-set", file_flag="--audit-params")
    if targets:
        p.add_argument(
            "--request",
            action="append",
            required=True,
            metavar="FILE",
            help="deletion request JSON (repeat to batch requests against one model)",
        )
        p.add_argument("--dataset-rev", default="HEAD", help="workspace revision of the dataset (default HEAD)")


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="the Kubeflow compliance pipeline: compile, run locally, submit, demo")
    ps = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    c = ps.add_parser("compile", help="write the pipeline IR YAML")
    c.add_argument("--out", default=str(Path(__file__).with_name("compliance.yaml")))
    c.set_defaults(func=cmd_compile)
    r = ps.add_parser("run", help="run the DAG on this machine (kfp.local)")
    _common(r)
    r.set_defaults(func=cmd_run)
    s = ps.add_parser("submit", help="submit the compiled pipeline to a KFP cluster")
    _common(s)
    s.add_argument("--host", help="KFP API host (default: settings kfp_host)")
    s.set_defaults(func=cmd_submit)
    d = ps.add_parser("demo", help="the main job: workspace, base model, two deletion requests, audits")
    _common(d, targets=False)
    d.set_defaults(workspace="workspace")
    d.add_argument("--dvc-cache", default=".cache/dvc", help="shared DVC cache (keeps the base model across runs)")
    d.add_argument("--keep", action="store_true", help="keep an existing demo workspace instead of resetting it")
    d.set_defaults(func=cmd_demo)

    q = sub.add_parser("requests", help="deletion requests: submit, list, run the pending ones")
    qs = q.add_subparsers(dest="requests_command", required=True, metavar="ACTION")
    a = qs.add_parser("submit", help="queue a deletion request (validated)")
    a.add_argument("file")
    a.add_argument("--settings")
    a.add_argument("--workspace")
    a.set_defaults(func=cmd_submit_request)
    li = qs.add_parser("list", help="pending and done requests")
    li.add_argument("--settings")
    li.add_argument("--workspace")
    li.set_defaults(func=cmd_list_requests)
    rp = qs.add_parser("run-pending", help="run one pipeline per batch of pending requests (for schedules)")
    _common(rp, targets=False)
    rp.add_argument("--max-batch", type=int, default=50)
    rp.set_defaults(func=cmd_run_pending)


def cmd_submit_request(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = RequestQueue(settings.workspace_path / "requests").submit(load_request(args.file))
    print(f"queued {path}")
    return 0


def cmd_list_requests(args: argparse.Namespace) -> int:
    settings = _settings(args)
    queue = RequestQueue(settings.workspace_path / "requests")
    for req in queue.pending():
        print(f"pending  {req.request_id}  {req.basis}  {json.dumps(req.targets.to_dict())}")
    for p in sorted((queue.root / "done").glob("*.json")):
        ev = json.loads(p.read_text())["evidence"]
        print(f"done     {p.stem}  version {ev['version']}  {ev['verdict']}")
    return 0


__all__ = ["UnlearnError", "register"]
