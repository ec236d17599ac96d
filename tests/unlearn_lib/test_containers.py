"""unlearn_lib.containers without podman: ID parsing, the image record, the API socket against a stand-in.

The same functions against real podman are in tests/infra/test_image.py (marker ``containers``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time

import pytest

from unlearn_lib.containers import (
    ContainerError,
    container_identity,
    image_info,
    parse_container_id,
    ping,
    podman_socket,
)

CID = "f4b704f6aab5e4e4bece0eef6406cc350a7cbaa934e3c095ea72444cd33329ac"
OTHER = "0123456789abcdef" * 4

# What this project's machines show (podman 4.3, runc, cgroupfs, cgroup v1 hybrid).
PODMAN_CGROUPFS = (
    "".join(
        f"{n}:{c}:/libpod_parent/libpod-{CID}\n"
        for n, c in enumerate(["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"], 1)
    )
    + f"0::/libpod_parent/libpod-{CID}\n"
)
HOST_OF_THESE_MACHINES = "9:name=systemd:/\n4:memory:/process_api/f5e50b453a84f2a08dd212a32bc5eb56\n0::/\n"
PODMAN_MOUNTINFO = (
    f"87 77 254:0 /run/containers/storage/overlay-containers/{CID}/userdata/hostname /etc/hostname"
    " rw - ext4 /dev/vda rw\n"
)


@pytest.mark.parametrize(
    "cgroup",
    [
        PODMAN_CGROUPFS,
        f"0::/machine.slice/libpod-{CID}.scope\n",  # podman, systemd cgroup manager, cgroup v2
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n",  # rootless
        f"12:memory:/docker/{CID}\n",  # docker, cgroupfs driver
        f"0::/system.slice/docker-{CID}.scope\n",  # docker, systemd driver
        f"0::/machine.slice/libpod-conmon-{OTHER}.scope\n0::/machine.slice/libpod-{CID}.scope\n",
    ],
)
def test_container_id_from_cgroup(cgroup):
    assert parse_container_id(cgroup) == CID
    ident = container_identity(cgroup=cgroup, mountinfo="", environ={}, hostname="f4b704f6aab5")
    assert ident == {"container_id": CID, "hostname": "f4b704f6aab5"}


def test_container_id_from_the_hostname_mount_when_the_cgroup_namespace_hides_it():
    ident = container_identity(cgroup="0::/\n", mountinfo=PODMAN_MOUNTINFO, environ={}, hostname="h")
    assert ident["container_id"] == CID
    docker = f"512 500 8:1 /var/lib/docker/containers/{CID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
    assert parse_container_id("0::/\n", docker) == CID


def test_outside_a_container_there_is_no_identity():
    assert container_identity(cgroup=HOST_OF_THESE_MACHINES, mountinfo="", environ={}, hostname="h") == {}
    # A host running containers sees their storage mounted elsewhere: that is not its own ID.
    host_mounts = f"300 29 0:55 / /var/lib/containers/storage/overlay-containers/{CID}/userdata/shm rw - tmpfs shm rw\n"
    assert container_identity(cgroup="0::/\n", mountinfo=host_mounts, environ={}, hostname="h") == {}
    assert parse_container_id(f"0::/machine.slice/libpod-conmon-{CID}.scope\n") is None
    assert parse_container_id(f"0::/docker/{CID}0\n") is None  # 65 hex digits: not an ID


def test_image_digest_comes_from_the_environment():
    env = {"UNLEARN_IMAGE_DIGEST": "sha256:" + "ab" * 32}
    ident = container_identity(cgroup=PODMAN_CGROUPFS, mountinfo="", environ=env, hostname="h")
    assert ident == {"container_id": CID, "hostname": "h", "image_digest": "sha256:" + "ab" * 32}
    assert "image_digest" not in container_identity(
        cgroup=PODMAN_CGROUPFS, mountinfo="", environ={"UNLEARN_IMAGE_DIGEST": ""}, hostname="h"
    )


def test_identity_of_this_process_is_a_dict_of_strings():
    ident = container_identity()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in ident.items())
    assert not ident or len(ident["container_id"]) == 64


# ---- image record ----------------------------------------------------------------------------------
def test_image_info_names_make_image_when_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("UNLEARN_IMAGE_INFO", raising=False)
    with pytest.raises(ContainerError, match="make image"):
        image_info(tmp_path / "image.json")
    (tmp_path / "image.json").write_text('{"image": "localhost/unlearn:0.1.0-cpu"}')
    with pytest.raises(ContainerError, match=r"lacks \['digest', 'id'\].*make image"):
        image_info(tmp_path / "image.json")
    (tmp_path / "image.json").write_text("{not json")
    with pytest.raises(ContainerError, match="make image"):
        image_info(tmp_path / "image.json")


def test_image_info_reads_the_record(tmp_path, monkeypatch):
    record = {"image": "localhost/unlearn:0.1.0-cpu", "id": "f" * 64, "digest": "sha256:" + "0" * 64}
    (tmp_path / "image.json").write_text(json.dumps(record))
    assert image_info(tmp_path / "image.json") == record
    monkeypatch.setenv("UNLEARN_IMAGE_INFO", str(tmp_path / "image.json"))
    assert image_info() == record


# ---- the API socket, against a stand-in for podman ---------------------------------------------------
def _serve(path, status=b"200 OK", body=b"OK"):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    threading.Thread(target=loop, daemon=True).start()
    return srv


def test_ping_wants_200_ok(tmp_path):
    assert not ping(tmp_path / "absent.sock")
    good, bad = _serve(tmp_path / "good.sock"), _serve(tmp_path / "bad.sock", status=b"404 Not Found", body=b"no")
    try:
        assert ping(tmp_path / "good.sock")
        assert not ping(tmp_path / "bad.sock")
        assert podman_socket(start=False, path=tmp_path / "good.sock") == f"unix://{tmp_path}/good.sock"
    finally:
        good.close()
        bad.close()
    with pytest.raises(ContainerError, match="no podman API service answers"):
        podman_socket(start=False, path=tmp_path / "absent.sock")


# `podman system service --time=0 unix://PATH`, as far as podman_socket can tell.
FAKE_PODMAN = textwrap.dedent(
    """\
    #!{python}
    import os, socket, sys, time
    if os.environ.get("FAKE_PODMAN_FAIL"):
        print("Error: cannot listen: permission denied", file=sys.stderr)
        sys.exit(125)
    assert sys.argv[1:4] == ["system", "service", "--time=0"], sys.argv
    time.sleep(0.3)  # the caller must wait for the socket, not assume it
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sys.argv[4].removeprefix("unix://"))
    srv.listen()
    while True:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nOK")
        conn.close()
    """
)


@pytest.fixture
def fake_podman(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(FAKE_PODMAN.format(python=sys.executable))
    (bin_dir / "podman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_podman_socket_starts_the_service_once_and_reuses_it(fake_podman, tmp_path):
    sock = tmp_path / "run" / "podman.sock"
    sock.parent.mkdir()
    sock.touch()  # a stale socket file from a dead service
    try:
        assert podman_socket(path=sock) == f"unix://{sock}"
        pid = int((sock.parent / "podman.pid").read_text())
        assert ping(sock)
        assert os.getsid(pid) == pid, "the service runs in its own session"
        assert podman_socket(path=sock) == f"unix://{sock}"
        assert int((sock.parent / "podman.pid").read_text()) == pid, "a running service is reused"
    finally:
        pid = int((sock.parent / "podman.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        _reap(pid)


def test_podman_socket_reports_a_service_that_dies(fake_podman, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PODMAN_FAIL", "1")
    with pytest.raises(ContainerError, match="exited with status 125: Error: cannot listen: permission denied"):
        podman_socket(path=tmp_path / "podman.sock")


def test_podman_socket_without_podman(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerError, match="podman is not installed"):
        podman_socket(path=tmp_path / "podman.sock")


def _reap(pid):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)
