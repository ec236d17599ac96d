"""Fault injection: real processes killed with SIGKILL, real servers stopped, real overlapping runs.

Each test starts `unlearn pipeline run` (or `run-pending`) as its own process group, stops it at
a named place in the compliance transaction (a fail point: the process announces it reached
the place and waits, so the kill lands exactly there), kills the whole group with SIGKILL,
checks that nothing a user sees moved, then runs the same command again and checks that the
request was fulfilled exactly once.

The unlearning and audit settings are cheap and the audit gates loosened: what is under test
is the transaction (what survives a crash, what is redone, what is never done twice), not the
quality of the erasure, which tests/unlearn_lib and test_compliance.py cover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearn_lib.data import load_dataset
from unlearn_lib.settings import Settings
from unlearn_lib.state import StateStore
from unlearn_lib.tracking import client_for
from unlearn_lib.workspace import Workspace, run_ref

REQUEST = {
    "request_id": "REQ-FAULT",
    "received_at": "2026-11-27T10:00:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-canary"]},
    "deadline": "2026-12-27",
}
CHEAP = ["--set", "steps=20", "--set", "stop=none", "--set", "checkpoint_every=5"]
LOOSE_AUDIT = [
    "--audit-set",
    "samples_per_class=10",
    "--audit-set",
    "extraction_samples=100",
    "--audit-set",
    "sampling_steps=10",
    "--audit-set",
    "max_extracted=3",
    "--audit-set",
    "mia_auc_tolerance=0.5",
    "--audit-set",
    "max_retained_accuracy_drop=0.3",
    "--audit-set",
    "max_fid_ratio=5",
    "--audit-set",
    "max_retain_loss_ratio=2",
]


class Pipeline:
    """`unlearn ...` in its own process group, with fail points armed through the environment."""

    def __init__(self, workspace: Path, tmp: Path, env: dict | None = None) -> None:
        self.ws, self.points = workspace, tmp / "failpoints"
        # The runs here are cheap on purpose (20 steps) and audited loosely (LOOSE_AUDIT): the
        # stack's operator setting lets them past the audit's hard limits; these tests are about
        # faults, not about what a deletion must achieve.
        self.env = {
            **os.environ,
            "UNLEARN_FAILPOINT_DIR": str(self.points),
            "UNLEARN_AUDIT_HARD_LIMITS": "false",
            **(env or {}),
        }
        self.log = tmp / "pipeline.log"

    def args(self, *command: str) -> list[str]:
        return [sys.executable, "-m", "unlearn_lib.cli", *command, "--workspace", str(self.ws)]

    def run_request(self, request_file: Path) -> list[str]:
        return self.args("pipeline", "run", "--request", str(request_file), *CHEAP, *LOOSE_AUDIT)

    def start(self, args: list[str], failpoints: str = "") -> subprocess.Popen:
        env = dict(self.env)
        if failpoints:
            env["UNLEARN_FAILPOINTS"] = failpoints
        log = open(self.log, "a")
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)

    def wait_for(self, proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                raise AssertionError(f"the pipeline ended ({proc.returncode}) before {what}:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.kill(proc)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()}")

    def reached(self, name: str) -> bool:
        return (self.points / f"{name}.reached").is_file()

    def release(self, name: str) -> None:
        (self.points / f"{name}.release").write_text("go")

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL for the whole group: the CLI, kfp.local's step processes, git and dvc children."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture()
def ready_workspace(workspace, tmp_path):
    from pipelines.run import ensure_base_registered

    settings = Settings(workspace=str(workspace))
    ws = Workspace(workspace)
    assert ensure_base_registered(settings, ws) == "1"
    request_file = tmp_path / "req.json"
    request_file.write_text(json.dumps(REQUEST))
    return {"settings": settings, "ws": ws, "rev": ws.served(), "request": request_file}


def _versions_with(settings: Settings, request_id: str) -> list:
    client = client_for(settings)
    return [
        mv
        for mv in client.search_model_versions(f"name='{settings.model_name}'")
        if request_id in (mv.tags or {}).get("unlearn.request_ids", "").split(",")
    ]


def _production(settings: Settings) -> str:
    return str(client_for(settings).get_model_version_by_alias(settings.model_name, "production").version)


def assert_nothing_visible_moved(ctx: dict) -> None:
    """After a crash before the commit: production, the served dataset and its files are as they were."""
    settings, ws = ctx["settings"], ctx["ws"]
    assert _production(settings) == "1"
    assert ws.served() == ws.head() == ctx["rev"]
    served = load_dataset(ws.root / "data" / "digits")
    assert any(r.subject_id == "subject-canary" for r in served.records)
    assert ws.ledger() == []


def assert_fulfilled_exactly_once(ctx: dict, run_id: str | None = None) -> None:
    settings, ws = ctx["settings"], ctx["ws"]
    store = StateStore.open(settings)
    row = store.get_request("REQ-FAULT")
    assert row.state == "done", (row.state, row.last_error)
    done_events = [e for e in store.events(request_id="REQ-FAULT") if e["kind"] == "request.done"]
    assert len(done_events) == 1
    # One model version carries the request, and production is on it.
    (mv,) = _versions_with(settings, "REQ-FAULT")
    assert _production(settings) == str(mv.version) == row.version
    # The served dataset (revision, working tree, ledger) no longer holds the records, once.
    erased = ctx.get("erased", lambda r: r.subject_id == "subject-canary")
    served = ws.dataset(ws.served())
    assert not any(erased(r) for r in served.records)
    assert not any(erased(r) for r in load_dataset(ws.root / "data" / "digits").records)
    assert [e["request_ids"] for e in ws.ledger()] == [["REQ-FAULT"]]
    assert ws.git("status", "--porcelain").strip() == ""
    # No half-written leftovers, no prepared state of the run, the lease released.
    leftovers = [p for p in ws.root.rglob("*") if ".partial" in p.name and ".git" not in p.parts]
    assert leftovers == []
    run = store.get_run(row.run_id)
    assert run.state == "succeeded" and run.version == row.version
    if run_id is not None:
        assert row.run_id == run_id  # resumed, not redone as another run
    assert ws.ref_sha(run_ref(row.run_id)) is None and not list(ws.root.glob("runs/worktrees/*"))
    assert not (ws.root / "checkpoints" / row.run_id).exists()
    assert store.lease(f"model:{settings.model_name}") is None


def _kill_at(ctx: dict, pipe: Pipeline, failpoint: str, what: str) -> object:
    """Run the request until it reaches ``failpoint``, SIGKILL the group there; returns the dead run."""
    proc = pipe.start(pipe.run_request(ctx["request"]), failpoint)
    pipe.wait_for(proc, lambda: pipe.reached(failpoint), what)
    pipe.kill(proc)
    return _dead_run(ctx)


def _operator_moves_production(ctx: dict) -> None:
    """Someone promotes another version meanwhile (here: the base model registered again)."""
    from unlearn_lib.tracking import register_base_model

    ws = ctx["ws"]
    ds = load_dataset(ws.root / "data" / "digits")
    register_base_model(ctx["settings"], ws.root / "models" / "base", ws.head(), ds.digest(), len(ds), str(ws.root))


def _dead_run(ctx: dict) -> object:
    store = StateStore.open(ctx["settings"])
    row = store.get_request("REQ-FAULT")
    assert row.state == "running"  # held by a run whose processes are all gone
    return store.get_run(row.run_id)


# ---- SIGKILL at each step of the transaction -------------------------------------------------------


def _checkpoint_written(ws: Path) -> bool:
    return any(ws.glob("checkpoints/*/unlearn-checkpoints/step-*.pt"))


KILL_POINTS = {
    "extract": ("purge.worktree_ready", None),
    "mid-unlearn": ("", _checkpoint_written),
    "mid-audit": ("audit.running", None),
    "after-version-before-alias": ("register.after_version", None),
    "mid-upload": ("upload.after_first_file", None),
}


def _unlearning_resumed_from(ctx: dict, run_id: str) -> list[int]:
    """Each finished unlearn step of ``run_id`` that unlearned: the step it resumed from, as its MLflow
    step run records it (the run's pipeline root is swept once the run succeeded)."""
    client = client_for(ctx["settings"])
    steps = client.search_runs(
        [client.get_experiment_by_name(ctx["settings"].mlflow_experiment).experiment_id],
        filter_string=f"tags.`unlearn.step` = 'unlearn' and tags.`unlearn.run_id` = '{run_id}' "
        "and attributes.status = 'FINISHED'",
    )
    # An attempt that found the step already done finishes its step run without a record.
    return [
        json.load(open(client.download_artifacts(s.info.run_id, "unlearning.json")))["resumed_from"]
        for s in steps
        if any(f.path == "unlearning.json" for f in client.list_artifacts(s.info.run_id))
    ]


def test_sigkill_at_every_step_each_rerun_resumes_and_the_request_is_fulfilled_once(ready_workspace, tmp_path):
    """One request, killed five times: at the extract step, mid-unlearn, mid-audit, between the
    new version and the alias move, and mid-upload. Every rerun resumes the same run from its last
    finished step; after every kill nothing a user sees has moved. (One run through every kill
    point: a kill at a point of a fresh run and of a resumed one leave the same state behind.)"""
    ctx = ready_workspace
    # Five attempts of one run: past the default cap of three, a run is rolled back instead.
    pipe = Pipeline(ctx["ws"].root, tmp_path, {"UNLEARN_MAX_ATTEMPTS": "10"})
    run_id = None
    for point, (failpoint, ready) in KILL_POINTS.items():
        proc = pipe.start(pipe.run_request(ctx["request"]), failpoint)
        pipe.wait_for(
            proc, ready and (lambda r=ready: r(ctx["ws"].root)) or (lambda f=failpoint: pipe.reached(f)), point
        )
        pipe.kill(proc)
        dead = _dead_run(ctx)
        assert run_id in (None, dead.run_id), f"{point}: the rerun started a new run instead of resuming"
        run_id = dead.run_id
        assert_nothing_visible_moved(ctx)
        if point == "extract":
            assert list(ctx["ws"].root.glob("runs/worktrees/*"))  # the crash left the purge half-made
        versions = _versions_with(ctx["settings"], "REQ-FAULT")
        if point in ("after-version-before-alias", "mid-upload"):
            (mv,) = versions  # registered, never promoted
            assert mv.tags["unlearn.run_id"] == run_id, point
        else:
            assert versions == [], point
    assert StateStore.open(ctx["settings"]).get_run(run_id).attempt == len(KILL_POINTS)
    again = pipe.finish(pipe.run_request(ctx["request"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming run {run_id}" in again.stdout
    assert_fulfilled_exactly_once(ctx, run_id=run_id)
    # Killed mid-unlearn, the next attempt went on from the checkpoint, and none started over.
    resumed = _unlearning_resumed_from(ctx, run_id)
    assert resumed and min(resumed) >= 5, resumed
    assert not (ctx["ws"].root / "runs" / "kfp" / run_id).exists()
    # Asked again, the product says it is done and does nothing.
    third = pipe.finish(pipe.run_request(ctx["request"]))
    assert third.returncode == 0 and "already fulfilled by version" in third.stdout
    assert len(_versions_with(ctx["settings"], "REQ-FAULT")) == 1


@pytest.mark.faults
def test_a_dead_run_whose_world_moved_is_rolled_back_not_resumed(ready_workspace, tmp_path):
    """Killed mid-audit; meanwhile production moved: resuming would publish onto the wrong parent."""
    ctx, ws = ready_workspace, ready_workspace["ws"]
    pipe = Pipeline(ws.root, tmp_path)
    dead = _kill_at(ctx, pipe, "audit.running", "the audit")
    _operator_moves_production(ctx)
    assert _production(ctx["settings"]) == "2"

    again = pipe.finish(pipe.args("requests", "run-pending", *CHEAP, *LOOSE_AUDIT))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"rolling back run {dead.run_id}" in again.stdout and "production moved from v1 to v2" in again.stdout
    store = StateStore.open(ctx["settings"])
    assert store.get_run(dead.run_id).state == "rolled_back"
    row = store.get_request("REQ-FAULT")
    assert row.state == "done" and row.run_id != dead.run_id
    (mv,) = _versions_with(ctx["settings"], "REQ-FAULT")
    assert mv.tags["unlearn.parent_version"] == "2" and _production(ctx["settings"]) == str(mv.version)
    assert ws.ref_sha(run_ref(dead.run_id)) is None and not (ws.root / "checkpoints" / dead.run_id).exists()


@pytest.mark.faults
def test_killed_after_publishing_the_dataset_the_rerun_rolls_forward(ready_workspace, tmp_path):
    """The commit had begun (the purged revision served, production not yet moved): finish it, never undo it."""
    ctx = ready_workspace
    pipe = Pipeline(ctx["ws"].root, tmp_path)
    dead = _kill_at(ctx, pipe, "register.after_publish", "the publication")
    assert dead.committing and ctx["ws"].served() == dead.purged_rev != ctx["rev"]
    assert _production(ctx["settings"]) == "1"
    again = pipe.finish(pipe.run_request(ctx["request"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert_fulfilled_exactly_once(ctx, run_id=dead.run_id)


@pytest.mark.faults
def test_a_run_killed_while_committing_is_not_undone_when_production_moved(ready_workspace, tmp_path):
    ctx, ws = ready_workspace, ready_workspace["ws"]
    pipe = Pipeline(ws.root, tmp_path)
    dead = _kill_at(ctx, pipe, "register.after_publish", "the publication")
    _operator_moves_production(ctx)
    again = pipe.finish(pipe.args("requests", "run-pending", *CHEAP, *LOOSE_AUDIT))
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"run {dead.run_id} (REQ-FAULT) died while committing" in again.stdout and "needs a person" in again.stdout
    row = StateStore.open(ctx["settings"]).get_request("REQ-FAULT")
    assert (row.state, row.retryable) == ("failed", False) and "resolve by hand" in row.last_error
    # The deletion stays published; nothing put the records back.
    assert ws.served() == dead.purged_rev and _production(ctx["settings"]) == "3"


@pytest.mark.faults
@pytest.mark.slow
def test_a_text_to_image_run_killed_mid_unlearning_resumes_from_its_checkpoint(workspace, tiny_sd_dir, tmp_path):
    """The same transaction with a tiny-sd model: SIGKILL once its erasure has checkpointed; the
    rerun continues that run's erasure from the checkpoint and fulfils the request once."""
    model = "digits-t2i"
    settings = Settings(workspace=str(workspace), model_name=model)
    ws = Workspace(workspace)
    env = {"UNLEARN_MODEL_NAME": model}
    # Not this process's MLflow settings: an earlier test's mlflow.set_tracking_uri left
    # MLFLOW_TRACKING_URI pointing at its own workspace; the children must use this one's.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    register = [sys.executable, "-m", "unlearn_lib.cli", "registry", "register-base", "--workspace", str(workspace)]
    reg = subprocess.run(
        [*register, "--model", str(tiny_sd_dir), "--name", model],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=300,
    )
    assert reg.returncode == 0, reg.stdout + reg.stderr
    request = tmp_path / "req.json"
    request.write_text(json.dumps(REQUEST | {"model": model, "targets": {"labels": [7]}}))
    ctx = {"settings": settings, "ws": ws, "rev": ws.served(), "request": request, "erased": lambda r: r.label == 7}
    pipe = Pipeline(workspace, tmp_path, env)
    pipe.env = {k: v for k, v in pipe.env.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    # The default erasure (150 steps), checkpointed every 10; a light text-to-image audit.
    args = pipe.args(
        "pipeline", "run", "--request", str(request), "--set", "checkpoint_every=10",
        *[a for kv in ("samples_per_class=20", "extraction_samples=8", "attack_steps=10", "attack_samples=10")
          for a in ("--audit-set", kv)],
    )  # fmt: skip
    proc = pipe.start(args)
    pipe.wait_for(proc, lambda: _checkpoint_written(workspace), "the first text-to-image checkpoint")
    pipe.kill(proc)
    dead = _dead_run(ctx)
    assert_nothing_visible_moved(ctx)
    folder = workspace / "checkpoints" / dead.run_id / "unlearn-checkpoints"
    kept = [int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt")]
    assert kept and max(kept) < 150

    again = pipe.finish(args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming run {dead.run_id}" in again.stdout
    assert_fulfilled_exactly_once(ctx, run_id=dead.run_id)
    client = client_for(settings)
    (step,) = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
        filter_string=f"tags.`unlearn.step` = 'unlearn' and tags.`unlearn.run_id` = '{dead.run_id}' "
        "and attributes.status = 'FINISHED'",
    )
    record = json.load(open(client.download_artifacts(step.info.run_id, "unlearning.json")))
    assert record["family"] == "text-to-image" and record["steps"] == 150
    assert record["resumed_from"] == max(kept)  # continued from the newest checkpoint, not started over
    assert client.get_model_version(model, _production(settings)).tags["unlearn.audit_verdict"] == "pass"


# ---- servers that stop ------------------------------------------------------------------------------


def _start_mlflow(root: Path, port: int) -> subprocess.Popen:
    from conftest import _wait_http

    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
        ],
        stdout=open(root / "server.log", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    _wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.faults
def test_mlflow_down_before_register_fails_in_one_line_and_the_retry_resumes(workspace, tmp_path):
    from conftest import free_port
    from pipelines.run import ensure_base_registered

    port = free_port()
    server = _start_mlflow(tmp_path / "mlflow", port)
    try:
        settings = Settings(workspace=str(workspace), mlflow_tracking_uri=f"http://127.0.0.1:{port}")
        ws = Workspace(workspace)
        ensure_base_registered(settings, ws)
        ctx = {"settings": settings, "ws": ws, "rev": ws.served()}
        request = tmp_path / "req.json"
        request.write_text(json.dumps(REQUEST))
        env = {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        pipe = Pipeline(workspace, tmp_path, env)
        proc = pipe.start(pipe.run_request(request), "register.before")
        pipe.wait_for(proc, lambda: pipe.reached("register.before"), "the register step")
        _stop(server)
        pipe.release("register.before")
        assert proc.wait(timeout=300) == 1
        out = pipe.log.read_text()
        assert "Traceback" not in out
        lines = [ln for ln in out.splitlines() if "MLflow tracking server" in ln]
        assert lines == [
            f"failed at step register: MLflow tracking server http://127.0.0.1:{port} is not reachable "
            "(ConnectionError)"
        ], out
        store = StateStore.open(settings)
        row = store.get_request("REQ-FAULT")
        assert (row.state, row.retryable, row.attempts) == ("failed", True, 1)
        assert ws.served() == ctx["rev"]

        server = _start_mlflow(tmp_path / "mlflow", port)
        assert _production(settings) == "1" and _versions_with(settings, "REQ-FAULT") == []  # nothing half-registered
        again = pipe.finish(pipe.args("requests", "run-pending", *CHEAP, *LOOSE_AUDIT))
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"resuming run {row.run_id}" in again.stdout
        assert_fulfilled_exactly_once(ctx, run_id=row.run_id)
        # Only the register step was redone: the resumed unlearn and audit reused the first attempt's work.
        client = client_for(settings)
        exp = client.get_experiment_by_name(settings.mlflow_experiment)
        reused = client.search_runs([exp.experiment_id], filter_string="tags.`unlearn.reused_from_attempt` = 'true'")
        assert {r.data.tags["unlearn.step"] for r in reused} == {"unlearn", "audit"}
    finally:
        _stop(server)


@pytest.mark.faults
def test_s3_down_mid_upload_fails_cleanly_and_the_retry_registers_once(workspace, tmp_path, monkeypatch):
    import boto3

    from conftest import _wait_http, free_port
    from pipelines.run import ensure_base_registered

    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "fault-key",
        "AWS_SECRET_ACCESS_KEY": "fault-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        _wait_http(endpoint + "/moto-api/", moto)
        for k, v in creds.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="exports")
        settings = Settings(workspace=str(workspace), s3_bucket="exports", s3_endpoint_url=endpoint)
        ws = Workspace(workspace)
        ensure_base_registered(settings, ws)
        ctx = {"settings": settings, "ws": ws, "rev": ws.served()}
        request = tmp_path / "req.json"
        request.write_text(json.dumps(REQUEST))
        env = {**creds, "UNLEARN_S3_BUCKET": "exports", "UNLEARN_S3_ENDPOINT_URL": endpoint}
        pipe = Pipeline(workspace, tmp_path, env)
        proc = pipe.start(pipe.run_request(request), "upload.after_first_file")
        pipe.wait_for(proc, lambda: pipe.reached("upload.after_first_file"), "the upload")
        _stop(moto)
        pipe.release("upload.after_first_file")
        assert proc.wait(timeout=300) == 1
        out = pipe.log.read_text()
        assert "Traceback" not in out and "fault-secret" not in out
        assert f"failed at step register: S3 at {endpoint} is not reachable" in out, out
        row = StateStore.open(settings).get_request("REQ-FAULT")
        assert (row.state, row.retryable) == ("failed", True)
        assert _production(settings) == "1" and _versions_with(settings, "REQ-FAULT") == []
        assert ws.served() == ctx["rev"]

        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_http(endpoint + "/moto-api/", moto)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="exports")
        again = pipe.finish(pipe.run_request(request))
        assert again.returncode == 0, again.stdout + again.stderr
        assert_fulfilled_exactly_once(ctx, run_id=row.run_id)
        (mv,) = _versions_with(settings, "REQ-FAULT")
        assert mv.tags["unlearn.export_uri"] == f"s3://exports/unlearn/models/{settings.model_name}/v{mv.version}"
    finally:
        _stop(moto)


# ---- overlapping runs ---------------------------------------------------------------------------------


@pytest.mark.faults
def test_two_run_pending_at_once_on_postgresql_process_each_request_once(workspace, tmp_path, postgres_url):
    from pipelines.run import ensure_base_registered

    settings = Settings(workspace=str(workspace), state_db_url=postgres_url)
    ws = Workspace(workspace)
    ensure_base_registered(settings, ws)
    pipe = Pipeline(workspace, tmp_path, {"UNLEARN_STATE_DB_URL": postgres_url})
    for rid, subject in (("REQ-A", "subject-010"), ("REQ-B", "subject-011")):
        f = tmp_path / f"{rid}.json"
        f.write_text(json.dumps(REQUEST | {"request_id": rid, "targets": {"subject_ids": [subject]}}))
        sub = pipe.finish(pipe.args("requests", "submit", str(f)))
        assert sub.returncode == 0, sub.stderr
    # Both processes see the same two pending requests (one batch); only one may run them.
    cmd = pipe.args("requests", "run-pending", *CHEAP, *LOOSE_AUDIT)
    procs = [
        subprocess.Popen(cmd, env=pipe.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    password = postgres_url.split(":")[2].split("@")[0]
    assert all(password not in out for out in outputs)
    store = StateStore.open(settings)
    runs = store.runs()
    for rid in ("REQ-A", "REQ-B"):
        row = store.get_request(rid)
        assert row.state == "done"
        assert [e["kind"] for e in store.events(request_id=rid)].count("request.done") == 1
        assert len(_versions_with(settings, rid)) == 1
        assert sum(rid in r.ids for r in runs) == 1  # one run ever claimed it
    assert [r.state for r in runs] == ["succeeded"]
    assert [sorted(e["request_ids"]) for e in ws.ledger()] == [["REQ-A", "REQ-B"]]
    # The other process found the model's lease taken, or the requests already claimed.
    assert sum(("is held by run" in out) or ("no pending deletion requests" in out) for out in outputs) == 1, outputs
