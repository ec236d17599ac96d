"""A local stack on 127.0.0.1 with what a cluster provides: S3, MLflow, a git server, PostgreSQL.

``up`` starts four services, each in its own session (so one process-group signal stops a
service and everything it spawned), on free ports of 127.0.0.1:

- ``s3``: moto's server (objects in memory) with one bucket;
- ``mlflow``: ``mlflow server`` (SQLite in DIR, or the stack's PostgreSQL) that stores its
  artifacts in the bucket and serves them to clients (clients need no S3 credentials);
- ``git``: ``git daemon`` serving the bare repository ``DIR/git/workspace.git`` with pushes on;
- ``postgres``: the state database (or a SQLite file in DIR for machines without PostgreSQL).

Then it seeds them from the local workspace: ``main`` is pushed to the git server, the data
``dvc.lock`` references is pushed to the DVC remote in the bucket, and the base model is
registered as version 1, alias ``production``.

Everything about the stack lives in DIR: ``stack.json`` (pids, ports, logs: no credentials),
``logs/``, ``settings.yaml`` (what ``unlearn`` reads, without credentials: the settings loader
refuses them in files) and ``env`` (mode 0600: the credentials and ``UNLEARN_SETTINGS``, for
``source DIR/env``). S3 lives in moto's memory, so a stack that was stopped cannot be resumed:
the next ``up`` starts a fresh one in the same DIR.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnlearnError
from .faults import failpoint
from .settings import STATE_DB_PASSWORD_ENV, Settings

__all__ = [
    "SERVICES",
    "Service",
    "StackError",
    "StackInfo",
    "down",
    "settings_for",
    "stack_environment",
    "status",
    "up",
]

SERVICES = ("s3", "mlflow", "git", "postgres")
STACK_FILE = "stack.json"
ENV_FILE = "env"
SETTINGS_FILE = "settings.yaml"
BUCKET = "unlearn"
S3_PREFIX = "unlearn"
REGION = "us-east-1"
DB_USER = "unlearn"
DB_NAME = "unlearn"
DVC_REMOTE_NAME = "unlearn-stack"
HOST = "127.0.0.1"
# Generous for 2 busy cores: `mlflow server` imports most of MLflow and migrates its database.
START_TIMEOUT = {"s3": 60.0, "mlflow": 180.0, "git": 15.0, "postgres": 60.0}
STOP_TIMEOUT = 10.0

Echo = Callable[[str], None]


class StackError(UnlearnError):
    """The local stack could not be started, stopped or read."""


@dataclass
class Service:
    name: str
    port: int
    url: str
    log: str
    pid: int | None = None
    # The process's start time (clock ticks since boot): a recycled pid is not our service.
    started: int | None = None


@dataclass
class StackInfo:
    dir: Path
    services: dict[str, Service]
    state_db: str
    mlflow_backend: str
    settings_path: Path
    env_path: Path
    already_running: bool = False
    restarted: list[str] = field(default_factory=list)
    seed: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _noop(_: str) -> None:
    pass


# ---- processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgrp [2], starttime [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat and len(stat) > 19 else None


def _pid_alive(pid: int | None, started: int | None = None) -> bool:
    """Is ``pid`` running and still the process we started? Zombies count as dead."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc (not Linux): trust kill(0)
    if stat[0] == "Z":
        return False
    return started is None or int(stat[19]) == started


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[0] != "Z" and int(stat[2]) == pgid:
                members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (the library was called in-process), so it is not left a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stop_groups(pgids: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM whole process groups (together: their shutdowns overlap), SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        left = [g for g in pgids if _group_members(g)]
        for pgid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            for pgid in left:
                _reap(pgid)
            left = [g for g in left if _group_members(g)]
        if not left:
            return


def _our_group(svc: Service) -> bool:
    """Is process group ``svc.pid`` still the service's, even if its leader died?

    Only a process can make a group with its own pid as the id; so when no process with that pid
    exists, the group's members are what is left of ours (a killed MLflow's workers). A live
    process with that pid but another start time is a stranger.
    """
    if not svc.pid:
        return False
    if _pid_alive(svc.pid, svc.started):
        return True
    try:
        os.kill(svc.pid, 0)
    except ProcessLookupError:
        return bool(_group_members(svc.pid))
    except PermissionError:
        return False
    stat = _proc_stat(svc.pid)
    return stat is not None and stat[0] == "Z" and bool(_group_members(svc.pid))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _tcp_ok(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def _health_url(svc: Service) -> str | None:
    if svc.name == "s3":
        return f"{svc.url}/moto-api/"
    if svc.name == "mlflow":
        return f"{svc.url}/health"
    return None


def _answering(svc: Service) -> bool:
    health = _health_url(svc)
    return _http_ok(health) if health else _tcp_ok(svc.port)


def _last_line(log: str) -> str:
    from .redact import redact_text

    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return redact_text(lines[-1])[:300] if lines else ""


def _failed(svc: Service, why: str) -> StackError:
    last = _last_line(svc.log)
    return StackError(f"{svc.name} did not start ({why}); see its log {svc.log}{': ' + last if last else ''}")


def _wait_ready(svc: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(svc.pid, svc.started):
            _reap(svc.pid or 0)
            raise _failed(svc, "it exited")
        if _answering(svc):
            return
        time.sleep(0.3)
    raise _failed(svc, f"not answering on port {svc.port} after {timeout:.0f}s")


def _spawn(svc: Service, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Service:
    log = open(svc.log, "w")  # the child gets its own copy of the descriptor; ours is closed below
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            # Its own session: the service outlives this command, ignores the terminal's Ctrl-C,
            # and one killpg stops it with every worker it spawned.
            start_new_session=True,
        )
    except OSError as err:
        raise StackError(f"{svc.name} could not be started ({argv[0]}: {err.strerror})") from None
    finally:
        log.close()
    svc.pid = proc.pid
    svc.started = _start_ticks(proc.pid)
    return svc


# ---- the stack's folder ----------------------------------------------------------------------


def _dir(d: str | os.PathLike[str]) -> Path:
    return Path(d).resolve()


def _read_stack(d: Path) -> dict[str, Any] | None:
    path = d / STACK_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StackError(f"{path} is unreadable ({err}); `unlearn stack down --purge --dir {d}` clears it") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise StackError(f"{path} is not a stack file; `unlearn stack down --purge --dir {d}` clears it")
    return data


def _services(data: Mapping[str, Any]) -> dict[str, Service]:
    raw = data["services"]
    return {name: Service(**raw[name]) for name in SERVICES if name in raw}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_stack(d: Path, data: dict[str, Any], services: Mapping[str, Service]) -> None:
    data["services"] = {name: asdict(svc) for name, svc in services.items()}
    _write_json(d / STACK_FILE, data)


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """One `up` or `down` at a time per stack folder."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_env_file(path: Path, values: Mapping[str, str]) -> None:
    lines = [
        "# The local unlearn stack's credentials and settings: `source` this file. Keep it private.",
        *(f"export {k}={shlex.quote(v)}" for k, v in values.items()),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def stack_environment(d: str | os.PathLike[str] = ".stack") -> dict[str, str]:
    """The variables ``DIR/env`` exports: S3 credentials, the state database's password, ``UNLEARN_SETTINGS``."""
    path = _dir(d) / ENV_FILE
    if not path.is_file():
        raise StackError(f"no stack in {_dir(d)} ({path} does not exist): start one with `unlearn stack up`")
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def settings_for(d: str | os.PathLike[str] = ".stack") -> Settings:
    """The stack's settings: ``DIR/settings.yaml`` with the password from ``DIR/env`` applied.

    Only the stack's variables are read, not this process's ``UNLEARN_*``: the result is the
    stack, whatever shell it is called from. S3 credentials are not part of Settings; callers
    that talk to S3 themselves put :func:`stack_environment` into their environment.
    """
    env = stack_environment(d)
    return Settings.load(_dir(d) / SETTINGS_FILE, env=env)


# ---- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parts[-3]))

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


def _pg_tools() -> tuple[str, str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise StackError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
            "(or `unlearn stack up --state-db sqlite` for runs on this machine only)"
        )
    return initdb, pg_ctl


def _pg_prefix() -> tuple[list[str], tuple[int, int] | None]:
    """As root the server must run as the ``postgres`` user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return [], None
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "PostgreSQL cannot run as root and there is no 'postgres' user: apt-get install postgresql "
            "(or `unlearn stack up --state-db sqlite`)"
        ) from None
    return ["runuser", "-u", "postgres", "--"], (user.pw_uid, user.pw_gid)


def _pg_run(args: list[str], what: str, log: str, timeout: float = 120.0) -> None:
    prefix, _ = _pg_prefix()
    try:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise StackError(f"postgres: {what} did not finish in {timeout:.0f}s; see its log {log}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise StackError(f"postgres did not start ({what} failed: {detail}); see its log {log}")


def _init_postgres(d: Path, password: str, log: str) -> None:
    initdb, _ = _pg_tools()
    _, owner = _pg_prefix()
    root = d / "pg"
    root.mkdir(mode=0o700, exist_ok=True)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    os.chmod(pwfile, 0o600)
    Path(log).touch()
    if owner:
        for p in (root, pwfile, Path(log)):
            os.chown(p, *owner)
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(root)], capture_output=True)
        if probe.returncode != 0:
            pwfile.unlink()
            raise StackError(
                f"PostgreSQL runs as user postgres, who cannot reach {root}: make its parent folders "
                f"traversable (chmod o+x) or choose another --dir"
            )
    try:
        _pg_run(
            [
                initdb,
                "-D",
                str(root / "data"),
                "-U",
                DB_USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
            log,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    # TCP on 127.0.0.1 only, and no Unix socket: a socket path under a deep DIR exceeds the
    # 107-byte limit, and every client here connects over TCP anyway.
    with open(root / "data" / "postgresql.conf", "a") as fh:
        fh.write("\n# unlearn stack\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")


class _PortTaken(StackError):
    pass


def _start_postgres(d: Path, svc: Service) -> Service:
    _, pg_ctl = _pg_tools()
    data = d / "pg" / "data"
    log = Path(svc.log)
    seen = log.stat().st_size if log.is_file() else 0
    try:
        _pg_run(
            [pg_ctl, "-D", str(data), "-l", svc.log, "-w", "-t", "60", "-o", f"-p {svc.port}", "start"],
            "pg_ctl start",
            svc.log,
            timeout=START_TIMEOUT["postgres"] + 10,
        )
    except StackError as err:
        with contextlib.suppress(OSError), open(log, "rb") as fh:
            fh.seek(seen)
            if b"Address already in use" in fh.read():
                raise _PortTaken(str(err)) from None
        raise
    try:
        svc.pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise _failed(svc, "no postmaster.pid after pg_ctl start") from None
    svc.started = _start_ticks(svc.pid)
    return svc


def _start_postgres_on_a_free_port(d: Path, prefer: int | None = None, tries: int = 4) -> Service:
    """Start the server on ``prefer`` if it can have it, else on the first free port that holds.

    A port found free can be taken before the server binds it (another stack's service, any
    outgoing connection's ephemeral port), so a clash is retried on a new port rather than
    failing the stack.
    """
    ports = ([prefer] if prefer else []) + [0] * tries
    for port in ports:
        svc = _service(d, "postgres", port or _free_port())
        with contextlib.suppress(_PortTaken):
            return _start_postgres(d, svc)
    raise StackError(
        f"postgres did not start: {len(ports)} ports in a row were taken before it could bind; see its log {svc.log}"
    )


def _pg_connect(port: int, password: str, dbname: str) -> Any:
    import psycopg

    return psycopg.connect(
        host=HOST, port=port, user=DB_USER, password=password, dbname=dbname, autocommit=True, connect_timeout=10
    )


def _create_databases(port: int, password: str, names: list[str]) -> None:
    import psycopg

    try:
        with _pg_connect(port, password, "postgres") as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
            for name in names:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as err:
        raise StackError(f"postgres: creating the databases failed: {str(err).strip().splitlines()[0]}") from None


def _stop_postgres(d: Path, svc: Service) -> None:
    data = d / "pg" / "data"
    pg_ctl = _pg_bin("pg_ctl")
    if pg_ctl and (data / "postmaster.pid").is_file():
        prefix, _ = _pg_prefix() if os.geteuid() == 0 else ([], None)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, StackError):
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)), "stop"],
                capture_output=True,
                timeout=STOP_TIMEOUT + 10,
            )
    if svc.pid and _pid_alive(svc.pid, svc.started):
        with contextlib.suppress(ProcessLookupError):
            _stop_groups([os.getpgid(svc.pid)])


# ---- the services -------------------------------------------------------------------------------


def _service(d: Path, name: str, port: int) -> Service:
    urls = {
        "s3": f"http://{HOST}:{port}",
        "mlflow": f"http://{HOST}:{port}",
        "git": f"git://{HOST}:{port}/workspace.git",
        "postgres": f"postgresql+psycopg://{DB_USER}@{HOST}:{port}/{DB_NAME}",
    }
    return Service(name=name, port=port, url=urls[name], log=str(d / "logs" / f"{name}.log"))


def _aws_env(creds: Mapping[str, str]) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": REGION,
    }


def _start_s3(svc: Service) -> Service:
    return _spawn(svc, [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(svc.port)])


def _create_bucket(svc: Service, creds: Mapping[str, str]) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=svc.url,
        region_name=REGION,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise StackError(f"s3: creating bucket {BUCKET!r} failed: {err}") from None
    except BotoCoreError as err:
        raise StackError(f"s3: creating bucket {BUCKET!r} failed ({type(err).__name__}); see {svc.log}") from None


def _start_mlflow(d: Path, svc: Service, s3: Service, creds: Mapping[str, str], backend: str, pg_port: int) -> Service:
    home = d / "mlflow"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        **_aws_env(creds),
        "MLFLOW_S3_ENDPOINT_URL": s3.url,
        # The job runner (GenAI evaluation jobs; nothing here uses them) is eight more Python
        # processes on a 2-core machine, and its consumers take over 10 s to obey SIGTERM.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if backend == "postgresql":
        password = creds[STATE_DB_PASSWORD_ENV]
        # Through the environment, not argv: a command line is visible to every user of the machine.
        env["MLFLOW_BACKEND_STORE_URI"] = f"postgresql+psycopg://{DB_USER}:{password}@{HOST}:{pg_port}/mlflow"
    else:
        env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    hosts = f"{HOST}:{svc.port},localhost:{svc.port},{HOST},localhost"
    origins = f"http://{HOST}:{svc.port},http://localhost:{svc.port}"
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(svc.port),
        "--workers",
        "1",
        "--serve-artifacts",
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow",
        "--allowed-hosts",
        hosts,
        "--cors-allowed-origins",
        origins,
        # Without a limit uvicorn waits for clients' idle keep-alive connections on SIGTERM: `down`
        # would always end in SIGKILL after its own timeout.
        "--uvicorn-opts",
        "--timeout-graceful-shutdown 2",
    ]
    # Its working folder is DIR/mlflow: anything MLflow writes to "./mlartifacts" or "./mlruns"
    # lands there, where a test can see that it should not have.
    return _spawn(svc, argv, env=env, cwd=home)


def _init_git(d: Path) -> Path:
    repo = d / "git" / "workspace.git"
    if not (repo / "HEAD").is_file():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True, capture_output=True)
    # Runs publish by compare-and-set (`push --force-with-lease`) and drop their refs afterwards.
    for key, value in (("receive.denyNonFastForwards", "false"), ("receive.denyDeletes", "false")):
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True, capture_output=True)
    return repo


def _start_git(d: Path, svc: Service) -> Service:
    base = d / "git"
    argv = [
        "git",
        "daemon",
        "--reuseaddr",
        f"--base-path={base}",
        "--export-all",
        "--enable=receive-pack",
        "--informative-errors",
        f"--listen={HOST}",
        f"--port={svc.port}",
        str(base),
    ]
    return _spawn(svc, argv)


# ---- up / status / down --------------------------------------------------------------------------


def status(d: str | os.PathLike[str] = ".stack") -> dict[str, Any]:
    """Each service: is its process alive, does its port answer (HTTP health for s3/mlflow, TCP otherwise)?"""
    path = _dir(d)
    data = _read_stack(path)
    if data is None:
        return {"dir": str(path), "exists": False, "up": False, "services": {}}
    services = {}
    for name, svc in _services(data).items():
        alive = _pid_alive(svc.pid, svc.started)
        services[name] = {
            "pid": svc.pid,
            "port": svc.port,
            "url": svc.url,
            "log": svc.log,
            "alive": alive,
            "answering": alive and _answering(svc),
        }
    up_ = bool(services) and all(s["alive"] and s["answering"] for s in services.values())
    return {
        "dir": str(path),
        "exists": True,
        "up": up_,
        "stopped": data.get("state") == "stopped",
        "state_db": data.get("state_db"),
        "mlflow_backend": data.get("mlflow_backend"),
        "services": services,
    }


def _info(d: Path, data: Mapping[str, Any], services: dict[str, Service], **extra: Any) -> StackInfo:
    return StackInfo(
        dir=d,
        services=services,
        state_db=data["state_db"],
        mlflow_backend=data.get("mlflow_backend", "sqlite"),
        settings_path=d / SETTINGS_FILE,
        env_path=d / ENV_FILE,
        seed=dict(data.get("seed") or {}),
        **extra,
    )


def _clear_previous(d: Path) -> None:
    """What a stopped stack left: its data went with moto's memory, so none of it is reused."""
    for name in ("mlflow", "git", "pg", "logs"):
        shutil.rmtree(d / name, ignore_errors=True)
    for name in (STACK_FILE, ENV_FILE, SETTINGS_FILE, "state.db"):
        (d / name).unlink(missing_ok=True)


def _settings_values(
    d: Path, services: Mapping[str, Service], workspace: Path, state_db: str, base: Settings
) -> dict[str, Any]:
    git = services["git"]
    state_url = services["postgres"].url if "postgres" in services else f"sqlite:///{d / 'state.db'}"
    return {
        "workspace": str(workspace),
        "mlflow_tracking_uri": services["mlflow"].url,
        "mlflow_experiment": base.mlflow_experiment,
        "model_name": base.model_name,
        "dataset_path": base.dataset_path,
        "s3_endpoint_url": services["s3"].url,
        "s3_bucket": BUCKET,
        "s3_prefix": S3_PREFIX,
        "s3_region": REGION,
        "git_remote": git.url,
        "dvc_remote_url": f"s3://{BUCKET}/{S3_PREFIX}/dvc",
        "state_db_url": state_url,
    }


def _write_settings(d: Path, values: Mapping[str, Any], state_db: str) -> None:
    import yaml

    note = "# The local unlearn stack (`unlearn stack up`). No credentials here: they are in ./env.\n" + (
        "# state_db is SQLite: container runs cannot open it; they need `--state-db postgresql`.\n"
        if state_db == "sqlite"
        else ""
    )
    (d / SETTINGS_FILE).write_text(note + yaml.safe_dump(dict(values), sort_keys=False))


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the seeding's subprocesses (git, dvc) and clients, then restored."""
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


def _seed(d: Path, settings: Settings, env: Mapping[str, str], echo: Echo) -> dict[str, Any]:
    """The workspace's main, its DVC data and its base model into the stack."""
    from pipelines.run import ensure_base_registered

    from .workspace import Workspace

    ws = Workspace(settings.workspace, settings.dataset_path)
    ws.check()
    head = ws.git("rev-parse", "refs/heads/main").strip()
    if ws.head() != head:
        echo(f"warning: the workspace's HEAD is not main; seeding main ({head[:12]})")
    elif ws.git("status", "--porcelain", "--", "dvc.lock").strip():
        echo("warning: the workspace's dvc.lock has uncommitted changes; the pushed data follows the working tree")
    remote = settings.dvc_remote or ""
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    with _environ({**{k: v for k, v in env.items() if k.startswith("AWS_")}, **quiet}):
        echo(f"git: main ({head[:12]}) -> {settings.git_remote}")
        ws.git("push", "-q", "--force", str(settings.git_remote), f"{head}:refs/heads/main")
        echo(f"dvc: data -> {remote}")
        # config.local: the endpoint is this machine's and changes with every stack; it is never committed.
        ws.dvc("remote", "add", "--local", "--force", DVC_REMOTE_NAME, remote)
        ws.dvc("remote", "modify", "--local", DVC_REMOTE_NAME, "endpointurl", str(settings.s3_endpoint_url))
        out = ws.dvc("push", "-r", DVC_REMOTE_NAME)
        pushed = re.search(r"(\d+) files? pushed", out)
        echo(f"mlflow: base model -> {settings.mlflow_tracking_uri} ({settings.model_name})")
        version = ensure_base_registered(settings, ws)
    return {
        "git_main": head,
        "dvc_remote": remote,
        "dvc_files_pushed": int(pushed.group(1)) if pushed else 0,
        "model_name": settings.model_name,
        "model_version": version,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def up(
    d: str | os.PathLike[str] = ".stack",
    workspace: str | os.PathLike[str] | None = None,
    state_db: str = "postgresql",
    mlflow_backend: str = "sqlite",
    dvc_cache: str | os.PathLike[str] | None = ".cache/dvc",
    base: Settings | None = None,
    echo: Echo = _noop,
) -> StackInfo:
    """Start the stack in ``d`` and seed it from ``workspace`` (default ``workspace``; created, with
    its base model, if absent).

    A running stack is left as it is. One that lost a service other than S3 gets that service
    restarted; one that lost S3 (its objects were in memory) must be brought down first. If
    anything fails while starting, whatever this call started is stopped again.
    """
    if state_db not in ("postgresql", "sqlite"):
        raise StackError(f"--state-db must be postgresql or sqlite, not {state_db!r}")
    if mlflow_backend not in ("postgresql", "sqlite"):
        raise StackError(f"--mlflow-backend must be postgresql or sqlite, not {mlflow_backend!r}")
    if mlflow_backend == "postgresql" and state_db != "postgresql":
        raise StackError("--mlflow-backend postgresql needs --state-db postgresql (the stack's PostgreSQL server)")
    t0 = time.monotonic()
    path = _dir(d)
    if not _is_stack_dir(path):
        raise StackError(f"{path} exists and is not a stack folder (no {STACK_FILE}); choose another --dir")
    with _locked(path):
        data = _read_stack(path)
        # "starting" is an `up` that was killed half-way (a live one holds the lock): start afresh.
        if data is not None and data.get("state") == "running":
            services = _services(data)
            dead = [n for n, s in services.items() if not (_pid_alive(s.pid, s.started) and _answering(s))]
            if not dead:
                seeded_from = settings_for(path).workspace_path
                if workspace is not None and seeded_from != Path(workspace).resolve():
                    echo(f"note: this stack was seeded from {seeded_from}; `unlearn stack down` first to reseed")
                return _info(path, data, services, already_running=True, seconds=time.monotonic() - t0)
            if len(dead) < len(services):
                if "s3" in dead:
                    raise StackError(
                        f"the stack in {path} lost its S3 service (moto keeps objects in memory, so they are gone; "
                        f"log {services['s3'].log}): `unlearn stack down --dir {d}` then `unlearn stack up`"
                    )
                return _repair(path, data, services, dead, base, echo, t0)
        if data is not None or (path / "pg").exists():
            echo(f"starting a fresh stack in {path} (a stopped stack's data is not kept: S3 was in memory)")
            _stop_leftovers(path, data)
            _clear_previous(path)
        ws = Path(workspace or "workspace")
        return _fresh(path, ws, state_db, mlflow_backend, dvc_cache, base or Settings(), echo, t0)


def _is_stack_dir(path: Path) -> bool:
    """A folder ``up`` may use (and ``down --purge`` delete): one of ours, or empty."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return (path / STACK_FILE).exists() or (path / ENV_FILE).exists() or set(os.listdir(path)) <= {".lock"}


def _stop_leftovers(d: Path, data: Mapping[str, Any] | None) -> None:
    if data is not None:
        _stop_all(d, _services(data))
    elif (d / "pg" / "data" / "postmaster.pid").is_file():
        _stop_postgres(d, _service(d, "postgres", 0))


def _fresh(
    d: Path,
    workspace: Path,
    state_db: str,
    mlflow_backend: str,
    dvc_cache: str | os.PathLike[str] | None,
    base: Settings,
    echo: Echo,
    t0: float,
) -> StackInfo:
    from pipelines.run import ensure_workspace

    workspace = workspace.resolve()
    if state_db == "postgresql":
        _pg_tools()
        _pg_prefix()
    if not (workspace / ".git").exists():
        echo(f"workspace {workspace} does not exist: creating it (data, base model)")
    ensure_workspace(base.replace(workspace=str(workspace)), dvc_cache=Path(dvc_cache) if dvc_cache else None)

    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    (d / ".gitignore").write_text("*\n")  # the stack folder never ends up in the project's git
    (d / "logs").mkdir(exist_ok=True)
    creds = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
    }
    if state_db == "postgresql":
        creds[STATE_DB_PASSWORD_ENV] = "pw" + secrets.token_hex(16)
    # Each port is chosen right before its server starts: chosen all at once here, postgres
    # and a postgres-backed MLflow would bind them only after initdb, and by then another
    # process can hold one (it did, once, in CI).
    services: dict[str, Service] = {}

    def fresh(name: str) -> Service:
        services[name] = _service(d, name, _free_port())
        return services[name]

    data: dict[str, Any] = {
        "version": 1,
        "state": "starting",
        "state_db": state_db,
        "mlflow_backend": mlflow_backend,
        "bucket": BUCKET,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    started: dict[str, Service] = {}
    phase = "starting the stack"
    try:
        # Started side by side: MLflow's start-up (imports, migrations) is most of the wait, and
        # initdb runs meanwhile.
        echo("starting s3 (moto), git daemon" + (", postgres" if state_db == "postgresql" else "") + ", mlflow")
        started["s3"] = _start_s3(fresh("s3"))
        _write_stack(d, data, started)
        _init_git(d)
        started["git"] = _start_git(d, fresh("git"))
        _write_stack(d, data, started)
        if mlflow_backend == "sqlite":
            started["mlflow"] = _start_mlflow(d, fresh("mlflow"), services["s3"], creds, mlflow_backend, 0)
            _write_stack(d, data, started)
        if state_db == "postgresql":
            _init_postgres(d, creds[STATE_DB_PASSWORD_ENV], _service(d, "postgres", 0).log)
            pg = services["postgres"] = started["postgres"] = _start_postgres_on_a_free_port(d)
            _write_stack(d, data, started)
            databases = [DB_NAME, "mlflow"] if mlflow_backend == "postgresql" else [DB_NAME]
            _create_databases(pg.port, creds[STATE_DB_PASSWORD_ENV], databases)
        if mlflow_backend == "postgresql":
            started["mlflow"] = _start_mlflow(
                d, fresh("mlflow"), services["s3"], creds, mlflow_backend, services["postgres"].port
            )
            _write_stack(d, data, started)
        failpoint("stack.services_spawned")
        for name in ("s3", "git", "postgres", "mlflow"):
            if name in started:
                _wait_ready(started[name], START_TIMEOUT[name])
        _create_bucket(services["s3"], creds)
        echo(f"services up ({time.monotonic() - t0:.0f}s); seeding from {workspace}")
        values = _settings_values(d, services, workspace, state_db, base)
        _write_settings(d, values, state_db)
        env = {**creds, "AWS_DEFAULT_REGION": REGION, "UNLEARN_SETTINGS": str(d / SETTINGS_FILE)}
        _write_env_file(d / ENV_FILE, env)
        phase = "seeding the stack"
        data["seed"] = _seed(d, settings_for(d), env, echo)
        data["state"] = "running"
        _write_stack(d, data, services)
    except BaseException as err:
        # A half-started stack is worse than none: stop what did start, keep the logs.
        _stop_all(d, started)
        data["state"] = "stopped"
        _write_stack(d, data, started)
        if isinstance(err, StackError) or not isinstance(err, Exception):
            raise
        from .redact import redact_text

        # One line for the CLI whatever failed (git, DVC, MLflow's client, boto3).
        lines = str(err).strip().splitlines()
        detail = lines[0] if isinstance(err, UnlearnError) and lines else f"{type(err).__name__}: {' '.join(lines)}"
        raise StackError(f"{phase} failed: {redact_text(detail)[:500]}") from None
    return _info(d, data, services, seconds=time.monotonic() - t0)


def _repair(
    d: Path,
    data: dict[str, Any],
    services: dict[str, Service],
    dead: list[str],
    base: Settings | None,
    echo: Echo,
    t0: float,
) -> StackInfo:
    """Restart the services of a running stack that died (not S3), on their old ports when free."""
    env = stack_environment(d)
    creds = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", STATE_DB_PASSWORD_ENV) if k in env}
    backend = data.get("mlflow_backend", "sqlite")
    order = [n for n in ("postgres", "git", "mlflow") if n in dead]
    echo(f"restarting {', '.join(order)} in {d}")
    restarted: list[str] = []
    while order:
        name = order.pop(0)
        old = services[name]
        if old.pid:
            # Whatever is left of the dead service (workers of a killed MLflow) goes first.
            if name == "postgres":
                _stop_postgres(d, old)
            elif _our_group(old):
                _stop_groups([old.pid], timeout=3.0)
        if name == "postgres":
            svc = _start_postgres_on_a_free_port(d, prefer=old.port)
            port = svc.port
        else:
            port = old.port if _port_free(old.port) else _free_port()
            svc = _service(d, name, port)
        if name == "git":
            _init_git(d)
            _start_git(d, svc)
        elif name == "mlflow":
            pg_port = services["postgres"].port if "postgres" in services else 0
            _start_mlflow(d, svc, services["s3"], creds, backend, pg_port)
        services[name] = svc
        _write_stack(d, data, services)
        _wait_ready(svc, START_TIMEOUT[name])
        restarted.append(name)
        if name == "postgres" and port != old.port and backend == "postgresql" and "mlflow" not in order:
            order.append("mlflow")  # its database URL names the old port
    # A service may have moved to another port.
    current = settings_for(d)
    values = _settings_values(d, services, current.workspace_path, data["state_db"], base or current)
    _write_settings(d, values, data["state_db"])
    _write_stack(d, data, services)
    return _info(d, data, services, restarted=restarted, seconds=time.monotonic() - t0)


def _stop_all(d: Path, services: Mapping[str, Service]) -> list[str]:
    """Stop every service; returns the ones that were running."""
    stopped = [name for name, svc in services.items() if _pid_alive(svc.pid, svc.started)]
    # Signalled first, waited for together; the group even when its leader died: a killed
    # MLflow can leave workers behind.
    groups = [svc.pid for name, svc in services.items() if name != "postgres" and svc.pid and _our_group(svc)]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    if "postgres" in services:
        _stop_postgres(d, services["postgres"])
    _stop_groups(groups)
    return stopped


def down(d: str | os.PathLike[str] = ".stack", purge: bool = False) -> list[str]:
    """Stop every service of the stack in ``d``; returns the ones that were running. ``purge`` deletes ``d``."""
    path = _dir(d)
    if not path.exists():
        return []
    if purge and not _is_stack_dir(path):
        raise StackError(f"{path} exists and is not a stack folder (no {STACK_FILE}); not deleting it")
    with _locked(path):
        try:
            data = _read_stack(path)
        except StackError:
            if not purge:
                raise
            data = None  # purging is how an unreadable stack file is cleared
        stopped: list[str] = []
        if data is not None:
            services = _services(data)
            stopped = _stop_all(path, services)
            data["state"] = "stopped"
            _write_stack(path, data, services)
        elif (path / "pg" / "data" / "postmaster.pid").is_file():
            _stop_postgres(path, _service(path, "postgres", 0))
        if purge:
            shutil.rmtree(path)
    return stopped
