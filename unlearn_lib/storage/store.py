"""Upload and download whole folders, complete or absent.

An object store has no atomic rename, so a folder upload writes every file and then, last,
a ``_COMPLETE.json`` manifest listing each file's size and sha256. Readers treat a prefix
without the manifest as absent; a failed upload deletes what it wrote. Downloads verify
every file against the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Protocol

from ..errors import UnlearnError
from ..faults import failpoint
from ..settings import Settings
from ..utils import sha256_file

MARKER = "_COMPLETE.json"


class StorageError(UnlearnError):
    """The artifact store is unreachable or an upload/download failed."""


def _manifest(local: Path) -> dict:
    files = {}
    for p in sorted(local.rglob("*")):
        if p.is_file():
            files[p.relative_to(local).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return {"files": files}


def _not_found(err: Exception) -> bool:
    return getattr(err, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class ArtifactStore(Protocol):
    def uri(self, key: str) -> str: ...
    def check(self) -> None: ...
    def exists(self, key: str) -> bool: ...
    def upload_dir(self, local: str | os.PathLike[str], key: str) -> str: ...
    def download_dir(self, key: str, local: str | os.PathLike[str]) -> Path: ...
    def children(self, key: str) -> list[str]: ...
    def delete(self, key: str) -> int: ...


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def uri(self, key: str) -> str:
        return (self.root / key).resolve().as_uri()

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def exists(self, key: str) -> bool:
        return (self.root / key / MARKER).is_file()

    def upload_dir(self, local: str | os.PathLike[str], key: str) -> str:
        src, dst = Path(local), self.root / key
        stage = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(src, stage)
        failpoint("upload.after_first_file")
        (stage / MARKER).write_text(json.dumps(_manifest(src), indent=1))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(stage, dst)
        return self.uri(key)

    def download_dir(self, key: str, local: str | os.PathLike[str]) -> Path:
        if not self.exists(key):
            raise StorageError(f"{self.uri(key)} is absent or incomplete")
        shutil.copytree(self.root / key, local, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        return Path(local)

    def children(self, key: str) -> list[str]:
        """Names of the complete folders directly under ``key``."""
        base = self.root / key
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / MARKER).is_file())

    def delete(self, key: str) -> int:
        """Remove everything under ``key``; returns how many files went."""
        base = self.root / key
        if not base.exists():
            return 0
        n = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base, ignore_errors=True)
        return n


class S3Store:
    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str = "us-east-1"
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Short timeouts and few retries: an unreachable store must fail in seconds, not minutes.
        cfg = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
        self.endpoint_url = endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key.strip('/')}" if self.prefix else key.strip("/")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, what: str, err: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "error")
            return StorageError(f"S3 {what} on bucket {self.bucket!r} failed: {code}")
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return StorageError(f"S3{where} is not reachable ({type(err).__name__}) during {what}")

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("head_bucket", err) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=f"{self._key(key)}/{MARKER}")
            return True
        except ClientError as err:
            if _not_found(err):
                return False
            raise self._fail("head_object", err) from None
        except BotoCoreError as err:
            raise self._fail("head_object", err) from None

    def upload_dir(self, local: str | os.PathLike[str], key: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        src = Path(local)
        manifest = _manifest(src)
        written: list[str] = []
        try:
            # An earlier complete upload under this key stops being complete before it is overwritten.
            self.s3.delete_object(Bucket=self.bucket, Key=f"{self._key(key)}/{MARKER}")
            for rel in manifest["files"]:
                k = f"{self._key(key)}/{rel}"
                self.s3.upload_file(str(src / rel), self.bucket, k)
                written.append(k)
                if len(written) == 1:
                    failpoint("upload.after_first_file")
            self.s3.put_object(
                Bucket=self.bucket, Key=f"{self._key(key)}/{MARKER}", Body=json.dumps(manifest, indent=1).encode()
            )
        except (BotoCoreError, ClientError) as err:
            for k in written:
                try:
                    self.s3.delete_object(Bucket=self.bucket, Key=k)
                except (BotoCoreError, ClientError):
                    break
            raise self._fail("upload", err) from None
        return self.uri(key)

    def download_dir(self, key: str, local: str | os.PathLike[str]) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        dst = Path(local)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=f"{self._key(key)}/{MARKER}")["Body"].read()
        except ClientError as err:
            if _not_found(err):
                raise StorageError(f"{self.uri(key)} is absent or incomplete") from None
            raise self._fail("download", err) from None
        except BotoCoreError as err:
            raise self._fail("download", err) from None
        manifest = json.loads(body)
        try:
            for rel, meta in manifest["files"].items():
                target = dst / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, f"{self._key(key)}/{rel}", str(target))
                if sha256_file(target) != meta["sha256"]:
                    raise StorageError(f"{self.uri(key)}/{rel} does not match its manifest")
        except (BotoCoreError, ClientError) as err:
            raise self._fail("download", err) from None
        return dst


    def children(self, key: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self._key(key)}/"
        names: list[str] = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                names += [c["Prefix"][len(prefix) :].rstrip("/") for c in page.get("CommonPrefixes", [])]
        except (BotoCoreError, ClientError) as err:
            raise self._fail("list", err) from None
        return sorted(n for n in names if self.exists(f"{key.strip('/')}/{n}"))

    def delete(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix, n = f"{self._key(key)}/", 0
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                    n += len(keys)
        except (BotoCoreError, ClientError) as err:
            raise self._fail("delete", err) from None
        return n

    def delete_objects(self, keys: list[str]) -> int:
        """Delete these exact objects (no prefix walk); returns how many of them existed."""
        from botocore.exceptions import BotoCoreError, ClientError

        n = 0
        try:
            for key in keys:
                try:
                    self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
                except ClientError as err:
                    if _not_found(err):
                        continue
                    raise
                self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))
                n += 1
        except (BotoCoreError, ClientError) as err:
            raise self._fail("delete", err) from None
        return n

    def read(self, key: str) -> bytes | None:
        """One object's bytes, or None when it does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if _not_found(err) or err.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise self._fail("get_object", err) from None
        except BotoCoreError as err:
            raise self._fail("get_object", err) from None


def store_from_settings(settings: Settings) -> ArtifactStore:
    """S3 when a bucket is configured, else the workspace's ``exports/`` folder."""
    if settings.s3_bucket:
        return S3Store(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    return LocalStore(settings.workspace_path / "exports")
