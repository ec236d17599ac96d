"""`unlearn pipeline ...` and `unlearn requests run-pending`: commands that need kfp.

Registered into the `unlearn` command through the ``unlearn.commands`` entry point, so the
core library stays free of kfp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

from unlearn_lib.errors import ConfigError, UnlearnError
from unlearn_lib.requests import DeletionBatch, load_request, parse_request
from unlearn_lib.settings import Settings
from unlearn_lib.state import REQUEST_STATES

EXIT_FAILED = 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.settings, workspace=getattr(args, "workspace", None))


def _options(args: argparse.Namespace) -> tuple[dict, dict]:
    from unlearn_lib.cli import overrides_from

    return overrides_from(args.options, args.set), overrides_from(args.audit_params, args.audit_set)


def _print_outcome(outcome: Any, settings: Settings) -> int:
    """One line per outcome; 0 only when the requests are fulfilled (by this run or an earlier one)."""
    from rich.console import Console
    from rich.markup import escape

    c = Console(soft_wrap=True)
    if outcome.status == "already-done":
        c.print(f"[yellow]{escape(outcome.message)}")
        return 0
    if outcome.status == "busy":
        c.print(f"[yellow]not run: {escape(outcome.message)}")
        return EXIT_FAILED
    color = "green" if outcome.status == "succeeded" else "red"
    # A pass that rests on fewer gates than the report shows says which ones could not have failed.
    weak = f" ({', '.join(outcome.inconclusive)} inconclusive)" if outcome.verdict and outcome.inconclusive else ""
    c.print(
        f"[bold {color}]{outcome.status}[/]: {', '.join(outcome.request_ids)}: verdict {outcome.verdict or '-'}{weak}, "
        f"version {outcome.version or '-'} (alias {outcome.alias or '-'}), run {outcome.run_id}, "
        f"MLflow run {outcome.lineage_run_id}"
    )
    if outcome.status != "succeeded":
        where = f"failed at step {outcome.failed_step}: " if outcome.failed_step else ""
        then = (
            "the requests stay queued and the next `unlearn requests run-pending` resumes this run"
            if outcome.retryable
            else "the requests are marked failed; fix the cause, then `unlearn requests retry REQ-ID`"
        )
        c.print(f"[red]{escape(where + (outcome.error or 'no error recorded'))}[/]\n{then}")
    uri = _redacted(settings.tracking_uri)
    if uri.startswith(("http://", "https://")) and outcome.lineage_run_id:
        where = f"experiment {settings.mlflow_experiment}, run {outcome.lineage_run_id}"
        c.print(f"open the lineage: {escape(uri)} ({escape(where)})")
    else:
        c.print(f"open the lineage: mlflow ui --backend-store-uri {escape(uri)}")
    return 0 if outcome.ok else EXIT_FAILED


def _redacted(text: str) -> str:
    from unlearn_lib.redact import redact_text

    return redact_text(text)


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines import nightly
    from pipelines.compliance import compile_pipeline

    image = args.image or Settings.load().pipeline_image
    if args.image_from_build:
        from unlearn_lib.containers import image_info

        image = image_info()["ref"]
    print(f"wrote {compile_pipeline(args.out, image=image)}")
    # The nightly pipeline embeds the compliance DAG: both change together.
    nightly_out = Path(args.out).with_name(nightly.GOLDEN.name)
    print(f"wrote {nightly.compile_pipeline(nightly_out, image=image)}")
    return 0


def _batch(args: argparse.Namespace) -> DeletionBatch:
    return DeletionBatch(tuple(load_request(p) for p in args.request))


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_local

    settings = _settings(args)
    options, audit = _options(args)
    outcome = run_local(
        settings, _batch(args), args.dataset_rev, args.algorithm, options, audit, runner=args.runner
    )
    return _print_outcome(outcome, settings)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.cluster import connect, quiet, run_link, wait_and_report
    from pipelines.run import submit

    settings = _settings(args)
    host = args.host or settings.kfp_host
    if not host:
        raise ConfigError("no KFP host: pass --host or set UNLEARN_KFP_HOST")
    if args.timeout is not None and not args.wait:
        raise ConfigError("--timeout needs --wait")
    if args.poll_interval <= 0:
        raise ConfigError(f"--poll-interval must be more than 0 seconds, got {args.poll_interval:g}")
    options, audit = _options(args)
    batch = _batch(args)
    client = connect(host)  # before anything is claimed: an unreachable cluster leaves no run behind
    with quiet():  # kfp prints its own links; this command prints one
        run_id = submit(settings, batch, host, args.dataset_rev, args.algorithm, options, audit, client=client)
    print(f"submitted KFP run {run_id}: {run_link(host, run_id)}", flush=True)
    if not args.wait:
        return 0
    return wait_and_report(client, settings, host, run_id, args.timeout, args.poll_interval, _print_outcome)


def run_pending(
    settings: Settings, algorithm: str, options: dict, audit: dict, max_batch: int = 50, runner: str = "subprocess"
) -> int:
    """Recover dead runs, re-check every queued request, run the batches by deadline; report each."""
    from rich.console import Console
    from rich.markup import escape

    from pipelines.run import recover, run_local
    from unlearn_lib.requests.intake import DONE, REJECTED, assess, batches_of
    from unlearn_lib.state import StateStore

    c = Console(soft_wrap=True)
    store = StateStore.open(settings)
    worst = 0
    for outcome in recover(settings, echo=lambda line: c.print(escape(line))):
        worst = max(worst, _print_outcome(outcome, settings))
    from unlearn_lib.compliance.erasure import finish_erasures

    # Deletions that committed but whose data erasure was cut short (crash, store down).
    for rid in finish_erasures(settings):
        c.print(f"{rid}: erased the deleted records' data from the stores (left over from an earlier run)")
    runnable = []
    for row in store.runnable_requests(settings.max_attempts):
        req = row.request
        # Valid when submitted is not valid forever: another request may have erased the records.
        verdict = assess(settings, req, store)
        if verdict.state == DONE:
            store.transition(
                [req.request_id],
                "done",
                reason=verdict.reason,
                version=verdict.version,
                evidence_json=json.dumps(verdict.evidence or {}, sort_keys=True),
            )
            c.print(f"[yellow]{req.request_id}: {escape(verdict.reason or 'already fulfilled')}")
        elif verdict.state == REJECTED:
            store.fail_requests([req.request_id], None, f"no longer valid: {verdict.reason}", retryable=False)
            c.print(f"[red]{req.request_id}: no longer valid: {escape(verdict.reason or '')}")
            worst = max(worst, EXIT_FAILED)
        else:
            runnable.append(req)
    batches = batches_of(runnable, max_batch)
    if not batches:
        c.print("no pending deletion requests")
        return worst
    for batch in batches:
        c.print(f"batch {batch.batch_id}: {', '.join(batch.request_ids)}")
        try:
            outcome = run_local(settings, batch, "HEAD", algorithm, options, audit, explicit=False, runner=runner)
        except UnlearnError as err:
            # One bad batch must not stop the others: record it and go on.
            c.print(f"[red]batch {batch.batch_id} not run: {escape(_redacted(str(err)))}")
            worst = max(worst, EXIT_FAILED)
            continue
        if outcome.status == "busy":
            # Another process holds the model: it runs these requests; they are not lost.
            c.print(f"[yellow]skipped: {escape(outcome.message)}")
            continue
        worst = max(worst, _print_outcome(outcome, settings))
    return worst


def cmd_run_pending(args: argparse.Namespace) -> int:
    options, audit = _options(args)
    return run_pending(_settings(args), args.algorithm, options, audit, args.max_batch, args.runner)


def demo_requests(now: dt.datetime) -> list[dict]:
    """The demo's two requests, received ``now``: a data owner's records (with the one month GDPR
    Art. 12(3) allows), then class 3 for safety. Fixed dates would turn the demo overdue with time."""
    received = now.astimezone(dt.timezone.utc).replace(microsecond=0)
    stamp = received.strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {
            "request_id": "REQ-0001",
            "received_at": stamp,
            "basis": "gdpr-art17",
            "targets": {"subject_ids": ["subject-canary"]},
            "deadline": (received + dt.timedelta(days=30)).date().isoformat(),
        },
        {"request_id": "REQ-0002", "received_at": stamp, "basis": "safety", "targets": {"labels": [3]}},
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: workspace, base model (cached), version 1 in production, two deletions."""
    from rich.console import Console

    from pipelines.run import ensure_base_registered, ensure_workspace

    c = Console(soft_wrap=True)
    t0 = time.perf_counter()
    if args.runner == "container":
        # The stack holds the state (`unlearn stack up` seeded it from a workspace): the settings
        # come from its file, and nothing local is reset.
        from pipelines.run import check_container_ready
        from unlearn_lib.workspace import open_workspace

        settings = Settings.load(args.settings).replace(retention_grace_days=0)
        check_container_ready(settings)
        c.rule("the stack: git remote, DVC on S3, MLflow, PostgreSQL")
        ws = open_workspace(settings)
        c.print(f"workspace remote {settings.public()['git_remote']} at {ws.served()[:12]}")
        from unlearn_lib.compliance.steps import check_model_registered

        version = check_model_registered(settings)
    else:
        settings = Settings.load(args.settings, workspace=args.workspace)
        # The demo shows the whole retention story at once: superseded versions retire immediately.
        settings = settings.replace(retention_grace_days=0)
        if settings.workspace_path.exists() and not args.keep:
            c.print(f"resetting the demo workspace {settings.workspace_path} (the base model stays cached in DVC)")
            shutil.rmtree(settings.workspace_path)
        c.rule("workspace: git + DVC, data, base model")
        ws = ensure_workspace(settings, dvc_cache=Path(args.dvc_cache))
        c.print(f"{ws.root} at {ws.head()[:12]} ({time.perf_counter() - t0:.0f}s)")
        version = ensure_base_registered(settings, ws)
    c.print(f"registered model {settings.model_name!r}: version {version} is production")
    from unlearn_lib.requests.intake import submit as submit_request
    from unlearn_lib.state import StateStore

    store = StateStore.open(settings)
    for raw in demo_requests(dt.datetime.now(dt.timezone.utc)):
        req = parse_request(raw | {"model": settings.model_name})
        if store.get_request(req.request_id) is None:
            row, _ = submit_request(settings, req)
            c.print(f"filed {req.request_id} ({req.basis}): {json.dumps(raw['targets'])} -> {row.state}")
    options, audit = _options(args)
    c.rule("compliance runs (oldest deadline first)")
    worst = run_pending(settings, "erasediff", options, audit, runner=args.runner)
    c.rule("done")
    from unlearn_lib.storage import store_from_settings

    c.print(f"total {time.perf_counter() - t0:.0f}s; reports under {store_from_settings(settings).uri('reports')}")
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


def _runner_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        choices=["subprocess", "container"],
        default="subprocess",
        help="subprocess: steps as processes of this environment (default); container: each step in its "
        "own container from the project image (`make image`), state reached through the stack "
        "(`unlearn stack up`)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="the Kubeflow compliance pipeline: compile, run locally, submit, demo")
    ps = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    c = ps.add_parser("compile", help="write the pipeline IR YAML")
    c.add_argument("--out", default=str(Path(__file__).with_name("compliance.yaml")))
    c.add_argument("--image", help="the steps' image, e.g. REGISTRY/unlearn@sha256:... (default: the package's tag)")
    c.add_argument(
        "--image-from-build", action="store_true", help="the image `make image` built, by digest (.cache/image)"
    )
    c.set_defaults(func=cmd_compile)
    r = ps.add_parser("run", help="run the DAG on this machine (kfp.local)")
    _common(r)
    _runner_flag(r)
    r.set_defaults(func=cmd_run)
    s = ps.add_parser("submit", help="submit the compiled pipeline to a KFP cluster")
    _common(s)
    s.add_argument("--host", help="KFP API host (default: settings kfp_host)")
    s.add_argument("--wait", action="store_true", help="follow the run to its end; report its verdict (exit 1: failed)")
    s.add_argument("--timeout", type=float, metavar="S", help="with --wait: stop waiting after S seconds (exit 1)")
    s.add_argument("--poll-interval", type=float, default=10.0, metavar="S", help="with --wait: seconds between polls")
    s.set_defaults(func=cmd_submit)
    d = ps.add_parser("demo", help="the main job: workspace, base model, two deletion requests, audits")
    _common(d, targets=False)
    d.set_defaults(workspace="workspace")
    d.add_argument("--dvc-cache", default=".cache/dvc", help="shared DVC cache (keeps the base model across runs)")
    d.add_argument("--keep", action="store_true", help="keep an existing demo workspace instead of resetting it")
    _runner_flag(d)
    d.set_defaults(func=cmd_demo)

    q = sub.add_parser("requests", help="deletion requests: submit, list, run the pending ones")
    qs = q.add_subparsers(dest="requests_command", required=True, metavar="ACTION")
    a = qs.add_parser("submit", help="validate a deletion request against the model and data, then queue it")
    a.add_argument("file")
    a.set_defaults(func=cmd_submit_request)
    li = qs.add_parser("list", help="requests, overdue first, then by deadline")
    li.add_argument("--state", action="append", choices=list(REQUEST_STATES), help="only these states (repeatable)")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list_requests)
    sh = qs.add_parser("show", help="one request: state, attempts, errors, evidence, its history")
    sh.add_argument("request_id")
    sh.set_defaults(func=cmd_show_request)
    rt = qs.add_parser("retry", help="queue a failed request again")
    rt.add_argument("request_id")
    rt.set_defaults(func=cmd_retry_request)
    ev = qs.add_parser(
        "evidence",
        help="the evidence of one request, rebuilt from MLflow and the state database alone (JSON or an HTML page)",
    )
    ev.add_argument("request_id")
    ev.add_argument("--format", choices=["json", "html"], default="json", help="json (default) or html")
    ev.add_argument(
        "--out",
        metavar="DIR",
        help="write evidence-REQ-ID.json|html into DIR (json default: print to stdout; html default: .)",
    )
    ev.set_defaults(func=cmd_evidence)
    for cmd in (a, li, sh, rt, ev):
        cmd.add_argument("--settings")
        cmd.add_argument("--workspace")
    rp = qs.add_parser("run-pending", help="run one pipeline per batch of pending requests (for schedules)")
    _common(rp, targets=False)
    _runner_flag(rp)
    rp.add_argument("--max-batch", type=int, default=50)
    rp.set_defaults(func=cmd_run_pending)


def cmd_submit_request(args: argparse.Namespace) -> int:
    from unlearn_lib.requests.intake import submit

    settings = _settings(args)
    row, verdict = submit(settings, load_request(args.file))
    if row.state == "rejected":
        raise UnlearnError(f"request {row.request_id} refused: {verdict.reason}")
    note = f" ({verdict.reason})" if verdict.reason else ""
    print(f"{row.request_id}: {row.state}{note}")
    return 0


def _row_dict(row: Any) -> dict:
    return {
        "request_id": row.request_id,
        "state": row.state,
        "model": row.model,
        "basis": row.basis,
        "scope": row.scope,
        "received_at": row.received_at.isoformat(),
        "deadline": row.deadline_at.isoformat() if row.deadline_at else None,
        "overdue": row.overdue(),
        "attempts": row.attempts,
        "retryable": row.retryable,
        "last_error": row.last_error,
        "reason": row.reason,
        "run_id": row.run_id,
        "version": row.version,
        "done_at": row.done_at.isoformat() if row.done_at else None,
    }


def cmd_list_requests(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from unlearn_lib.state import StateStore

    rows = StateStore.open(_settings(args)).list_requests(args.state or None)
    if args.json:
        print(json.dumps([_row_dict(r) for r in rows], indent=1))
        return 0
    table = Table("request", "state", "basis", "deadline", "attempts", "version / error")
    for r in rows:
        deadline = f"{r.deadline_at:%Y-%m-%d %H:%M}" if r.deadline_at else "-"
        if r.overdue():
            deadline = f"[bold red]{deadline} OVERDUE[/]"
        detail = r.version or r.last_error or r.reason or ""
        table.add_row(r.request_id, r.state, r.basis, deadline, str(r.attempts), escape(detail[:80]))
    Console(soft_wrap=True).print(table)
    return 0


def cmd_show_request(args: argparse.Namespace) -> int:
    from unlearn_lib.state import StateStore

    store = StateStore.open(_settings(args))
    row = store.get_request(args.request_id)
    if row is None:
        raise UnlearnError(f"no request {args.request_id!r} in the state database")
    out = _row_dict(row) | {"request": json.loads(row.request_json), "evidence": row.evidence}
    out["events"] = [
        {"at": e["at"].isoformat(), "kind": e["kind"], "run_id": e["run_id"], "detail": e["detail"]}
        for e in store.events(request_id=row.request_id)
    ]
    print(json.dumps(out, indent=1, default=str))
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    from unlearn_lib.requests.evidence import build_evidence, serialize, write_evidence

    # Built completely before anything is written: a refused request or an unreachable server leaves no file.
    evidence = build_evidence(_settings(args), args.request_id)
    if args.format == "json" and args.out is None:
        print(serialize(evidence, "json"), end="")
        return 0
    path = write_evidence(evidence, args.out or ".", args.format)
    print(f"wrote {path}")
    return 0


def cmd_retry_request(args: argparse.Namespace) -> int:
    from unlearn_lib.state import FAILED, PENDING, StateStore

    store = StateStore.open(_settings(args))
    # Only a failed request: a rejected one never passed intake, a running one belongs to its run.
    store.transition([args.request_id], PENDING, only_from=(FAILED,), retryable=None)
    print(f"{args.request_id}: pending")
    return 0


__all__ = ["UnlearnError", "register"]
