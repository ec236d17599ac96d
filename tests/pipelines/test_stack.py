"""`unlearn stack up|status|down` with real processes: moto, `mlflow server`, `git daemon`, PostgreSQL.

One stack is started for the module (cold start about a minute on 2 cores: MLflow's start-up
and the DVC push dominate); its tests read it through what `up` wrote (settings.yaml and env),
as a user or the container runner would. The test that kills a service and the one that stops
the stack run last, in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from unlearn_lib.data import load_dataset
from unlearn_lib.stack import down, settings_for, stack_environment
from unlearn_lib.workspace import Workspace

UNLEARN = str(Path(sys.executable).parent / "unlearn")


def cli_env(**extra: str) -> dict:
    # The caller's UNLEARN_* or MLflow variables must not point these commands elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARN_", "AWS_")) and k != "MLFLOW_TRACKING_URI"}
    return env | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"} | extra


def stack_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [UNLEARN, "stack", *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stack_file(d: Path) -> dict:
    return json.loads((d / "stack.json").read_text())


def s3_client(d: Path):
    import boto3

    env, settings = stack_environment(d), settings_for(d)
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def keys(d: Path, prefix: str) -> list[str]:
    s3 = s3_client(d)
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings_for(d).s3_bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


@pytest.fixture(scope="module")
def root(workspace_template):
    """A folder the ``postgres`` user can traverse (pytest's own tmp folders are mode 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="unlearn-stack-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(root, workspace_template):
    ws = root / "ws"
    shutil.copytree(workspace_template, ws, symlinks=True)
    d = root / "stack"
    t0 = time.perf_counter()
    proc = stack_cli("up", "--dir", str(d), "--workspace", str(ws), cwd=root)
    seconds = time.perf_counter() - t0
    try:
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        yield {"dir": d, "ws": ws, "up": proc, "outputs": [proc], "seconds": seconds}
    finally:
        down(d, purge=True)


# ---- a started, seeded stack ------------------------------------------------------------------------


def test_up_starts_every_service_and_status_says_so(stack):
    d = stack["dir"]
    assert "stack up in" in stack["up"].stdout and f"source {d}/env" in stack["up"].stdout
    st = stack_cli("status", "--dir", str(d), "--json", cwd=d.parent)
    stack["outputs"].append(st)
    assert st.returncode == 0, st.stdout
    services = json.loads(st.stdout)["services"]
    assert set(services) == {"s3", "mlflow", "git", "postgres"}
    assert all(s["alive"] and s["answering"] for s in services.values()), services
    assert all(listening(s["port"]) for s in services.values())
    assert oct((d / "env").stat().st_mode & 0o777) == "0o600"
    settings = settings_for(d)
    assert settings.git_remote == f"git://127.0.0.1:{services['git']['port']}/workspace.git"
    assert settings.dvc_remote == "s3://unlearn/unlearn/dvc"
    assert settings.workspace_path == stack["ws"].resolve()


def test_s3_holds_the_dvc_data_and_the_mlflow_artifacts(stack):
    d = stack["dir"]
    dvc_objects = keys(d, "unlearn/dvc/")
    # Every output dvc.lock references at HEAD: data/source, data/digits (one object per file) and models/base.
    assert len(dvc_objects) > 1000, len(dvc_objects)
    mlflow_objects = keys(d, "mlflow/")
    assert any(k.endswith("/unlearn_model.json") for k in mlflow_objects), mlflow_objects[:20]
    # Artifacts went through the server into S3, not into a local folder.
    assert not (d / "mlflow" / "mlartifacts").exists() and not (stack["ws"] / "mlartifacts").exists()


def test_the_registry_has_the_base_model_as_version_1_in_production(stack):
    from mlflow import MlflowClient

    settings = settings_for(stack["dir"])
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    mv = client.get_model_version_by_alias(settings.model_name, "production")
    assert mv.version == "1"
    run = client.get_run(mv.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert mv.tags["unlearn.dataset_rev"] == Workspace(stack["ws"]).head()


def test_a_fresh_clone_from_the_git_server_pulls_its_data_from_the_dvc_remote(stack, root):
    d, ws = stack["dir"], stack["ws"]
    settings = settings_for(d)
    head = Workspace(ws).head()
    remote = subprocess.run(["git", "ls-remote", settings.git_remote], capture_output=True, text=True, check=True)
    assert f"{head}\trefs/heads/main" in remote.stdout.splitlines()

    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", settings.git_remote, str(clone)], check=True, capture_output=True)
    env = cli_env(**stack_environment(d))

    def dvc(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    # The endpoint is this machine's: it goes to config.local, never into the repository.
    dvc("remote", "add", "--local", "--default", "stack", settings.dvc_remote)
    dvc("remote", "modify", "--local", "stack", "endpointurl", settings.s3_endpoint_url)
    dvc("cache", "dir", "--local", str(clone / ".fresh-cache"))  # nothing restored from a local cache
    dvc("pull", "-q", settings.dataset_path)
    assert load_dataset(clone / settings.dataset_path).digest() == load_dataset(ws / settings.dataset_path).digest()
    assert "endpointurl" not in (clone / ".dvc" / "config").read_text()


def test_the_state_database_is_postgresql_reached_with_the_password_from_env(stack):
    from unlearn_lib.state import StateStore

    settings = settings_for(stack["dir"])
    assert settings.state_url.startswith("postgresql+psycopg://unlearn:")
    assert StateStore.open(settings).list_requests() == []


def test_a_killed_service_is_reported_down_and_up_restarts_it_then_is_idempotent(stack):
    d = stack["dir"]
    git = stack_file(d)["services"]["git"]
    os.killpg(git["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while listening(git["port"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = stack_cli("status", "--dir", str(d), cwd=d.parent)
    stack["outputs"].append(st)
    assert st.returncode == 1
    assert any(line.startswith("git") and " down " in line for line in st.stdout.splitlines()), st.stdout

    again = stack_cli("up", "--dir", str(d), cwd=d.parent)
    stack["outputs"].append(again)
    assert again.returncode == 0, again.stderr
    assert "restarted git" in again.stdout
    before = stack_file(d)
    assert stack_cli("status", "--dir", str(d), cwd=d.parent).returncode == 0
    remote = subprocess.run(["git", "ls-remote", settings_for(d).git_remote], capture_output=True, text=True)
    assert remote.returncode == 0 and "refs/heads/main" in remote.stdout

    idle = stack_cli("up", "--dir", str(d), cwd=d.parent)
    stack["outputs"].append(idle)
    assert idle.returncode == 0 and "already running; nothing to do" in idle.stdout and "note:" not in idle.stdout
    assert stack_file(d) == before


def test_no_credentials_in_the_stack_files_logs_or_output(stack):
    d = stack["dir"]
    env = stack_environment(d)
    secrets = [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["UNLEARN_STATE_DB_PASSWORD"]]
    texts = {p.name: p.read_text(errors="replace") for p in [d / "settings.yaml", d / "stack.json"]}
    texts |= {f"logs/{p.name}": p.read_text(errors="replace") for p in (d / "logs").glob("*.log")}
    texts |= {f"output {i}": p.stdout + p.stderr for i, p in enumerate(stack["outputs"])}
    texts["dvc config.local"] = (stack["ws"] / ".dvc" / "config.local").read_text()
    assert len(texts) >= 8
    leaked = [(name, s[:4]) for name, text in texts.items() for s in secrets if s in text]
    assert leaked == []


def test_down_stops_everything_and_a_second_down_says_so(stack):
    d = stack["dir"]
    services = stack_file(d)["services"]
    t0 = time.perf_counter()
    stopped = stack_cli("down", "--dir", str(d), cwd=d.parent)
    stack["down_seconds"] = time.perf_counter() - t0
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped "), stopped.stdout
    assert not [name for name, s in services.items() if listening(s["port"])]
    st = stack_cli("status", "--dir", str(d), cwd=d.parent)
    assert st.returncode == 1 and "NOT up" in st.stdout
    again = stack_cli("down", "--dir", str(d), cwd=d.parent)
    assert again.returncode == 0 and "no stack running" in again.stdout


# ---- a stack that fails half-way --------------------------------------------------------------------


def test_a_service_that_dies_while_starting_tears_the_stack_down_with_one_line(root, workspace_template):
    ws = root / "ws-failing"
    shutil.copytree(workspace_template, ws, symlinks=True)
    d, points = root / "failing", root / "failpoints"
    env = cli_env(UNLEARN_FAILPOINTS="stack.services_spawned", UNLEARN_FAILPOINT_DIR=str(points))
    proc = subprocess.Popen(
        [UNLEARN, "stack", "up", "--dir", str(d), "--workspace", str(ws)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (points / "stack.services_spawned.reached").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        services = stack_file(d)["services"]
        os.killpg(services["mlflow"]["pid"], signal.SIGKILL)
        (points / "stack.services_spawned.release").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"unlearn: error: mlflow did not start (it exited); see its log {d}/logs/mlflow.log")
    assert not [name for name, s in services.items() if listening(s["port"])]
    assert stack_cli("status", "--dir", str(d), cwd=root).returncode == 1
    assert stack_cli("down", "--dir", str(d), "--purge", cwd=root).returncode == 0
    assert not d.exists()


def test_postgres_whose_port_is_taken_before_it_binds_starts_on_another(root):
    # The race CI once lost: a port found free is held by someone else by the time the
    # server binds it. Here a real listener holds it.
    from unlearn_lib import stack as st

    d = root / "pg-clash"
    (d / "logs").mkdir(parents=True)
    os.chmod(d, 0o755)
    log = d / "logs" / "postgres.log"
    st._init_postgres(d, "pw-clash", str(log))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        svc = st._start_postgres_on_a_free_port(d, prefer=taken)
        try:
            assert svc.port != taken and listening(svc.port)
            assert "Address already in use" in log.read_text()
            with st._pg_connect(svc.port, "pw-clash", "postgres") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            st._stop_postgres(d, svc)
    assert not listening(svc.port)


# ---- without services ------------------------------------------------------------------------------


def test_a_folder_that_is_not_a_stack_is_neither_used_nor_deleted(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    up_ = stack_cli("up", "--dir", str(folder), "--workspace", str(tmp_path / "absent"), cwd=tmp_path)
    purge = stack_cli("down", "--dir", str(folder), "--purge", cwd=tmp_path)
    for proc in (up_, purge):
        assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
        assert proc.stderr == f"unlearn: error: {folder} exists and is not a stack folder (no stack.json)" + (
            "; choose another --dir\n" if proc is up_ else "; not deleting it\n"
        )
    assert (folder / "keep.txt").read_text() == "mine" and not (tmp_path / "absent").exists()
    st = stack_cli("status", "--dir", str(tmp_path / "none"), cwd=tmp_path)
    assert st.returncode == 1 and "no stack in" in st.stdout
    nothing = stack_cli("down", "--dir", str(tmp_path / "none"), cwd=tmp_path)
    assert nothing.returncode == 0 and "no stack running" in nothing.stdout
