"""The S3 store against a real S3 API (moto in server mode, over HTTP)."""

from __future__ import annotations

import time

import boto3
import pytest

from unlearn_lib.storage import S3Store, StorageError


@pytest.fixture()
def store(s3_env, monkeypatch):
    for k, v in s3_env["env"].items():
        monkeypatch.setenv(k, v)
    return S3Store(s3_env["bucket"], prefix="unit", endpoint_url=s3_env["endpoint"])


def _tree(root):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "weights.bin").write_bytes(b"\x00" * 4096)
    (root / "config.json").write_text("{}")
    return root


def test_upload_download_round_trip(store, tmp_path):
    src = _tree(tmp_path / "src")
    uri = store.upload_dir(src, "models/m/v2")
    assert uri == f"s3://{store.bucket}/unit/models/m/v2" and store.exists("models/m/v2")
    out = store.download_dir("models/m/v2", tmp_path / "dl")
    assert (out / "unet" / "weights.bin").read_bytes() == b"\x00" * 4096


def test_failed_upload_leaves_nothing_marked_complete(store, tmp_path, s3_env):
    src = _tree(tmp_path / "src")
    broken = S3Store("no-such-bucket", prefix="unit", endpoint_url=s3_env["endpoint"])
    with pytest.raises(StorageError, match="failed: NoSuchBucket"):
        broken.upload_dir(src, "models/x")
    # A partial upload (files without the manifest) reads as absent.
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1")
    s3.put_object(Bucket=store.bucket, Key="unit/models/half/config.json", Body=b"{}")
    assert not store.exists("models/half")
    with pytest.raises(StorageError, match="absent or incomplete"):
        store.download_dir("models/half", tmp_path / "dl")


def test_unreachable_endpoint_fails_fast_with_one_message(monkeypatch, s3_env):
    for k, v in s3_env["env"].items():
        monkeypatch.setenv(k, v)
    from conftest import free_port

    dead = S3Store("b", endpoint_url=f"http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(StorageError, match="is not reachable"):
        dead.check()
    assert time.time() - t0 < 30
