"""The project image, built with `make image` and run with podman (marker ``containers``).

`pytest -m containers tests/infra`: builds the image first (about 5 minutes cold on 2 CPU cores,
seconds when only code changed; as root it installs podman itself). Nothing here skips: without
podman the build fails and says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from unlearn_lib.containers import container_identity, image_info, parse_container_id, ping, podman_socket

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]
# A credential-shaped value in the builder's environment must not reach the image.
CANARY = "unlearn-canary-credential-7f3a"


@pytest.fixture(scope="module")
def image() -> dict:
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": CANARY, "UNLEARN_S3_SECRET_KEY": CANARY}
    proc = subprocess.run(["make", "-s", "image"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"`make image` failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    if shutil.which("podman") is None:
        pytest.fail("podman is not on PATH after `make image`", pytrace=False)
    return image_info()


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


def run_in(image: dict, script: str, *options: str) -> str:
    """``sh -c script`` in a fresh container of the image, by digest (how compiled pipelines name it)."""
    return podman("run", "--rm", "--network=none", *options, image["ref"], "sh", "-c", script).stdout


def test_the_record_names_the_image_by_a_digest_that_runs(image):
    tag = image["image"]
    assert tag == f"localhost/unlearn:{_version()}-cpu"
    inspect = json.loads(podman("image", "inspect", tag).stdout)[0]
    assert image["id"] == inspect["Id"]
    assert image["digest"] == inspect["Digest"] and image["digest"].startswith("sha256:")
    assert image["ref"] == f"localhost/unlearn@{image['digest']}"
    assert image["ref"] in inspect["RepoDigests"]
    # The default setting pipeline_image (ghcr.io/unlearn/unlearn:<version>) resolves to it locally.
    alias = f"ghcr.io/unlearn/unlearn:{_version()}"
    assert podman("image", "inspect", "--format", "{{.Id}}", alias).stdout.strip() == image["id"]
    assert run_in(image, "echo ran") == "ran\n"
    assert inspect["Size"] < 3.0e9, "a CUDA torch or a pip cache crept in"


def test_runs_as_unlearn_with_a_writable_home(image):
    out = run_in(image, 'id -u; id -un; echo "$HOME"; pwd; touch "$HOME/probe" && echo writable').split()
    assert out == ["1000", "unlearn", "/home/unlearn", "/home/unlearn", "writable"]
    inspect = json.loads(podman("image", "inspect", image["ref"]).stdout)[0]["Config"]
    assert inspect.get("User") == "unlearn"
    assert not inspect.get("Entrypoint"), "kfp sets the command; an entrypoint would swallow it"


def test_cli_and_the_stack_run_with_the_cpu_torch(image):
    out = run_in(
        image,
        "unlearn --help >/dev/null && echo cli-ok; command -v python3; "
        'python3 -c "import torch, diffusers, mlflow, dvc, kfp, unlearn_lib, kfp.dsl.executor_main; '
        'print(torch.__version__, torch.version.cuda)"',
    )
    assert out.splitlines() == ["cli-ok", "/opt/venv/bin/python3", "2.13.0+cpu None"]


def test_workspace_templates_are_the_repositorys(image):
    # Packaged copies made at build time: they must be byte-identical to the root's.
    for name in ("dvc.yaml", "params.yaml"):
        out = run_in(
            image,
            'python3 -c "import sys; from unlearn_lib.workspace import project_file; '
            f"p = project_file('{name}'); print(p); sys.stdout.write(p.read_text())\"",
        )
        path, _, text = out.partition("\n")
        assert path.startswith("/opt/venv/lib/python3.11/site-packages/unlearn_lib/"), path
        assert text == (ROOT / name).read_text()


def test_git_and_dvc_work_for_the_user(image):
    out = run_in(
        image,
        'set -e; command -v git; command -v dvc; cd "$(mktemp -d)"; git init -q; '
        "git commit -q --allow-empty -m probe; git log --format='%an <%ae>'; dvc init -q && echo dvc-ok",
    )
    assert out.splitlines() == ["/usr/bin/git", "/opt/venv/bin/dvc", "unlearn <unlearn@localhost>", "dvc-ok"]


def test_nothing_leaks_into_the_image(image):
    inspect = podman("image", "inspect", image["ref"]).stdout
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image["ref"]).stdout
    assert CANARY not in inspect and CANARY not in history
    env = dict(e.split("=", 1) for e in json.loads(inspect)[0]["Config"]["Env"])
    suspicious = [k for k in env if k.startswith(("AWS_", "MLFLOW_", "UNLEARN_")) or "SECRET" in k or "TOKEN" in k]
    assert not suspicious, suspicious
    assert not any(k.upper().endswith(("PASSWORD", "_KEY")) for k in env)
    # No wheelhouse, pip cache, build tree or compiler left behind.
    out = run_in(
        image,
        "ls -d /wheels /tmp/src /root/.cache/pip /home/unlearn/.cache/pip 2>/dev/null; "
        "command -v gcc cc; du -sm /opt/venv | cut -f1",
        "--user",
        "root",
    )
    assert out.split() == [out.split()[-1]], out
    assert int(out.split()[-1]) < 2500


def test_container_identity_inside_the_image_matches_podman(image):
    digest = image["digest"]
    cid = podman(
        "create",
        "--network=none",
        "-e",
        f"UNLEARN_IMAGE_DIGEST={digest}",
        image["ref"],
        "sh",
        "-c",
        "cat /proc/self/cgroup; echo ---; python3 -c "
        "'import json; from unlearn_lib.containers import container_identity as c; print(json.dumps(c()))'",
    ).stdout.strip()
    try:
        out = podman("start", "--attach", cid).stdout
        inspect = json.loads(podman("container", "inspect", cid).stdout)[0]
    finally:
        podman("rm", "--force", cid, check=False)
    cgroup, _, identity = out.partition("---\n")
    assert inspect["Id"] == cid
    assert parse_container_id(cgroup) == cid
    assert json.loads(identity) == {
        "container_id": cid,
        "hostname": inspect["Config"]["Hostname"],
        "image_digest": digest,
    }
    assert container_identity(cgroup=cgroup, mountinfo="", environ={}, hostname="x")["container_id"] == cid


def test_podman_socket_serves_the_docker_api_for_kfp(image, tmp_path):
    # kfp.local.DockerRunner finds an image by its tags and RepoDigests over this API.
    import docker  # a project dependency (what kfp.local.DockerRunner drives)

    sock = tmp_path / "podman.sock"
    url = podman_socket(path=sock)
    pid = int((tmp_path / "podman.pid").read_text())
    try:
        assert url == f"unix://{sock}" and ping(sock)
        assert podman_socket(path=sock, start=False) == url
        # A bounded timeout: no call over the socket may hang the suite.
        client = docker.DockerClient(base_url=url, timeout=120)
        known = {ref for img in client.images.list() for ref in img.tags + img.attrs.get("RepoDigests", [])}
        assert image["ref"] in known and image["image"] in known
        # Not containers.run(): its blocking /wait hung this suite once (a container that exits
        # before podman 4's Docker-compat wait subscribes to the exit event is never reported;
        # containers/podman#28514). kfp's runner streams the logs first, then waits.
        container = client.containers.create(image["ref"], ["id", "-u"], network_mode="none")
        try:
            container.start()
            deadline = time.monotonic() + 60
            while container.status != "exited" and time.monotonic() < deadline:
                time.sleep(0.2)
                container.reload()
            assert container.status == "exited", container.status
            assert container.logs() == b"1000\n"
            assert container.attrs["State"]["ExitCode"] == 0
        finally:
            container.remove(force=True)
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not ping(sock):
                break
            time.sleep(0.1)


def _version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
