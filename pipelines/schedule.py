"""`unlearn schedule ...`: the nightly pipeline as a KFP recurring run.

``create`` uploads the compiled nightly pipeline (``pipelines/nightly.yaml``) as a version
named by its content, or reuses that version when it is already there, and schedules it: at
most one run at a time, no catch-up after a pause (a missed night is covered by the next
one, which finds the same queue), caching off. KFP's cron has six fields, seconds first; the
usual five-field form is accepted and converted. ``list`` and ``delete`` act on the
schedules in the ``unlearn-nightly`` experiment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn_lib.errors import ConfigError, UnlearnError
from unlearn_lib.settings import Settings

EXPERIMENT = "unlearn-nightly"
DEFAULT_NAME = "unlearn-nightly"
# pipelines.nightly.GOLDEN, named here so that registering the commands does not build the DAGs.
PACKAGE = Path(__file__).with_name("nightly.yaml")


class CronError(ConfigError):
    """A cron expression KFP would refuse (or read otherwise than meant)."""


# ---- cron ----------------------------------------------------------------------------------------

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    blank: bool = False  # "?" allowed (day of month, day of week)


# KFP's scheduler parses with robfig/cron: seconds, minutes, hours, day of month, month, day of week.
_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31, blank=True),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 0, 6, _DAYS, blank=True),
)
_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_PART = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")
USAGE = 'five fields (minute hour day-of-month month day-of-week, e.g. "0 2 * * *") or six (seconds first)'


def _value(text: str, f: _Field, expr: str) -> int:
    if text.isdigit():
        value = int(text)
    elif text.upper() in f.names:
        value = f.names.index(text.upper()) + (1 if f.names is _MONTHS else 0)
    else:
        raise CronError(f"invalid cron expression {expr!r}: {f.name} {text!r} is not a number")
    if not f.low <= value <= f.high:
        raise CronError(f"invalid cron expression {expr!r}: {f.name} {value} is out of range {f.low}-{f.high}")
    return value


def _check_field(text: str, f: _Field, expr: str) -> None:
    for part in text.split(","):
        m = _PART.match(part)
        if m is None:
            raise CronError(f"invalid cron expression {expr!r}: cannot read {f.name} {text!r}")
        span, step = m.group("range"), m.group("step")
        if step is not None and int(step) == 0:
            raise CronError(f"invalid cron expression {expr!r}: {f.name} step must be at least 1")
        if span == "?":
            if not f.blank:
                raise CronError(f"invalid cron expression {expr!r}: '?' is allowed only for day of month or week")
            continue
        if span == "*":
            continue
        low, _, high = span.partition("-")
        first = _value(low, f, expr)
        if high and _value(high, f, expr) < first:
            raise CronError(f"invalid cron expression {expr!r}: {f.name} range {span} runs backwards")


def kfp_cron(expr: str) -> str:
    """``expr`` as KFP's six-field cron (seconds first); a five-field expression runs at second 0."""
    text = " ".join(expr.split())
    if text.lower() in _DESCRIPTORS:
        return _DESCRIPTORS[text.lower()]
    if text.startswith("@"):
        raise CronError(f"invalid cron expression {expr!r}: unknown descriptor; give {USAGE}")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise CronError(f"invalid cron expression {expr!r}: {len(fields)} fields; give {USAGE}")
    for value, f in zip(fields, _FIELDS, strict=True):
        _check_field(value, f, expr)
    return " ".join(fields)


# ---- the uploaded pipeline -----------------------------------------------------------------------


def version_name(package: Path) -> str:
    """The pipeline version's name: the package version and the compiled spec's digest, so that
    the same spec is uploaded once and a changed one becomes a new version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("unlearn-lib")
    except PackageNotFoundError:
        release = "dev"
    return f"{release}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def ensure_pipeline(client: Any, package: Path, pipeline_name: str) -> tuple[str, str, str]:
    """(pipeline ID, version ID, version name) of ``package`` on the server, uploading what is missing."""
    from pipelines.cluster import quiet

    tag = version_name(package)
    with quiet():
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(
                str(package), pipeline_name=pipeline_name, description="unlearn: nightly deletion batches"
            ).pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=100, filter=_by_name(tag))
        for v in versions.pipeline_versions or []:
            if v.display_name == tag:
                return pipeline_id, v.pipeline_version_id, tag
        v = client.upload_pipeline_version(str(package), tag, pipeline_id=pipeline_id)
    return pipeline_id, v.pipeline_version_id, tag


# ---- schedules -----------------------------------------------------------------------------------


def _experiment_id(client: Any, create: bool) -> str | None:
    from pipelines.cluster import quiet

    with quiet():
        if create:
            return client.create_experiment(name=EXPERIMENT).experiment_id
        try:
            return client.get_experiment(experiment_name=EXPERIMENT).experiment_id
        except ValueError:  # kfp: "No experiment is found with name ..."
            return None


def schedules(client: Any) -> list[Any]:
    """The recurring runs in the nightly experiment (none when it does not exist yet)."""
    experiment_id = _experiment_id(client, create=False)
    if experiment_id is None:
        return []
    out, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_size=100, page_token=token)
        out.extend(page.recurring_runs or [])
        token = page.next_page_token or ""
        if not token:
            return out


def find_schedule(client: Any, name_or_id: str) -> Any:
    """The schedule with this name (in the nightly experiment) or ID; one line when there is none."""
    named = [r for r in schedules(client) if r.display_name == name_or_id]
    if len(named) > 1:
        ids = ", ".join(r.recurring_run_id for r in named)
        raise UnlearnError(f"{len(named)} schedules are named {name_or_id!r} ({ids}); delete one by its ID")
    if named:
        return named[0]
    try:
        return client.get_recurring_run(name_or_id)
    except Exception as err:
        if getattr(err, "status", None) in (400, 404):
            raise UnlearnError(f"no schedule named {name_or_id!r} or with that ID") from None
        raise


def create_schedule(
    client: Any,
    name: str,
    cron: str,
    params: dict[str, Any],
    package: Path,
    pipeline_name: str,
) -> tuple[Any, str]:
    """Schedule ``package`` under ``name``; the recurring run and the pipeline version's name."""
    if any(r.display_name == name for r in schedules(client)):
        raise UnlearnError(f"a schedule named {name!r} exists already; `unlearn schedule delete {name}` first")
    pipeline_id, version_id, tag = ensure_pipeline(client, package, pipeline_name)
    experiment_id = _experiment_id(client, create=True)
    run = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=name,
        description=f"unlearn: claim and run the pending deletion batches ({pipeline_name} {tag})",
        cron_expression=cron,
        # One run at a time, and no backfill of missed ticks: the queue is the state, not the tick.
        max_concurrency=1,
        no_catchup=True,
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        enable_caching=False,
    )
    return run, tag


# ---- commands ------------------------------------------------------------------------------------


def _host(args: argparse.Namespace) -> tuple[Settings, str]:
    settings = Settings.load(args.settings, workspace=getattr(args, "workspace", None))
    host = args.host or settings.kfp_host
    if not host:
        raise ConfigError("no KFP host: pass --host or set UNLEARN_KFP_HOST")
    return settings, host


def _check_options(algorithm: str, options: dict, audit: dict) -> None:
    # A bad option would fail every night's claim; refuse it now, before anything is sent.
    from unlearn_lib.audit import AuditParams
    from unlearn_lib.unlearning import make_unlearner
    from unlearn_lib.unlearning.base import build_config

    make_unlearner(algorithm, options)
    build_config(AuditParams, audit, where="the audit").validate()


def _kfp_call(what: str, host: str, call: Any) -> Any:
    """Run ``call``; a KFP API error becomes one line (input errors pass through as they are)."""
    from pipelines.cluster import api_error
    from unlearn_lib.redact import redact_url

    try:
        return call()
    except UnlearnError:
        raise
    except Exception as err:
        raise UnlearnError(f"KFP at {redact_url(host)} refused to {what}: {api_error(err)}") from None


def cmd_create(args: argparse.Namespace) -> int:
    from pipelines.cli import _options
    from pipelines.cluster import connect
    from pipelines.nightly import PIPELINE_NAME

    cron = kfp_cron(args.cron)
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {args.max_batch}")
    options, audit = _options(args)
    _check_options(args.algorithm, options, audit)
    package = Path(args.package or PACKAGE)
    if not package.is_file():
        raise ConfigError(f"pipeline package {package} does not exist: run `unlearn schedule compile`")
    _, host = _host(args)
    client = connect(host)
    params = {"max_batch": args.max_batch, "algorithm": args.algorithm, "options": options, "audit_params": audit}
    run, tag = _kfp_call(
        "create the schedule",
        host,
        lambda: create_schedule(client, args.name, cron, params, package, PIPELINE_NAME),
    )
    print(
        f"scheduled {args.name} ({run.recurring_run_id}): cron {cron!r} (seconds first, the KFP server's "
        f"time zone), pipeline {PIPELINE_NAME} version {tag}, at most {args.max_batch} requests per batch, "
        "one run at a time, no catch-up"
    )
    print(f"  {host.rstrip('/')}/#/recurringrun/details/{run.recurring_run_id}")
    return 0


def _row(r: Any) -> dict[str, Any]:
    trigger = r.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    interval = trigger.periodic_schedule.interval_second if trigger and trigger.periodic_schedule else None
    ref = r.pipeline_version_reference
    return {
        "name": r.display_name,
        "id": r.recurring_run_id,
        "cron": cron,
        "interval_seconds": interval,
        "mode": str(r.mode or ""),
        "status": str(r.status or ""),
        "max_concurrency": int(r.max_concurrency) if r.max_concurrency is not None else None,
        "no_catchup": bool(r.no_catchup),
        "pipeline_version_id": ref.pipeline_version_id if ref else None,
        "parameters": dict((r.runtime_config.parameters or {}) if r.runtime_config else {}),
        "created_at": r.created_at.isoformat() if hasattr(r.created_at, "isoformat") else r.created_at,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines.cluster import connect

    _, host = _host(args)
    client = connect(host)
    rows = [_row(r) for r in _kfp_call("list the schedules", host, lambda: schedules(client))]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print(f"no schedules in the KFP experiment {EXPERIMENT}")
        return 0
    table = Table("name", "id", "cron", "status", "concurrency", "catch-up", "max batch", "created")
    for r in rows:
        table.add_row(
            r["name"],
            r["id"],
            r["cron"] or f"every {r['interval_seconds']}s",
            r["status"] or r["mode"],
            str(r["max_concurrency"]),
            "no" if r["no_catchup"] else "yes",
            str(r["parameters"].get("max_batch", "-")),
            str(r["created_at"] or "-"),
        )
    Console(soft_wrap=True).print(table)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from pipelines.cluster import connect

    _, host = _host(args)
    client = connect(host)
    found = _kfp_call("find the schedule", host, lambda: find_schedule(client, args.schedule))
    _kfp_call("delete the schedule", host, lambda: client.delete_recurring_run(found.recurring_run_id))
    print(f"deleted schedule {found.display_name} ({found.recurring_run_id}); runs it started are left as they are")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.nightly import compile_pipeline

    print(f"wrote {compile_pipeline(args.out)}")
    return 0


def register(sub: Any) -> None:
    from pipelines.cli import _common

    p = sub.add_parser("schedule", help="the nightly pipeline as a Kubeflow recurring run: create, list, delete")
    ps = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    c = ps.add_parser("create", help="upload the nightly pipeline (once per version) and schedule it")
    _common(c, targets=False)
    c.add_argument("--cron", required=True, help='when: five cron fields, e.g. "0 2 * * *" (or six, seconds first)')
    c.add_argument("--name", default=DEFAULT_NAME, help=f"the schedule's name (default {DEFAULT_NAME})")
    c.add_argument("--max-batch", type=int, default=50, help="at most this many requests per run (default 50)")
    c.add_argument("--package", help=f"compiled pipeline to upload (default {PACKAGE.name} of this install)")
    c.set_defaults(func=cmd_create)
    li = ps.add_parser("list", help="the schedules in the nightly experiment")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)
    d = ps.add_parser("delete", help="delete a schedule (by name or ID); its past runs stay")
    d.add_argument("schedule", metavar="NAME|ID")
    d.set_defaults(func=cmd_delete)
    for cmd in (li, d):
        cmd.add_argument("--settings", help="settings file (YAML); default $UNLEARN_SETTINGS")
        cmd.add_argument("--workspace", help="workspace folder (default: settings, then ./workspace)")
    for cmd in (c, li, d):
        cmd.add_argument("--host", help="KFP API host (default: settings kfp_host)")
    co = ps.add_parser("compile", help="write the nightly pipeline's IR YAML")
    co.add_argument("--out", default=str(PACKAGE))
    co.set_defaults(func=cmd_compile)
