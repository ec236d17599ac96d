"""One-off set-up tasks of the unlearn stack on Kubernetes (the ``unlearn-bootstrap`` ConfigMap).

Runs in the project image (Python with psycopg and boto3), one subcommand per init container
or Job; every task is idempotent, so a Job that is run again (``kubectl apply -k`` after the
finished Job was cleaned up) changes nothing that is already right:

  wait-http URL          until URL answers 200 (MinIO's /minio/health/ready, MLflow's /health)
  wait-tcp HOST PORT     until HOST:PORT accepts a connection (PostgreSQL)
  db-setup               PostgreSQL roles and databases for MLflow and the unlearn state
  bucket                 the S3 bucket named by UNLEARN_S3_BUCKET
  mlflow-init PATH       waits for MLflow's databases, writes its basic-auth config to PATH
  mlflow-user            the pipeline's MLflow user, with MANAGE on its experiment and model

Credentials come only from the environment (Kubernetes Secrets) and are never printed. A
missing or unusable one is one line on stderr and exit status 2; a service that is not up
yet is waited for (--timeout seconds, then exit status 1: the Job's backoffLimit retries).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

# A password that is interpolated into a URL by Kubernetes ($(VAR) in an argument) is not
# percent-encoded on the way: only these characters survive that unchanged.
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
MLFLOW_DATABASES = ("mlflow", "mlflow_auth")


class Fatal(Exception):
    """A configuration error: retrying cannot help."""


def log(message: str) -> None:
    print(f"bootstrap: {message}", flush=True)


def need(env: Mapping[str, str], name: str, url_safe: bool = False) -> str:
    value = env.get(name, "")
    if not value:
        raise Fatal(f"{name} is empty or not set (fill in its Secret: see infra/README.md)")
    if url_safe and not URL_SAFE.fullmatch(value):
        raise Fatal(
            f"{name} must consist of letters, digits and . _ ~ - only: it goes into a database URL "
            "unescaped (generate one with `openssl rand -hex 24`)"
        )
    return value


def retry(what: str, attempt: Callable[[], Any], timeout: float, interval: float = 3.0) -> Any:
    """``attempt()`` until it returns without an exception other than Fatal, for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Fatal:
            raise
        except Exception as err:  # any failure of a service that is not up yet
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: still failing after {timeout:.0f}s ({_short(err)})") from None
            log(f"waiting for {what} ({_short(err)})")
            time.sleep(max(0.1, min(interval, deadline - time.monotonic())))


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


# ---- waiting ----------------------------------------------------------------------------------------


def wait_http(url: str, timeout: float) -> None:
    def attempt() -> None:
        with urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")

    retry(url, attempt, timeout)
    log(f"{url} is up")


def wait_tcp(host: str, port: int, timeout: float) -> None:
    def attempt() -> None:
        with socket.create_connection((host, port), timeout=5):
            pass

    retry(f"{host}:{port}", attempt, timeout)
    log(f"{host}:{port} accepts connections")


# ---- PostgreSQL -------------------------------------------------------------------------------------


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq takes it (postgresql://...)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise Fatal(f"not a PostgreSQL URL: {scheme}://...")
    return f"postgresql://{rest}"


def db_setup(env: Mapping[str, str], timeout: float) -> None:
    """Roles ``mlflow`` (databases mlflow, mlflow_auth) and the state database's user and database
    (from UNLEARN_STATE_DB_URL), with the passwords from the Secrets; passwords are reset on every
    run, so rotating a Secret and re-running the Job rotates the role's password."""
    import psycopg

    admin_password = need(env, "POSTGRES_PASSWORD")
    mlflow_password = need(env, "MLFLOW_DB_PASSWORD", url_safe=True)
    state_password = need(env, "UNLEARN_STATE_DB_PASSWORD")
    state = urllib.parse.urlsplit(_libpq(need(env, "UNLEARN_STATE_DB_URL")))
    state_user, state_db = state.username, state.path.lstrip("/")
    if not state_user or not state_db or state.password:
        raise Fatal("UNLEARN_STATE_DB_URL must name a user and a database and hold no password")
    if state_user == "mlflow" or state_db in MLFLOW_DATABASES:
        raise Fatal("the state database must not share MLflow's user or databases")
    host = env.get("PGHOST") or state.hostname or "postgres"
    port = int(env.get("PGPORT") or state.port or 5432)
    user = env.get("POSTGRES_USER") or "postgres"

    def connect() -> Any:
        try:
            return psycopg.connect(
                host=host, port=port, user=user, password=admin_password, dbname="postgres", autocommit=True
            )
        except psycopg.OperationalError as err:
            if "password authentication failed" in str(err):
                raise Fatal(f"PostgreSQL refused {user}'s password (POSTGRES_PASSWORD of unlearn-postgres)") from None
            raise

    with retry(f"PostgreSQL at {host}:{port}", connect, timeout) as conn:
        _ensure_role(conn, "mlflow", mlflow_password)
        for db in MLFLOW_DATABASES:
            _ensure_database(conn, db, "mlflow")
        _ensure_role(conn, state_user, state_password)
        _ensure_database(conn, state_db, state_user)
    log(f"databases {', '.join(MLFLOW_DATABASES)} (owner mlflow) and {state_db} (owner {state_user}) ready")


def _ensure_role(conn: Any, role: str, password: str) -> None:
    from psycopg import sql

    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    # Utility statements take no parameters: the password is composed as a quoted literal.
    conn.execute(
        sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )


def _ensure_database(conn: Any, db: str, owner: str) -> None:
    from psycopg import sql

    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db), sql.Identifier(owner)))
    # Only the owner (and the superuser) may connect: the services cannot read each other's data.
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))


def mlflow_init(env: Mapping[str, str], path: str, timeout: float) -> None:
    """Wait until MLflow's databases accept its user, then write the basic-auth config file.

    The file names the auth database with its password, so it lives in a memory-backed
    emptyDir of the pod, never in a ConfigMap; admin user and password come from
    MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, which MLflow reads itself.
    """
    import psycopg

    need(env, "MLFLOW_DB_PASSWORD", url_safe=True)
    backend, auth = need(env, "MLFLOW_BACKEND_STORE_URI"), need(env, "MLFLOW_AUTH_DB_URI")
    for url in (backend, auth):
        name = urllib.parse.urlsplit(_libpq(url)).path.lstrip("/")

        def connect(url: str = url) -> None:
            with psycopg.connect(_libpq(url), connect_timeout=5):
                pass

        retry(f"database {name} (run by the unlearn-db-setup Job)", connect, timeout)
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "READ"
    # configparser interpolates '%': a literal one is written '%%'.
    lines = [
        "[mlflow]",
        f"default_permission = {permission}",
        f"database_uri = {auth.replace('%', '%%')}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
    ]
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    log(f"MLflow databases ready; basic-auth config written to {path} (default permission {permission})")


# ---- S3 ---------------------------------------------------------------------------------------------


def bucket(env: Mapping[str, str], timeout: float) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    name = need(env, "UNLEARN_S3_BUCKET")
    need(env, "AWS_ACCESS_KEY_ID")
    need(env, "AWS_SECRET_ACCESS_KEY")
    region = env.get("UNLEARN_S3_REGION") or "us-east-1"
    endpoint = env.get("UNLEARN_S3_ENDPOINT_URL") or None
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
    )

    def ensure() -> str:
        try:
            s3.head_bucket(Bucket=name)
            return "exists"
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise Fatal(f"S3 refused the credentials of unlearn-s3 for bucket {name} ({code})") from None
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        return "created"

    state = retry(f"S3 bucket {name} at {endpoint or 'AWS'}", ensure, timeout)
    log(f"bucket {name} {state}")


# ---- MLflow users -----------------------------------------------------------------------------------


class _Api:
    """The MLflow REST API as one user (basic auth)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        url = f"{self.base}/api/{path}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _json(err.read())

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, payload = self.call(method, path, body)
        if status == 401:
            raise Fatal(f"MLflow refused the credentials for {method} {path} (HTTP 401)")
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status} {payload.get('error_code', '')}")
        return payload


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def mlflow_user(env: Mapping[str, str], timeout: float) -> None:
    """The pipeline's user (unlearn-mlflow-auth) exists with the Secret's password, and may manage
    the experiment and the registered model that the pipeline writes (created by it when missing,
    granted MANAGE when someone else created them). Not an admin: the admin stays with people."""
    base = need(env, "UNLEARN_MLFLOW_TRACKING_URI")
    admin = _Api(base, need(env, "MLFLOW_AUTH_ADMIN_USERNAME"), need(env, "MLFLOW_AUTH_ADMIN_PASSWORD"))
    user, password = need(env, "MLFLOW_TRACKING_USERNAME"), need(env, "MLFLOW_TRACKING_PASSWORD")
    if len(password) < 12:
        raise Fatal("MLFLOW_TRACKING_PASSWORD must be at least 12 characters (MLflow's password policy)")
    experiment, model = need(env, "UNLEARN_MLFLOW_EXPERIMENT"), need(env, "UNLEARN_MODEL_NAME")
    if user == env["MLFLOW_AUTH_ADMIN_USERNAME"]:
        raise Fatal("MLFLOW_TRACKING_USERNAME must differ from the admin user (MLFLOW_AUTH_ADMIN_USERNAME)")
    pipeline = _Api(base, user, password)

    def ensure() -> None:
        status, _ = admin.call("GET", "2.0/mlflow/users/get", {"username": user})
        if status == 200:
            admin.ok("PATCH", "2.0/mlflow/users/update-password", {"username": user, "password": password})
            log(f"MLflow user {user} exists; password set from unlearn-mlflow-auth")
        elif status == 404:
            admin.ok("POST", "2.0/mlflow/users/create", {"username": user, "password": password})
            log(f"MLflow user {user} created")
        else:
            admin.ok("GET", "2.0/mlflow/users/get", {"username": user})  # raises with the status

        status, payload = admin.call("GET", "2.0/mlflow/experiments/get-by-name", {"experiment_name": experiment})
        if status == 200:
            experiment_id = payload["experiment"]["experiment_id"]
            _grant_manage(admin, user, "experiment", experiment_id)
        else:
            experiment_id = pipeline.ok("POST", "2.0/mlflow/experiments/create", {"name": experiment})["experiment_id"]
            log(f"experiment {experiment} created by {user}")

        status, _ = admin.call("GET", "2.0/mlflow/registered-models/get", {"name": model})
        if status == 200:
            _grant_manage(admin, user, "registered_model", model)
        else:
            pipeline.ok("POST", "2.0/mlflow/registered-models/create", {"name": model})
            log(f"registered model {model} created by {user}")

    retry(f"MLflow at {base}", ensure, timeout)
    log(f"MLflow user {user} may manage experiment {experiment} and registered model {model}")


def _grant_manage(admin: _Api, user: str, resource_type: str, resource_id: str) -> None:
    key = {"username": user, "resource_type": resource_type, "resource_id": resource_id}
    current = admin.ok("GET", "3.0/mlflow/users/permissions/get", key).get("permission")
    if current == "MANAGE":
        return
    status, _ = admin.call("POST", "3.0/mlflow/users/permissions/grant", {**key, "permission": "MANAGE"})
    if status != 200:  # a lesser grant exists: replace it
        admin.ok("POST", "3.0/mlflow/users/permissions/revoke", key)
        admin.ok("POST", "3.0/mlflow/users/permissions/grant", {**key, "permission": "MANAGE"})
    log(f"granted MANAGE on {resource_type} {resource_id} to {user} (had {current})")


# ---- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bootstrap.py", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("wait-http").add_argument("url")
    tcp = sub.add_parser("wait-tcp")
    tcp.add_argument("host")
    tcp.add_argument("port", type=int)
    sub.add_parser("db-setup")
    sub.add_parser("bucket")
    sub.add_parser("mlflow-init").add_argument("path")
    sub.add_parser("mlflow-user")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    try:
        if args.command == "wait-http":
            wait_http(args.url, args.timeout)
        elif args.command == "wait-tcp":
            wait_tcp(args.host, args.port, args.timeout)
        elif args.command == "db-setup":
            db_setup(env, args.timeout)
        elif args.command == "bucket":
            bucket(env, args.timeout)
        elif args.command == "mlflow-init":
            mlflow_init(env, args.path, args.timeout)
        else:
            mlflow_user(env, args.timeout)
    except Fatal as err:
        print(f"bootstrap {args.command}: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:
        print(f"bootstrap {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
