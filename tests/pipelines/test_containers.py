"""The compliance DAG with every step in its own container: the project image, the local stack, podman.

Real everything: the image `make image` built, `podman system service` behind kfp.local's
DockerRunner, and the stack's services (moto S3, `mlflow server`, `git daemon`, PostgreSQL) on
127.0.0.1. The containers share no folder with this machine but kfp's pipeline root: the
workspace comes from the git remote and the DVC remote, models from the MLflow registry.
`make test-containers` (and `.ci/run`) runs this; the default `make test` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.containers

FAST_AUDIT = {"samples_per_class": 20, "extraction_samples": 200}


@pytest.fixture(scope="module")
def image() -> dict:
    from unlearn_lib.containers import image_info

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(["make", "-s", "image"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return image_info()


@pytest.fixture(scope="module")
def stack(workspace_template, tmp_path_factory, image):
    import tempfile
    from pathlib import Path

    from unlearn_lib import stack as stack_mod

    # Not under pytest's mode-0700 temporary folder: PostgreSQL runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="unlearn-container-stack-"))
    os.chmod(root, 0o755)
    ws = root / "ws"
    shutil.copytree(workspace_template, ws, symlinks=True)
    folder = root / "stack"
    stack_mod.up(folder, ws)
    env = stack_mod.stack_environment(folder)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield {"dir": folder, "settings": stack_mod.settings_for(folder), "workspace": ws}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stack_mod.down(folder)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def container_run(stack):
    from pipelines.run import run_local
    from unlearn_lib.requests import DeletionBatch, parse_request

    request = parse_request(
        {
            "request_id": "REQ-C1",
            "received_at": "2026-11-27T10:00:00Z",
            "basis": "gdpr-art17",
            "model": stack["settings"].model_name,
            "targets": {"subject_ids": ["subject-canary"]},
        }
    )
    outcome = run_local(
        stack["settings"], DeletionBatch((request,)), audit_params=FAST_AUDIT, runner="container"
    )
    return {**stack, "outcome": outcome}


def test_the_request_ran_step_by_step_in_containers_of_the_image(container_run, image):
    from unlearn_lib.tracking import client_for

    out, settings = container_run["outcome"], container_run["settings"]
    assert out.status == "succeeded", out
    client = client_for(settings)
    parent = client.get_run(out.lineage_run_id)
    assert parent.data.tags["unlearn.runner"] == "kfp.local-container"
    assert parent.data.tags.get("kfp.run_id")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{out.lineage_run_id}'"
    )
    steps = {r.data.tags["unlearn.step"]: r.data.tags for r in children}
    assert set(steps) >= {"extract_forget_set", "unlearn", "audit", "register"}
    ids = {name: tags["unlearn.container.container_id"] for name, tags in steps.items()}
    assert len(set(ids.values())) == len(ids), "each step in its own container"
    for name, tags in steps.items():
        assert tags["unlearn.container.image_digest"] == image["digest"], name
        # Nothing of this machine's disk but kfp's pipeline root was mounted into the step.
        mounts = json.loads(tags["unlearn.container.host_mounts"])
        assert all(m.startswith(str(settings.workspace_path / "runs" / "kfp")) for m in mounts), (name, mounts)
    # The exit handler ran in a container too, and closed the parent run.
    assert parent.info.status == "FINISHED" and parent.data.tags["unlearn.status"] == "succeeded"
    assert parent.data.tags["unlearn.exit_handler.container_id"] not in ids.values()
    assert parent.data.tags["unlearn.exit_handler.image_digest"] == image["digest"]


def test_the_commit_reached_every_store_over_the_network(container_run):
    from unlearn_lib.state import StateStore
    from unlearn_lib.tracking import PRODUCTION, alias_version, configure
    from unlearn_lib.workspace import RemoteWorkspace

    out, settings = container_run["outcome"], container_run["settings"]
    assert alias_version(configure(settings), settings.model_name, PRODUCTION) == out.version == "2"
    served = RemoteWorkspace.open(settings.replace(scratch_dir=str(container_run["dir"] / "check"))).served()
    store = StateStore.open(settings)
    run = store.get_run(out.run_id)
    assert served == run.purged_rev and store.get_request("REQ-C1").state == "done"
    # Nothing of the run is left on S3 once it committed (its checkpoints went with it).
    import boto3

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    left = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{settings.s3_prefix}/checkpoints/{out.run_id}/")
    assert left.get("KeyCount", 0) == 0


def test_the_erased_images_left_the_dvc_remote_on_s3(container_run, digits):
    import hashlib

    import boto3

    from unlearn_lib.data import ForgetTargets
    from unlearn_lib.data.selection import target_matcher
    from unlearn_lib.state import StateStore

    settings = container_run["settings"]
    (event,) = [e for e in StateStore.open(settings).events(request_id="REQ-C1") if e["kind"] == "data_erased"]
    detail = json.loads(event["detail"])
    assert detail["blobs_remote"] > 0 and detail["records"] == 120
    # The canaries' images are under no key of the bucket (DVC names an object by its content's MD5).
    matches = target_matcher(ForgetTargets.build(subject_ids=["subject-canary"]))
    deleted = {hashlib.md5((digits.root / r.path).read_bytes()).hexdigest() for r in digits.records if matches(r)}
    assert deleted
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
            for o in page.get("Contents", [])]
    assert any("/files/md5/" in k for k in keys)  # the DVC remote is there: the check can fail
    assert not [k for k in keys if k.replace("/", "")[-32:] in deleted]
