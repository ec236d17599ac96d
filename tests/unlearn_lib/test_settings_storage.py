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
