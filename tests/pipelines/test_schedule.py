"""Scheduling on Kubeflow (`unlearn schedule ...`), `unlearn pipeline submit --wait`, the nightly DAG
and its claim task.

A Kubernetes cluster with Kubeflow Pipelines cannot exist here (no cluster, no network), so the
KFP API server is replaced by a small local HTTP server (``fake_kfp.py``) implementing the v2beta1
endpoints these commands use; everything else is real: the commands run as processes through
kfp's own client and REST layer, and the state database (SQLite), the workspace (git + DVC) and
MLflow are the ones a run uses. What "the cluster" does while a run goes on (its steps and exit
handler writing the run row) is played by the fake server, with the state-store calls the steps
make.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unlearn_lib.requests import parse_request
from unlearn_lib.settings import Settings
from unlearn_lib.state import PENDING, RUN_FAILED, RUNNING, StateStore, model_lease

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKfp

MODEL = "digits-diffusion"
REQUEST = {
    "request_id": "REQ-1",
    "received_at": "2026-11-20T10:00:00Z",
    "basis": "gdpr-art17",
    "model": MODEL,
    "targets": {"subject_ids": ["subject-001"]},
    "deadline": "2026-12-01",
}


def cli_env() -> dict:
    # The caller's UNLEARN_* or MLflow variables must not point these commands elsewhere.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UNLEARN_", "KF_PIPELINES")) and k != "MLFLOW_TRACKING_URI"
    }
    return env | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def unlearn_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent commands at once (each pays seconds of imports); their completed processes, in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unlearn_lib.cli", *c],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in commands
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def unlearn(*args: str) -> subprocess.CompletedProcess:
    return unlearn_all(args)[0]


def refused(proc: subprocess.CompletedProcess) -> str:
    """The one stderr line of a command refused as a usage error (exit 2); nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: "), proc.stderr
    return lines[0].removeprefix("unlearn: error: ")


@pytest.fixture()
def kfp():
    server = FakeKfp().start()
    yield server
    server.stop()


@pytest.fixture()
def registered(workspace) -> Path:
    """The test's own workspace with version 1 of the model in production."""
    from pipelines.run import ensure_base_registered
    from unlearn_lib.workspace import Workspace

    assert ensure_base_registered(Settings(workspace=str(workspace)), Workspace(workspace)) == "1"
    return workspace


# ---- the cron expression ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("0 2 * * *", "0 0 2 * * *"),
        ("  30   1 * *   MON-FRI ", "0 30 1 * * MON-FRI"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("0 0 2 ? * 1,3,5", "0 0 2 ? * 1,3,5"),
        ("0 3 1-7 jan,jul *", "0 0 3 1-7 jan,jul *"),
        ("@daily", "0 0 0 * * *"),
    ],
)
def test_cron_is_sent_with_seconds_first(given, sent):
    from pipelines.schedule import kfp_cron

    assert kfp_cron(given) == sent


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("0 2 * *", "4 fields"),
        ("", "0 fields"),
        ("0 0 0 2 * * *", "7 fields"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("61 2 * * *", "minute 61 is out of range 0-59"),
        ("0 2 0 * *", "day of month 0 is out of range 1-31"),
        ("0 2 * 13 *", "month 13 is out of range 1-12"),
        ("0 2 * * 7", "day of week 7 is out of range 0-6"),
        ("0 2 * * FUNDAY", "day of week 'FUNDAY' is not a number"),
        ("*/0 2 * * *", "minute step must be at least 1"),
        ("0 5-2 * * *", "hour range 5-2 runs backwards"),
        ("? 2 * * *", "'?' is allowed only for day of month or week"),
        ("0 2 * * 1;2", "cannot read day of week '1;2'"),
        ("@sometimes", "unknown descriptor"),
    ],
)
def test_invalid_cron_is_refused_with_the_reason(given, why):
    from pipelines.schedule import CronError, kfp_cron

    with pytest.raises(CronError) as err:
        kfp_cron(given)
    assert str(err.value).startswith(f"invalid cron expression {given!r}: {why}")
    assert "\n" not in str(err.value)


# ---- unlearn schedule ------------------------------------------------------------------------------


def test_schedule_create_list_delete(kfp, tmp_path):
    from pipelines.nightly import GOLDEN, PIPELINE_NAME

    host = ("--host", kfp.url, "--workspace", str(tmp_path))
    # Refused before anything is sent: not even the health check.
    bad = unlearn("schedule", "create", "--cron", "0 2 * *", *host)
    assert refused(bad).startswith("invalid cron expression '0 2 * *': 4 fields; give five fields")
    assert kfp.calls == []

    made = unlearn("schedule", "create", "--cron", "0 2 * * *", "--max-batch", "20", *host)
    assert made.returncode == 0, made.stderr
    ((rr_call,),) = [kfp.sent("POST", "/recurringruns")]
    body = rr_call.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert str(body["max_concurrency"]) == "1" and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["display_name"] == "unlearn-nightly"
    assert body["runtime_config"]["parameters"] == {
        "max_batch": 20,
        "algorithm": "erasediff",
        "options": {},
        "audit_params": {},
    }
    # The uploaded spec is the nightly pipeline, in a version named by its content.
    ref = body["pipeline_version_reference"]
    version = kfp.versions[ref["pipeline_version_id"]]
    assert kfp.pipelines[ref["pipeline_id"]]["display_name"] == PIPELINE_NAME
    assert version["pipeline_spec"] == next(yaml.safe_load_all(GOLDEN.read_text()))
    assert version["pipeline_spec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert version["display_name"].endswith("-" + hashlib.sha256(GOLDEN.read_bytes()).hexdigest()[:12])
    assert kfp.experiments[body["experiment_id"]]["display_name"] == "unlearn-nightly"
    (rr_id,) = kfp.recurring_runs
    assert f"scheduled unlearn-nightly ({rr_id}): cron '0 0 2 * * *'" in made.stdout
    assert f"{kfp.url}/#/recurringrun/details/{rr_id}" in made.stdout

    # Same name again: refused; a second schedule under another name reuses the uploaded version.
    uploads = len(kfp.sent("POST", "/pipelines/upload")) + len(kfp.sent("POST", "/pipelines/upload_version"))
    again, other = unlearn_all(
        ("schedule", "create", "--cron", "0 3 * * *", *host),
        ("schedule", "create", "--cron", "@hourly", "--name", "hourly", *host),
    )
    assert refused(again) == (
        "a schedule named 'unlearn-nightly' exists already; `unlearn schedule delete unlearn-nightly` first"
    )
    assert other.returncode == 0, other.stderr
    assert len(kfp.sent("POST", "/pipelines/upload")) + len(kfp.sent("POST", "/pipelines/upload_version")) == uploads
    second = kfp.sent("POST", "/recurringruns")[-1].body
    assert second["pipeline_version_reference"] == ref and second["trigger"]["cron_schedule"]["cron"] == "0 0 * * * *"

    listed, table = unlearn_all(("schedule", "list", "--json", *host), ("schedule", "list", *host))
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"unlearn-nightly", "hourly"}
    assert (rows["unlearn-nightly"]["cron"], rows["unlearn-nightly"]["max_concurrency"]) == ("0 0 2 * * *", 1)
    assert rows["unlearn-nightly"]["no_catchup"] is True and rows["unlearn-nightly"]["parameters"]["max_batch"] == 20
    assert table.returncode == 0 and "unlearn-nightly" in table.stdout and "0 0 2 * * *" in table.stdout

    # By name, and by ID.
    by_name, by_id = unlearn_all(
        ("schedule", "delete", "unlearn-nightly", *host), ("schedule", "delete", rows["hourly"]["id"], *host)
    )
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.startswith(f"deleted schedule unlearn-nightly ({rr_id})")
    assert by_id.returncode == 0, by_id.stderr
    assert [c.path.rsplit("/", 1)[1] for c in kfp.sent("DELETE", f"/recurringruns/{rr_id}")] == [rr_id]
    assert kfp.recurring_runs == {}
    gone, empty = unlearn_all(("schedule", "delete", "unlearn-nightly", *host), ("schedule", "list", *host))
    assert refused(gone) == "no schedule named 'unlearn-nightly' or with that ID"
    assert (empty.returncode, empty.stdout) == (0, "no schedules in the KFP experiment unlearn-nightly\n")


def test_schedule_refuses_bad_options_and_an_unreachable_server_in_one_line(kfp, tmp_path):
    from conftest import free_port

    ws = ("--workspace", str(tmp_path))
    bad = unlearn("schedule", "create", "--cron", "0 2 * * *", "--set", "no_such_option=1", "--host", kfp.url, *ws)
    assert "no_such_option" in refused(bad)
    assert kfp.calls == []
    down = f"http://127.0.0.1:{free_port()}"
    line = refused(unlearn("schedule", "list", "--host", down, *ws))
    assert line.startswith(f"KFP at {down} is not reachable: ")


# ---- the nightly pipeline --------------------------------------------------------------------------


def test_nightly_ir_matches_the_committed_golden_copy(tmp_path):
    from pipelines.nightly import GOLDEN, compile_pipeline

    fresh = compile_pipeline(tmp_path / "nightly.yaml").read_text()
    assert fresh == GOLDEN.read_text(), "the DAG changed: run `unlearn schedule compile` and review the diff"


def test_nightly_dag_shape():
    from pipelines.compliance import compliance_pipeline
    from pipelines.nightly import GOLDEN

    spec, platform = yaml.safe_load_all(GOLDEN.read_text())
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"claim-pending", "for-loop-1"}
    loop = root["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 1
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--claim-pending-Output"
    assert loop["dependentTasks"] == ["claim-pending"]
    # One compliance run per item, every parameter taken from the item (the launch's arguments).
    (inner,) = spec["components"]["comp-for-loop-1"]["dag"]["tasks"].values()
    assert inner["componentRef"]["name"] == "comp-unlearn-compliance"
    params = inner["inputs"]["parameters"]
    assert set(params) == set(compliance_pipeline.component_spec.inputs)
    assert all(p["parameterExpressionSelector"] == f'parseJson(string_value)["{k}"]' for k, p in params.items())
    # The compliance sub-pipeline keeps its exit handler.
    sub = spec["components"]["comp-unlearn-compliance"]["dag"]["tasks"]
    assert sub["record-outcome"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    # No task anywhere is cached: the claim must read today's queue, the runs must do their work.
    for name, comp in [("root", spec["root"]), *spec["components"].items()]:
        for task_name, task in comp.get("dag", {}).get("tasks", {}).items():
            assert task.get("cachingOptions", {}).get("enableCache") is not True, (name, task_name)
    # The claim task reads the cluster's settings and credentials like every step.
    claim = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-claim-pending"]
    assert claim["configMapAsEnv"][0]["configMapName"] == "unlearn-settings"
    assert {s["secretName"] for s in claim["secretAsEnv"]} >= {"unlearn-s3", "unlearn-state-db"}


# ---- the claim -------------------------------------------------------------------------------------


def test_claim_launches_the_most_urgent_batch_of_each_free_model(registered):
    import datetime as dt

    from pipelines.compliance import compliance_pipeline
    from pipelines.nightly import claim_batches
    from pipelines.run import ensure_base_registered
    from unlearn_lib.workspace import Workspace

    settings = Settings(workspace=str(registered))
    ensure_base_registered(settings.replace(model_name="digits-other"), Workspace(registered))
    store = StateStore.open(settings)
    requests = {
        "REQ-EARLY": {"deadline": "2026-12-01"},
        "REQ-LATE": {"deadline": "2026-12-24"},
        "REQ-OTHER": {"deadline": "2026-12-10", "model": "digits-other"},
    }
    for rid, change in requests.items():
        store.add_request(parse_request(REQUEST | {"request_id": rid} | change), PENDING)
    lines: list[str] = []

    # Two batches for digits-diffusion (at most one request each): the earlier deadline goes, the
    # other waits for the next tick; digits-other's batch goes too, in deadline order.
    claimed = claim_batches(settings, max_batch=1, options={"steps": 2}, queue_seconds=3600, echo=lines.append)
    assert [c["request_ids"] for c in claimed] == [["REQ-EARLY"], ["REQ-OTHER"]]
    assert all(set(c) == set(compliance_pipeline.component_spec.inputs) for c in claimed)
    early = claimed[0]
    assert early["options"] == {"steps": 2} and early["algorithm"] == "erasediff"
    assert early["settings"] == {}  # a cluster's steps read the unlearn-settings ConfigMap
    json.dumps(claimed)  # the claim task's output travels as JSON
    assert "batch REQ-LATE (REQ-LATE) waits for the next tick" in lines
    for item, model in zip(claimed, (MODEL, "digits-other"), strict=True):
        run = store.get_run(item["run_id"])
        assert (run.state, run.runner, run.model, run.ids) == (RUNNING, "kfp", model, item["request_ids"])
        row = store.get_request(item["request_ids"][0])
        assert (row.state, row.run_id) == (RUNNING, run.run_id)
        assert store.lease(model_lease(model)).holder == f"kfp:{run.run_id}"
    assert store.get_request("REQ-LATE").state == PENDING
    # The second run waits for the first: its lease outlasts that wait instead of lapsing while queued.
    now = dt.datetime.now(dt.timezone.utc)
    first, second = (store.lease(model_lease(m)).expires_at - now for m in (MODEL, "digits-other"))
    assert first < dt.timedelta(seconds=settings.lease_ttl_seconds + 60)
    assert second > dt.timedelta(seconds=3600)

    # The next tick while those runs go on: both models are busy, REQ-LATE still waits.
    lines.clear()
    assert claim_batches(settings, max_batch=1, echo=lines.append) == []
    assert store.get_request("REQ-LATE").state == PENDING and len(store.runs()) == 2
    assert any(line.startswith(f"batch REQ-LATE not started: model:{MODEL} is held by run ") for line in lines)


# ---- unlearn pipeline submit --wait ----------------------------------------------------------------


def _cluster(workspace: Path, ok: bool):
    """What the cluster's steps and exit handler write to the state database while the run goes on."""

    def play(parameters: dict) -> None:
        store = StateStore.open(Settings(workspace=str(workspace)))
        run_id, ids = parameters["run_id"], parameters["request_ids"]
        if ok:
            store.complete(run_id, ids, "2", {"run_id": run_id, "version": "2"})
            store.update_run(run_id, verdict="pass")
        else:
            error = "audit failed: extraction_rate 0.4 > 0.05"
            store.update_run(run_id, state=RUN_FAILED, failed_step="audit", error=error, verdict="fail", version="2")
            store.fail_requests(ids, run_id, f"audit: {error}", retryable=False)
        store.release_lease(model_lease(MODEL), run_id)

    return play


def _submit(kfp: FakeKfp, workspace: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(REQUEST))
    return unlearn(
        "pipeline", "submit", "--request", str(req), "--workspace", str(workspace), "--host", kfp.url,
        "--wait", "--poll-interval", "0.1", *extra,
    )  # fmt: skip


@pytest.mark.parametrize("ok", [True, False], ids=["succeeded", "failed"])
def test_submit_wait_reports_the_verdict_from_the_state_database(kfp, registered, tmp_path, ok):
    kfp.final_state = "SUCCEEDED" if ok else "FAILED"
    kfp.run_error = None if ok else "task audit failed"
    kfp.cluster = _cluster(registered, ok)
    proc = _submit(kfp, registered, tmp_path)

    ((created,),) = [kfp.sent("POST", "/runs")]
    kfp_run = next(iter(kfp.runs))
    params = created.body["runtime_config"]["parameters"]
    assert params["request_ids"] == ["REQ-1"] and params["settings"] == {}
    sent_spec = created.body["pipeline_spec"]
    # With a platform spec (the cluster's ConfigMap, Secrets, GPU nodes) kfp sends both, side by side.
    assert sent_spec.get("pipeline_spec", sent_spec)["pipelineInfo"]["name"] == "unlearn-compliance"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"submitted KFP run {kfp_run}: {kfp.url}/#/runs/details/{kfp_run}"
    assert f"KFP run {kfp_run}: RUNNING" in lines
    store = StateStore.open(Settings(workspace=str(registered)))
    run = store.get_run(params["run_id"])
    row = store.get_request("REQ-1")
    assert store.lease(model_lease(MODEL)) is None
    if ok:
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert f"KFP run {kfp_run}: SUCCEEDED" in lines
        assert f"succeeded: REQ-1: verdict pass, version 2 (alias production), run {run.run_id}" in proc.stdout
        assert (run.state, run.version, run.runner) == ("succeeded", "2", "kfp")
        assert (row.state, row.version, row.run_id) == ("done", "2", run.run_id)
    else:
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert f"KFP run {kfp_run}: FAILED" in lines and "KFP: task audit failed" in lines
        assert f"failed: REQ-1: verdict fail, version 2 (alias candidate), run {run.run_id}" in proc.stdout
        assert "failed at step audit: audit failed: extraction_rate 0.4 > 0.05" in proc.stdout
        assert (run.state, run.failed_step) == ("failed", "audit")
        assert (row.state, row.retryable, row.attempts) == ("failed", False, 1)
    assert proc.stderr == ""


def test_submit_wait_gives_up_after_the_timeout_and_the_run_stays_claimed(kfp, registered, tmp_path):
    # The run never ends: the command stops waiting, the run goes on holding its requests.
    proc = _submit(kfp, registered, tmp_path, "--timeout", "1")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    kfp_run = next(iter(kfp.runs))
    assert "gave up waiting after 1s: the KFP run is still RUNNING and goes on" in proc.stdout
    assert f"{kfp.url}/#/runs/details/{kfp_run}" in proc.stdout.splitlines()[-1]
    store = StateStore.open(Settings(workspace=str(registered)))
    assert store.get_request("REQ-1").state == RUNNING
    assert store.lease(model_lease(MODEL)).holder.startswith("kfp:")


def test_submit_to_an_unreachable_server_claims_nothing(registered, tmp_path):
    from conftest import free_port

    down = FakeKfp(url=f"http://127.0.0.1:{free_port()}")
    line = refused(_submit(down, registered, tmp_path))
    assert line.startswith(f"KFP at {down.url} is not reachable: ")
    store = StateStore.open(Settings(workspace=str(registered)))
    assert store.runs() == [] and store.lease(model_lease(MODEL)) is None
