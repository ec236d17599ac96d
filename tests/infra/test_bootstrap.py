"""infra/k8s/base/bootstrap.py, the set-up script of the Kubernetes Jobs, against real services:
the session's PostgreSQL server and the moto S3 endpoint (conftest.py). Its `mlflow-user` task
needs an MLflow server with basic auth (mlflow[auth], not installed here) and is not run."""

from __future__ import annotations

import configparser
import importlib.util
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "base" / "bootstrap.py"


@pytest.fixture(scope="module")
def bootstrap() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_bootstrap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def db_env(postgres_server) -> dict[str, str]:
    s = postgres_server
    user = f"state_{secrets.token_hex(4)}"
    return {
        "PGHOST": s["host"],
        "PGPORT": str(s["port"]),
        "POSTGRES_USER": s["user"],
        "POSTGRES_PASSWORD": s["password"],
        "MLFLOW_DB_PASSWORD": secrets.token_hex(16),
        # Any character: the steps percent-encode it into the URL (Settings).
        "UNLEARN_STATE_DB_PASSWORD": "p@ss/w%rd:" + secrets.token_hex(4),
        "UNLEARN_STATE_DB_URL": f"postgresql+psycopg://{user}@postgres:5432/{user}",
    }


def _connect(env: dict[str, str], user: str, password: str, db: str) -> None:
    import psycopg

    with psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], user=user, password=password, dbname=db) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (user, db)


def _state_url(env: dict[str, str]) -> str:
    """The state database URL as a step builds it from the ConfigMap and the Secret."""
    from unlearn_lib.settings import Settings

    url = env["UNLEARN_STATE_DB_URL"].replace("postgres:5432", f"{env['PGHOST']}:{env['PGPORT']}")
    password = env["UNLEARN_STATE_DB_PASSWORD"]
    return Settings.load(env={"UNLEARN_STATE_DB_URL": url, "UNLEARN_STATE_DB_PASSWORD": password}).state_url


def test_db_setup_makes_the_roles_and_databases_and_is_idempotent(bootstrap, db_env, capsys):
    import psycopg
    import sqlalchemy

    assert bootstrap.main(["db-setup"], db_env) == 0
    assert bootstrap.main(["db-setup"], db_env) == 0  # a Job that runs again changes nothing
    for db in ("mlflow", "mlflow_auth"):
        _connect(db_env, "mlflow", db_env["MLFLOW_DB_PASSWORD"], db)
    engine = sqlalchemy.create_engine(_state_url(db_env))
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        conn.execute(sqlalchemy.text("CREATE TABLE t (x int)"))  # the owner may create its schema
        conn.commit()
    engine.dispose()
    state_db = db_env["UNLEARN_STATE_DB_URL"].rsplit("/", 1)[1]
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        _connect(db_env, "mlflow", db_env["MLFLOW_DB_PASSWORD"], state_db)
    out = capsys.readouterr().out
    assert db_env["MLFLOW_DB_PASSWORD"] not in out and db_env["UNLEARN_STATE_DB_PASSWORD"] not in out


def test_db_setup_rotates_a_password_from_the_secret(bootstrap, db_env):
    import psycopg

    assert bootstrap.main(["db-setup"], db_env) == 0
    old = db_env["MLFLOW_DB_PASSWORD"]
    db_env["MLFLOW_DB_PASSWORD"] = secrets.token_hex(16)
    assert bootstrap.main(["db-setup"], db_env) == 0
    _connect(db_env, "mlflow", db_env["MLFLOW_DB_PASSWORD"], "mlflow")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(db_env, "mlflow", old, "mlflow")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MLFLOW_DB_PASSWORD": "has@and/"}, "MLFLOW_DB_PASSWORD must consist of letters"),
        ({"UNLEARN_STATE_DB_PASSWORD": ""}, "UNLEARN_STATE_DB_PASSWORD is empty or not set"),
        ({"POSTGRES_PASSWORD": "wrong-password"}, "PostgreSQL refused"),
        ({"UNLEARN_STATE_DB_URL": "postgresql+psycopg://u:pw@postgres/db"}, "hold no password"),
        ({"UNLEARN_STATE_DB_URL": "postgresql+psycopg://mlflow@postgres/state"}, "must not share MLflow's"),
    ],
)
def test_db_setup_refuses_a_bad_secret_in_one_line(bootstrap, db_env, capsys, change, message):
    assert bootstrap.main(["--timeout", "5", "db-setup"], {**db_env, **change}) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert db_env["POSTGRES_PASSWORD"] not in err


def test_mlflow_init_waits_for_the_databases_then_writes_the_auth_config(bootstrap, db_env, tmp_path, capsys):
    pg = f"{db_env['PGHOST']}:{db_env['PGPORT']}"
    password = db_env["MLFLOW_DB_PASSWORD"]
    env = {
        "MLFLOW_DB_PASSWORD": password,
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://mlflow:{password}@{pg}/mlflow",
        "MLFLOW_AUTH_DB_URI": f"postgresql+psycopg://mlflow:{password}@{pg}/mlflow_auth",
    }
    path = tmp_path / "basic_auth.ini"
    assert bootstrap.main(["db-setup"], db_env) == 0
    assert bootstrap.main(["mlflow-init", str(path)], env) == 0
    config = configparser.ConfigParser()
    config.read(path)
    assert config["mlflow"]["database_uri"] == env["MLFLOW_AUTH_DB_URI"]
    assert config["mlflow"]["default_permission"] == "READ"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password not in capsys.readouterr().out

    missing = {**env, "MLFLOW_AUTH_DB_URI": f"postgresql+psycopg://mlflow:{password}@{pg}/no_such_db"}
    assert bootstrap.main(["--timeout", "1", "mlflow-init", str(tmp_path / "x.ini")], missing) == 1
    assert "unlearn-db-setup" in capsys.readouterr().err
    assert not (tmp_path / "x.ini").exists()


def test_bucket_is_created_once(bootstrap, s3_env, capsys):
    import boto3

    name = f"k8s-{secrets.token_hex(4)}"
    env = {**s3_env["env"], "UNLEARN_S3_ENDPOINT_URL": s3_env["endpoint"], "UNLEARN_S3_BUCKET": name}
    assert bootstrap.main(["bucket"], env) == 0
    assert bootstrap.main(["bucket"], env) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"bootstrap: bucket {name} created", f"bootstrap: bucket {name} exists"]
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1", **_creds(s3_env))
    s3.head_bucket(Bucket=name)
    assert bootstrap.main(["bucket"], {k: v for k, v in env.items() if k != "AWS_SECRET_ACCESS_KEY"}) == 2


def _creds(s3_env: dict[str, Any]) -> dict[str, str]:
    return {
        "aws_access_key_id": s3_env["env"]["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3_env["env"]["AWS_SECRET_ACCESS_KEY"],
    }


def test_waiting_gives_up_after_the_timeout_with_exit_status_1(bootstrap, capsys):
    from conftest import free_port

    port = free_port()
    assert bootstrap.main(["--timeout", "1", "wait-tcp", "127.0.0.1", str(port)], {}) == 1
    assert bootstrap.main(["--timeout", "1", "wait-http", f"http://127.0.0.1:{port}/health"], {}) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}: still failing after 1s" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MLFLOW_TRACKING_USERNAME": "admin"}, "must differ from the admin user"),
        ({"MLFLOW_TRACKING_PASSWORD": "short"}, "at least 12 characters"),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "MLFLOW_AUTH_ADMIN_PASSWORD is empty"),
    ],
)
def test_mlflow_user_refuses_a_bad_secret_before_calling_mlflow(bootstrap, capsys, change, message):
    env = {
        "UNLEARN_MLFLOW_TRACKING_URI": "http://127.0.0.1:9/",  # nothing listens: no call is made
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-1",
        "MLFLOW_TRACKING_USERNAME": "unlearn-pipeline",
        "MLFLOW_TRACKING_PASSWORD": "pipeline-password-1",
        "UNLEARN_MLFLOW_EXPERIMENT": "unlearn-compliance",
        "UNLEARN_MODEL_NAME": "digits-diffusion",
    }
    assert bootstrap.main(["--timeout", "1", "mlflow-user"], {**env, **change}) == 2
    assert message in capsys.readouterr().err
