"""Stateless steps' state: the workspace through a real `git daemon` + a DVC remote on moto S3, run files on S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port
from unlearn_lib.settings import Settings
from unlearn_lib.workspace import RemoteWorkspace, WorkspaceError, run_ref


@pytest.fixture(scope="module")
def seeded(workspace_template, tmp_path_factory, s3_env):
    """The template workspace pushed once to a bare repository behind `git daemon`, its data to S3."""
    import shutil

    root = tmp_path_factory.mktemp("remote")
    ws = root / "ws"
    shutil.copytree(workspace_template, ws, symlinks=True)
    env = {**os.environ, **s3_env["env"]}
    base = root / "git"
    seed = base / "seed.git"
    subprocess.run(["git", "init", "-q", "--bare", str(seed)], check=True)
    subprocess.run(["git", "-C", str(seed), "config", "receive.denyDeletes", "false"], check=True)
    subprocess.run(["git", "-C", str(ws), "push", "-q", str(seed), "main:main"], check=True)
    prefix = f"remote-ws-{os.urandom(4).hex()}"
    dvc = [sys.executable, "-m", "dvc"]
    for args in (
        ["remote", "add", "--local", "-f", "-d", "seed", f"s3://{s3_env['bucket']}/{prefix}/dvc"],
        ["remote", "modify", "--local", "seed", "endpointurl", s3_env["endpoint"]],
        ["push", "-q"],
    ):
        subprocess.run([*dvc, *args], cwd=ws, check=True, capture_output=True, env=env)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={base}",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        start_new_session=True,
    )
    deadline = time.time() + 20
    while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/seed.git"], capture_output=True).returncode:
        assert time.time() < deadline, "git daemon did not come up"
        time.sleep(0.2)
    yield {"base": base, "seed": seed, "port": port, "prefix": prefix, "head": _git(ws, "rev-parse", "HEAD")}
    daemon.terminate()
    daemon.wait(timeout=10)


@pytest.fixture()
def remote(seeded, tmp_path, s3_env, monkeypatch):
    """A repository of its own for each test (a copy of the seeded one); the DVC objects are shared."""
    import shutil

    for k, v in s3_env["env"].items():
        monkeypatch.setenv(k, v)
    name = f"ws-{os.urandom(4).hex()}.git"
    bare = seeded["base"] / name
    shutil.copytree(seeded["seed"], bare)
    url = f"git://127.0.0.1:{seeded['port']}/{name}"

    def settings(pod: str) -> Settings:
        return Settings(
            workspace=str(tmp_path / "unused"),
            git_remote=url,
            s3_bucket=s3_env["bucket"],
            s3_prefix=seeded["prefix"],
            s3_endpoint_url=s3_env["endpoint"],
            scratch_dir=str(tmp_path / pod),
        )

    return {"url": url, "settings": settings, "bare": bare, "head": seeded["head"]}


def _git(root, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_step_reads_the_served_dataset_through_the_remotes_only(remote):
    ws = RemoteWorkspace.open(remote["settings"]("pod-a"))
    assert ws.served() == remote["head"] == ws.resolve("HEAD")
    ds = ws.dataset("HEAD")
    assert len(ds) > 1000 and (ds.root / "manifest.jsonl").is_file()
    # Where the data is and how to reach it is the deployment's business, never committed.
    assert "endpointurl" not in _git(ws.root, "show", "HEAD:.dvc/config")


def test_a_prepared_purge_is_seen_by_the_next_pod_and_published_once(remote):
    settings = remote["settings"]
    extract = RemoteWorkspace.open(settings("pod-extract"))
    base = extract.resolve("HEAD")
    targets = {"subject_ids": ["subject-canary"]}
    purged = extract.prepare_purge(base, targets, ["REQ-R"], "f" * 64, "run-remote1")
    # The run's ref is on the remote; main is not: nothing is served before the commit.
    assert _git(remote["bare"], "rev-parse", run_ref("run-remote1")) == purged
    assert _git(remote["bare"], "rev-parse", "main") == base
    # Another pod (a fresh clone, an empty DVC cache) materializes the purged version from S3.
    audit = RemoteWorkspace.open(settings("pod-audit"))
    assert audit.run_ref_sha("run-remote1") == purged
    after, before = audit.dataset(purged), audit.dataset(base)
    assert len(before) - len(after) == 120
    assert not any(r.subject_id == "subject-canary" for r in after.records)
    assert json.loads(_git(remote["bare"], "show", f"{purged}:deletions.jsonl"))["request_ids"] == ["REQ-R"]

    # Compare-and-set: the first publisher wins, a stale one is refused, publishing twice is a no-op.
    register = RemoteWorkspace.open(settings("pod-register"))
    assert register.publish(purged, base) == purged
    assert _git(remote["bare"], "rev-parse", "main") == purged == register.served()
    assert register.publish(purged, base) == purged
    other = RemoteWorkspace.open(settings("pod-other")).prepare_purge(
        base, {"record_ids": ["canary-000"]}, ["REQ-S"], "e" * 64, "run-remote2"
    )
    with pytest.raises(WorkspaceError, match="the served dataset moved from .* during the run; rerun"):
        register.publish(other, base)
    assert _git(remote["bare"], "rev-parse", "main") == purged

    register.drop_run_ref("run-remote2")
    assert subprocess.run(
        ["git", "-C", str(remote["bare"]), "rev-parse", "--verify", "-q", run_ref("run-remote2")], capture_output=True
    ).returncode != 0


def test_two_publishers_racing_on_the_same_base_one_wins(remote):
    settings = remote["settings"]
    a, b = RemoteWorkspace.open(settings("race-a")), RemoteWorkspace.open(settings("race-b"))
    base = a.resolve("HEAD")
    ra = a.prepare_purge(base, {"record_ids": ["canary-000"]}, ["REQ-A"], "a" * 64, "run-ra")
    rb = b.prepare_purge(base, {"record_ids": ["canary-001"]}, ["REQ-B"], "b" * 64, "run-rb")
    results: dict[str, object] = {}

    def go(name: str, ws: RemoteWorkspace, rev: str) -> None:
        try:
            results[name] = ws.publish(rev, base)
        except WorkspaceError as err:
            results[name] = err

    threads = [threading.Thread(target=go, args=a_) for a_ in (("a", a, ra), ("b", b, rb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if isinstance(r, str)]
    assert len(winners) == 1, results
    assert _git(remote["bare"], "rev-parse", "main") == {"a": ra, "b": rb}[winners[0]]


def test_an_unreachable_remote_is_one_clear_line(tmp_path, s3_env):
    settings = Settings(
        workspace=str(tmp_path),
        git_remote=f"git://127.0.0.1:{free_port()}/workspace.git",
        s3_bucket=s3_env["bucket"],
        scratch_dir=str(tmp_path / "scratch"),
    )
    with pytest.raises(WorkspaceError, match="cannot clone the workspace repository"):
        RemoteWorkspace.open(settings)
    # Nothing half-cloned is left for the next attempt to trust.
    assert not list((tmp_path / "scratch" / "workspaces").iterdir())


def test_run_files_on_s3_survive_the_pod_and_checkpoints_sync(remote, tmp_path):
    from unlearn_lib.compliance.runfiles import RunFiles

    settings = remote["settings"]
    first = RunFiles(settings("pod-1"), "run-files1")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(1024))
    first.keep("model", model)
    with first.checkpoints(interval=0.2) as ckpt:
        (ckpt / "fingerprint.json").write_text("{}")
        for step in (10, 20, 30):
            data = os.urandom(256)
            (ckpt / f"step-{step:08d}.pt").write_bytes(data)
            import hashlib

            (ckpt / f"step-{step:08d}.pt.sha256").write_text(hashlib.sha256(data).hexdigest())
            time.sleep(0.6)
    # The pod is gone; its replacement (another scratch folder) finds the model and the newest checkpoint.
    second = RunFiles(settings("pod-2"), "run-files1")
    restored = tmp_path / "restored"
    assert second.restore("model", restored)
    assert (restored / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
    with second.checkpoints(interval=60) as ckpt:
        assert sorted(p.name for p in ckpt.glob("step-*.pt")) == ["step-00000030.pt"]
    second.drop()
    assert not RunFiles(settings("pod-3"), "run-files1").restore("model", tmp_path / "again")


def test_after_the_commit_the_erased_images_leave_the_dvc_remote(remote, s3_env, seeded, tmp_path):
    import hashlib

    import boto3

    # A copy of the shared DVC objects under a prefix of this test's own: it deletes some.
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1")
    bucket, old, new = s3_env["bucket"], f"{seeded['prefix']}/dvc/", f"{seeded['prefix']}-erase/dvc/"
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=old)
            for o in p.get("Contents", [])]
    for key in keys:
        s3.copy_object(Bucket=bucket, Key=new + key[len(old):], CopySource={"Bucket": bucket, "Key": key})
    settings = remote["settings"]("pod-x").replace(s3_prefix=f"{seeded['prefix']}-erase")
    ws = RemoteWorkspace.open(settings)
    base = ws.resolve("HEAD")
    dataset = ws.dataset(base)  # once: each call reads the manifest and every image again
    canaries = [r for r in dataset.records if r.subject_id == "subject-canary"]
    images = {hashlib.md5((dataset.root / r.path).read_bytes()).hexdigest() for r in canaries}
    purged = ws.prepare_purge(base, {"subject_ids": ["subject-canary"]}, ["REQ-X"], "a" * 64, "run-x")
    register = RemoteWorkspace.open(settings.replace(scratch_dir=str(tmp_path / "pod-register")))
    register.publish(purged, base)
    counts = register.erase_blobs(base, purged)
    assert counts["blobs_remote"] >= len(images) > 0

    def remote_objects() -> set[str]:
        return {o["Key"].removeprefix(new + "files/md5/").replace("/", "") for p in
                s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=new) for o in p.get("Contents", [])}

    assert not images & remote_objects()
    # A fresh pod (empty cache) still materializes every retained record from the remote ...
    fresh = RemoteWorkspace.open(settings.replace(scratch_dir=str(tmp_path / "pod-fresh")))
    now = fresh.dataset("HEAD")
    assert len(now) > 1000 and not any(r.subject_id == "subject-canary" for r in now.records)
    # ... and refuses the revision from before the deletion, naming the request.
    with pytest.raises(WorkspaceError, match="predates records erased by REQ-X"):
        fresh.dataset(base)
