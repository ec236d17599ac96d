"""Settings (credentials only from the environment) and the complete-or-absent artifact store."""

from __future__ import annotations

import pytest

from unlearn_lib.errors import ConfigError
from unlearn_lib.settings import Settings
from unlearn_lib.storage import LocalStore, StorageError


def test_settings_precedence_and_defaults(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("model_name: from-file\ns3_bucket: b1\n")
    s = Settings.load(f, env={"UNLEARN_S3_BUCKET": "from-env", "UNLEARN_WORKSPACE": str(tmp_path)})
    assert (s.model_name, s.s3_bucket) == ("from-file", "from-env")
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert Settings.load(env={"MLFLOW_TRACKING_URI": "http://x:5000"}).tracking_uri == "http://x:5000"


def test_credentials_never_come_from_a_file_and_never_leave(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("aws_secret_access_key: hunter2\n")
    with pytest.raises(ConfigError, match="credentials belong in the environment"):
        Settings.load(f, env={})
    s = Settings.load(env={"AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_ACCESS_KEY_ID": "AKIA"})
    assert "hunter2" not in str(s.public()) and "AKIA" not in str(s.public())
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(env={}, colour="red")


def test_local_store_is_complete_or_absent(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    store = LocalStore(tmp_path / "store")
    assert not store.exists("k")
    store.upload_dir(src, "k")
    assert store.exists("k")
    out = store.download_dir("k", tmp_path / "dl")
    assert (out / "sub" / "b.txt").read_text() == "b" and not (out / "_COMPLETE.json").exists()
    with pytest.raises(StorageError, match="absent or incomplete"):
        store.download_dir("missing", tmp_path / "dl2")


def test_layers_overrides_env_file_mlflow_fallback_defaults(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("mlflow_tracking_uri: http://file:5000\nmax_attempts: 5\ns3_prefix: 2024\n")
    env = {"MLFLOW_TRACKING_URI": "http://fallback:5000", "UNLEARN_SETTINGS": str(f), "UNLEARN_MAX_ATTEMPTS": "7"}
    s = Settings.load(env=env)
    assert (s.tracking_uri, s.max_attempts, s.s3_prefix) == ("http://file:5000", 7, "2024")
    assert Settings.load(env=env, max_attempts=9, workspace=None).max_attempts == 9  # None overrides are no override
    assert Settings.load(env={"MLFLOW_TRACKING_URI": "http://fallback:5000"}).tracking_uri == "http://fallback:5000"
    assert Settings.load(env=env | {"UNLEARN_MLFLOW_TRACKING_URI": "http://env:5000"}).tracking_uri == "http://env:5000"
    assert Settings.load(env={"UNLEARN_MAX_ATTEMPTS": ""}).max_attempts == 3  # empty means unset
    # The given env replaces os.environ entirely.
    assert Settings.load(env={}).s3_bucket is None


def test_constructor_reads_neither_environment_nor_file(monkeypatch):
    monkeypatch.setenv("UNLEARN_S3_BUCKET", "from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    s = Settings(workspace="w")
    assert s.s3_bucket is None and s.mlflow_tracking_uri is None
    assert Settings.load().s3_bucket == "from-env"


def test_new_fields_and_state_url(tmp_path):
    s = Settings(workspace=str(tmp_path))
    assert (s.state_db_url, s.lease_ttl_seconds, s.max_attempts) == (None, 300.0, 3)
    assert s.state_url == f"sqlite:///{tmp_path.resolve()}/state.db"
    assert Settings(state_db_url="postgresql://app@db/unlearn").state_url == "postgresql://app@db/unlearn"
    env = {"UNLEARN_LEASE_TTL_SECONDS": "12.5", "UNLEARN_MAX_ATTEMPTS": "1"}
    assert (Settings.load(env=env).lease_ttl_seconds, Settings.load(env=env).max_attempts) == (12.5, 1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lease_ttl_seconds": 0}, "^setting lease_ttl_seconds: Input should be greater than 0 \\(got 0\\)$"),
        ({"lease_ttl_seconds": float("inf")}, "^setting lease_ttl_seconds: "),
        ({"max_attempts": 0}, "^setting max_attempts: Input should be greater than or equal to 1"),
        ({"max_attempts": "many"}, "^setting max_attempts: Input should be a valid integer"),
        ({"utility_redraws": -1}, "^setting utility_redraws: Input should be greater than or equal to 0"),
        ({"state_db_url": "db.example.com"}, "^setting state_db_url: must be a database URL"),
        ({"colour": "red"}, "^unknown setting\\(s\\) colour \\(known: "),
    ],
)
def test_invalid_settings_are_one_line_config_errors(values, message):
    with pytest.raises(ConfigError, match=message) as err:
        Settings(**values)
    assert "\n" not in str(err.value)


def test_invalid_environment_values_name_the_setting():
    with pytest.raises(ConfigError, match="^setting lease_ttl_seconds: .*\\(got '-1'\\)$"):
        Settings.load(env={"UNLEARN_LEASE_TTL_SECONDS": "-1"})
    with pytest.raises(ConfigError) as err:
        Settings(lease_ttl_seconds="soon", state_db_url="postgresql://app:hunter2@db/x")
    assert str(err.value).startswith("setting lease_ttl_seconds: ") and "hunter2" not in str(err.value)


def test_replace_returns_a_validated_copy():
    s = Settings(workspace="w")
    t = s.replace(model_name="other", max_attempts=5)
    assert (t.model_name, t.max_attempts, t.workspace) == ("other", 5, "w") and s.model_name == "digits-diffusion"
    assert s.replace() == s and hash(s.replace()) == hash(s)
    with pytest.raises(ConfigError, match="setting max_attempts"):
        s.replace(max_attempts=0)
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) colour"):
        s.replace(colour="red")
    with pytest.raises(Exception, match="frozen"):
        s.model_name = "x"


def test_public_redacts_every_url_and_keeps_its_shape():
    s = Settings(
        workspace="w",
        mlflow_tracking_uri="http://alice:mlpw@mlflow:5000",
        s3_endpoint_url="http://minio:9000",
        kfp_host="https://kfp.example.com?token=abc",
        state_db_url="postgresql://app:pw@db/unlearn",
    )
    pub = s.public()
    assert list(pub) == list(Settings.model_fields)
    assert pub["state_db_url"] == "postgresql://app:***@db/unlearn"
    assert pub["mlflow_tracking_uri"] == "http://alice:***@mlflow:5000"
    assert pub["kfp_host"] == "https://kfp.example.com?token=***" and pub["s3_endpoint_url"] == "http://minio:9000"
    assert "mlpw" not in str(pub) and ":pw@" not in str(pub) and "abc" not in str(pub)
    assert "mlpw" not in repr(s) and ":pw@" not in str(s)  # repr reaches tracebacks and logs
    assert Settings(workspace="w").public()["mlflow_tracking_uri"].endswith("/mlflow.db")


def test_steps_get_no_password_and_read_it_from_their_environment(tmp_path):
    s = Settings(
        workspace=str(tmp_path),
        mlflow_tracking_uri="http://alice:mlpw@mlflow:5000",
        state_db_url="postgresql://app:s3cr%2Ft@db/unlearn",
        max_attempts=4,
    )
    steps = s.for_steps()
    assert steps["state_db_url"] == "postgresql://app@db/unlearn"
    assert steps["mlflow_tracking_uri"] == "http://alice@mlflow:5000"
    assert "s3cr" not in str(steps) and "mlpw" not in str(steps) and steps["max_attempts"] == 4
    step = Settings.from_public(steps, env={"UNLEARN_STATE_DB_PASSWORD": "s3cr/t"})
    assert step.state_url == "postgresql://app:s3cr%2Ft@db/unlearn"
    assert step.replace(mlflow_tracking_uri=s.mlflow_tracking_uri) == s  # MLflow reads its own password
    # Without the variable the URL keeps its user and no password: the database refuses, nothing leaks.
    assert Settings.from_public(steps, env={}).state_url == "postgresql://app@db/unlearn"
    # A public() copy works too: the mask is never taken for a password.
    assert Settings.from_public(s.public(), env={"UNLEARN_STATE_DB_PASSWORD": "pw"}).state_db_url == (
        "postgresql://app:pw@db/unlearn"
    )
    assert Settings.from_public(s.public(), env={}).state_db_url == "postgresql://app@db/unlearn"
    # Unknown keys (a newer orchestrator) are ignored; a URL without a user gets no password.
    anon = Settings.from_public({"state_db_url": "sqlite:///x.db", "future": 1}, env={"UNLEARN_STATE_DB_PASSWORD": "p"})
    assert anon.state_db_url == "sqlite:///x.db"


def test_load_takes_the_state_db_password_from_the_environment():
    env = {"UNLEARN_STATE_DB_URL": "postgresql://app@db/unlearn", "UNLEARN_STATE_DB_PASSWORD": "pw"}
    assert Settings.load(env=env).state_url == "postgresql://app:pw@db/unlearn"
    explicit = env | {"UNLEARN_STATE_DB_URL": "postgresql://app:own@db/unlearn"}
    assert Settings.load(env=explicit).state_url == "postgresql://app:own@db/unlearn"


def test_a_settings_file_with_a_url_password_is_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("state_db_url: postgresql://app:pw@db/unlearn\n")
    with pytest.raises(ConfigError, match="holds a password in 'state_db_url': credentials belong in the environment"):
        Settings.load(f, env={})
    f.write_text("colour: red\n")
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) colour"):
        Settings.load(f, env={})
