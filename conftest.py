"""Shared fixtures: one digits dataset, one base model and one evaluator per test session.

The base model takes a few minutes to train on 2 CPU cores; it is cached under
``.cache/tests`` (or ``$UNLEARN_TEST_CACHE``) keyed by its configuration and the dataset
digest, so local re-runs skip training. CI starts from a clean clone and trains it once.

``make test`` runs the suite but its long, fault, extended and container tiers in two pytest-xdist
workers (``--dist loadfile``: a file's tests, and so its module fixtures, stay in one worker; the
slowest files go first); ``make test-long`` runs the long tier (``LONG_FIXTURES``), then the fault
scenarios; ``make test-extended`` the extended tier (``EXTENDED_FIXTURES``), outside .ci/run. The
expensive session fixtures are built once for the whole run, by whichever worker asks first,
under a file lock (:func:`_once`); the other worker waits for them instead of building them twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from unlearn_lib.audit import Evaluator, train_evaluator
from unlearn_lib.audit.evaluator import RECIPE as EVALUATOR_RECIPE
from unlearn_lib.data import DigitsConfig, build_digits, load_dataset
from unlearn_lib.models import DiffusionModel, TrainConfig, train_base

REPO = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("UNLEARN_TEST_CACHE", REPO / ".cache" / "tests"))
BASE_CONFIG = TrainConfig(preset="digits", steps=2000, batch_size=64, lr=2e-3, seed=0)

# nearest-distinct's measured shares (unlearn_lib.unlearning.targets.share_cache_dir): kept with
# the suite's models rather than in the home directory, and shared by its workers and the CLI and
# pipeline processes they start, which sample each base model's classes once instead of per test.
os.environ.setdefault("UNLEARN_CACHE_DIR", str(CACHE / "unlearn"))
# The pipelines' judges by dataset digest (unlearn_lib.compliance.steps.JUDGE_STORE_ENV): every
# test workspace starts from the same digits, and each request's audit trained its judge again
# (~1 CPU-minute of a 20-step fault scenario's ~3; a dozen such runs in CI). Synthetic data only.
os.environ.setdefault("UNLEARN_JUDGE_STORE", str(CACHE / "judges"))

T = TypeVar("T")
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))

if WORKERS > 1:
    # Two workers on two cores: one thread each, and for the processes they start. Two threads
    # each would oversubscribe the cores; one thread runs the digits model at ~0.7x of two.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


# The order xdist hands files out in (``--no-loadscope-reorder``; its default puts files with many
# tests first, which left the slowest file running alone at the end); a file missing here runs later.
# test_faults goes first: its worker trains the base model (3.5 minutes), while the other works
# through files that need no base model (test_cli trains its own tiny one) instead of waiting for
# it. test_compliance builds the weak run early; test_evidence and the component tests, which read
# it too, come late, when it is there (next to each other, one worker sat 90 s on its lock).
# In the long tier (its own run) the files that build the long fixtures go first; a file that
# needs a fixture another worker is building waits for it on its lock. The demo's two requests
# (about 570 s) are that tier's critical path, so its file is handed out first there (it has no
# test in `make test`); the other worker takes the rest.
RUN_FIRST = (
    "tests/pipelines/test_faults.py",
    "tests/pipelines/test_demo_erasure.py",
    "tests/unlearn_lib/test_cli.py",
    "tests/unlearn_lib/test_data.py",
    "tests/unlearn_lib/test_state.py",
    "tests/unlearn_lib/test_requests.py",
    "tests/unlearn_lib/test_ddp.py",
    # More files that need no base model, so that the worker not training it reaches
    # test_compliance (whose weak run needs it) as late as it can: it sat 74 s on the base
    # model's lock there (make test from a clean cache, 2 cores, 2026-12-05).
    "tests/unlearn_lib/test_imports.py",
    "tests/unlearn_lib/test_s3_store.py",
    "tests/infra/test_bootstrap.py",
    "tests/infra/test_manifests.py",
    "tests/unlearn_lib/test_layers.py",
    "tests/unlearn_lib/test_containers.py",
    "tests/unlearn_lib/test_checkpoint.py",
    "tests/unlearn_lib/test_forget_quality.py",
    "tests/unlearn_lib/test_redact.py",
    "tests/unlearn_lib/test_step_context.py",
    "tests/test_infra.py",
    # In the long tier, the server run and the redraw (~5 min in one file) start beside the demo
    # (~12.6 min since it trains its own base, 2026-12-05). Placed after test_audit, they went to
    # whichever worker came free first, which can also be the one that takes the GPU benchmark's
    # smoke run (CI's long tier: 13.5 min; 12.1 after).
    "tests/pipelines/test_compliance.py",
    "tests/unlearn_lib/test_unlearning.py",
    "tests/unlearn_lib/test_audit.py",
    "tests/unlearn_lib/test_remote_workspace.py",
    "tests/unlearn_lib/test_successive.py",
    "tests/pipelines/test_schedule.py",
    "tests/unlearn_lib/test_t2i.py",
    "tests/pipelines/test_t2i_compliance.py",
    "tests/test_benchmarks.py",
)


# A test that needs one of these runs in the long tier (``make test-long``, and .ci/run): a whole
# deletion request end to end (the demo's two, the server path's).
LONG_FIXTURES = ("demo_run", "server_run")
# A test that needs one of these runs in the extended tier (``make test-extended``, not in .ci/run):
# the trained text-to-image model (four to five CPU minutes to train, and its request end to end and
# killed mid-unlearning on top), which with the rest put CI on a 2-core machine past its 90 minutes.
EXTENDED_FIXTURES = ("tiny_sd_dir",)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the long and extended tiers (``LONG_FIXTURES``, ``EXTENDED_FIXTURES``); then the slow files first.

    ``--dist loadfile`` keeps each file's tests, and so its module fixtures, in one worker. (Not
    ``loadgroup``: with pytest 9.2 it no longer groups, pytest-dev/pytest-xdist#1386; the long
    tier's first run with it built the server run and the text-to-image run once in each worker.)
    """
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any(name in names for name in EXTENDED_FIXTURES):
            item.add_marker(pytest.mark.extended)
        elif any(name in names for name in LONG_FIXTURES):
            item.add_marker(pytest.mark.long)
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(RUN_FIRST)))


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` across processes (xdist workers, or two local runs on one cache)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        yield


def _once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(folder)`` once per test run, whichever xdist worker asks first; the others get its value.

    The value is pickled beside the folder, so it must be plain data (paths, dataclasses); the
    folder lives under the run's shared temporary root and every worker reads the same files.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    done = root.with_suffix(".pkl")
    with _exclusive(root):
        if done.is_file():
            return pickle.loads(done.read_bytes())
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        value = build(root)
        done.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(root: Path) -> Path:
        build_digits(root / "digits", DigitsConfig())
        return root / "digits"

    return _once(tmp_path_factory, "data", build)


@pytest.fixture(scope="session")
def digits(digits_dir: Path):
    return load_dataset(digits_dir)


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def base_model_dir(digits) -> Path:
    """The session's base model: trained with planted canaries, so it has memorized them."""
    key = _cache_key("base", asdict(BASE_CONFIG), digits.digest())
    out = CACHE / f"base-{key}"
    with _exclusive(out):
        if not (out / "unlearn_model.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            # One thread, like everything else in a worker: trained on two while the other worker
            # trained tiny-sd, it took 12 minutes instead of ~4 (three threads on two cores).
            train_base(digits, out, BASE_CONFIG, progress=False)
    return out


T2I_CONFIG_ARGS = {"preset": "tiny-sd", "seed": 0}


@pytest.fixture(scope="session")
def tiny_sd_dir(digits) -> Path:
    """The tiny-sd text-to-image model of the digits' captions, trained once (a few CPU minutes) and cached."""
    from unlearn_lib.t2i import train_t2i

    config = t2i_config()
    key = _cache_key("tiny-sd", asdict(config), digits.digest())
    out = CACHE / f"tiny-sd-{key}"
    with _exclusive(out):
        if not (out / "unlearn_model.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            train_t2i(digits, out, config, progress=False)
    return out


def t2i_config():
    from unlearn_lib.t2i import T2ITrainConfig

    return T2ITrainConfig(**T2I_CONFIG_ARGS)


@pytest.fixture(scope="session")
def base_model(base_model_dir: Path) -> DiffusionModel:
    return DiffusionModel.load(base_model_dir)


@pytest.fixture(scope="session")
def evaluator(digits) -> Evaluator:
    from unlearn_lib.compliance.steps import store_judge

    key = _cache_key("evaluator", EVALUATOR_RECIPE, digits.digest())
    out = CACHE / f"evaluator-{key}"
    with _exclusive(out):
        if (out / "evaluator.json").is_file():
            ev = Evaluator.load(out)
        else:
            ev = train_evaluator(digits, progress=False)
            shutil.rmtree(out, ignore_errors=True)
            ev.save(out)
        # The same recipe on the same data: a class erasure's pipeline judge (fitted on the
        # unpurged digits) is this one.
        store_judge(f"{digits.digest()[:16]}-{EVALUATOR_RECIPE}", ev)
        return ev


# ---- real services on 127.0.0.1 -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service behind {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"service behind {url} did not come up in {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory) -> dict:
    """An S3 endpoint: moto in server mode over HTTP, with a bucket, and fake credentials."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/moto-api/", proc)
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket="unlearn-test")
    yield {"endpoint": url, "bucket": "unlearn-test", "env": env}
    _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_env) -> str:
    """A real `mlflow server` with a SQLite backend and its artifacts on the S3 endpoint."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    # Without its job runner: mlflow 3.x starts seven huey workers otherwise (CPU, slow shutdown).
    env = {
        **os.environ,
        **s3_env["env"],
        "MLFLOW_S3_ENDPOINT_URL": s3_env["endpoint"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    log = open(root / "server.log", "w")
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
            f"s3://{s3_env['bucket']}/mlartifacts",
            "--serve-artifacts",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/health", proc, timeout=120)
    yield url
    _stop(proc)


# ---- a git + DVC workspace with data and the base model ----------------------------------------------


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory, base_model_dir, digits) -> Path:
    """A workspace after `dvc repro`: dataset versions in DVC, the session's base model as train_base's output.

    The base model is the one trained above with the same configuration on a dataset of the same
    digest; `dvc commit` records it as the stage's output instead of training it a second time.
    """
    from unlearn_lib.data import load_dataset
    from unlearn_lib.workspace import Workspace

    def build(folder: Path) -> Path:
        root = folder / "ws"
        ws = Workspace.init(root)
        ws.dvc("repro", "prepare", "purge")
        assert load_dataset(root / "data" / "digits").digest() == digits.digest()
        shutil.copytree(base_model_dir, root / "models" / "base")
        ws.dvc("commit", "-f", "train_base")
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "base model")
        return root

    return _once(tmp_path_factory, "workspace-template", build)


@pytest.fixture()
def workspace(workspace_template, tmp_path) -> Path:
    """A private copy of the template workspace (git history and DVC cache included)."""
    dst = tmp_path / "ws"
    shutil.copytree(workspace_template, dst, symlinks=True)
    return dst


WEAK_REQUEST = {
    "request_id": "REQ-WEAK",
    "received_at": "2026-11-27T10:00:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-canary"]},
}


@pytest.fixture(scope="session")
def weak_pipeline_run(workspace_template, tmp_path_factory) -> dict:
    """One kfp.local run of the whole DAG that under-forgets on purpose (2 steps, no stop).

    Fast, and its audit must fail: the pipeline tests check that production stays put, the
    component tests read each task's outputs from the run's pipeline root.
    """
    from pipelines.run import ensure_base_registered, run_local
    from unlearn_lib.requests import DeletionBatch, parse_request
    from unlearn_lib.settings import Settings
    from unlearn_lib.workspace import Workspace

    def build(folder: Path) -> dict:
        root = folder / "ws"
        shutil.copytree(workspace_template, root, symlinks=True)
        settings = Settings(workspace=str(root))
        ws = Workspace(root)
        rev_before = ws.head()
        ensure_base_registered(settings, ws)
        outcome = run_local(
            settings,
            DeletionBatch((parse_request(WEAK_REQUEST),)),
            options={"steps": 2, "stop": "none"},
            audit_params={"samples_per_class": 10, "extraction_samples": 200},
        )
        runs = sorted((root / "runs" / "kfp" / outcome.run_id).glob("unlearn-compliance-*"))
        return {"settings": settings, "outcome": outcome, "rev_before": rev_before, "run_dir": runs[-1], "ws": ws}

    return _once(tmp_path_factory, "weak-run", build)


# ---- unlearned models shared by the unlearning and audit tests -----------------------------------------


@pytest.fixture(scope="session")
def class3_model_dir(base_model_dir, digits_dir, tmp_path_factory) -> Path:
    """EraseDiff with its defaults, erasing class 3 from the session's base model."""
    from unlearn_lib.data import ForgetTargets
    from unlearn_lib.unlearning import erase

    def build(folder: Path) -> Path:
        out = folder / "class3"
        erase(base_model_dir, digits_dir, ForgetTargets.build(labels=[3]), "erasediff", out, progress=False)
        return out

    return _once(tmp_path_factory, "erased-class3", build)


@pytest.fixture(scope="session")
def canary_model_dir(base_model_dir, digits_dir, tmp_path_factory) -> Path:
    """EraseDiff with its defaults, deleting every record of the canaries' owner."""
    from unlearn_lib.data import ForgetTargets
    from unlearn_lib.unlearning import erase

    def build(folder: Path) -> Path:
        out = folder / "canary"
        targets = ForgetTargets.build(subject_ids=["subject-canary"])
        erase(base_model_dir, digits_dir, targets, "erasediff", out, progress=False)
        return out

    return _once(tmp_path_factory, "erased-canary", build)


# ---- a real PostgreSQL server for the state database ---------------------------------------------------


def _pg_bin(name: str) -> str | None:
    import glob

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """PostgreSQL on 127.0.0.1 with password authentication, started from the machine's server binaries.

    As root (CI, these machines), the server runs as the ``postgres`` system user, which Debian's
    ``postgresql`` package creates; `.ci/run` installs the package when the binaries are missing.
    """
    import secrets
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="unlearn-pg-"))
    os.chmod(root, 0o755)
    password = "pw" + secrets.token_hex(12)
    (root / "pw").write_text(password)
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for p in (root, root / "pw"):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(
        [
            *prefix,
            initdb,
            "-D",
            str(data),
            "-U",
            "unlearn",
            f"--pwfile={root / 'pw'}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    yield {"host": "127.0.0.1", "port": port, "user": "unlearn", "password": password, "root": root}
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's server; the URL carries the password (as users configure it)."""
    import uuid

    import psycopg

    s = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=s["host"], port=s["port"], user=s["user"], password=s["password"], dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path) -> str:
    """The same suite against both state-database backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")


def file_hashes(*roots: Path) -> dict[str, Path]:
    """sha256 of every regular file under the roots (symlinks are not followed: their targets are)."""
    found = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    found[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    return found


# ---- the main job, once per session ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_run(digits, tmp_path_factory) -> dict:
    """`unlearn pipeline demo` as `make demo` runs it (both deletion requests), in a folder of its own.

    Its own workspace and DVC cache, and torch's default threads: `dvc repro` trains the base model
    there as on a fresh clone (not the suite's base, trained with one thread: a base of another
    digest). On the demo's own base the class request once failed its audit while this test, then
    run on the suite's base, passed (benchmarks/README.md, "The demo's class request").
    The tests of what a finished deletion leaves behind (nothing of the data) and of the evidence
    read this workspace; they must not change it.
    """

    def build(folder: Path) -> dict:
        from mlflow import MlflowClient

        root = folder / "workspace"
        # Nothing of the session's other services: earlier tests leave MLflow's and S3's variables set
        # in this process (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to child processes).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARN_", "AWS_", "MLFLOW_"))}
        demo_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
        # Its two threads share the cores with the other worker: OpenMP's spinning idle threads then
        # cost the demo 17 min instead of ~7 (CI, 2026-12-05). Passive waiting changes no result.
        demo_env["OMP_WAIT_POLICY"] = "PASSIVE"
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("unlearn")), "pipeline", "demo", "--workspace", str(root)]
            + ["--dvc-cache", str(folder / "dvc-cache")],
            capture_output=True,
            text=True,
            env=demo_env,
            timeout=2400,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # Before the deletions: the revision version 1 was registered from, and its dataset, which
        # is the session's (the same parameters build the same digits).
        client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")  # no global MLflow state
        tags = client.get_model_version("digits-diffusion", "1").tags
        assert tags["unlearn.dataset_digest"] == digits.digest()
        before = {"head": tags["unlearn.dataset_rev"], "source": digits}
        # The later commands the tests run share the cores with the other worker: one thread.
        return {"root": root, "before": before, "stdout": proc.stdout, "env": env | {"OMP_NUM_THREADS": "1"}}

    return _once(tmp_path_factory, "demo", build)


@contextlib.contextmanager
def demo_workspace_held(demo_run: dict) -> Iterator[None]:
    """The demo's workspace to one test at a time across workers: some tests strip it to its stores
    for a while (the evidence must come from MLflow and the state database alone)."""
    with _exclusive(Path(demo_run["root"])):
        yield


@pytest.fixture()
def demo_lock(demo_run) -> Iterator[None]:
    with demo_workspace_held(demo_run):
        yield
