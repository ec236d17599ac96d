"""Containers: the podman API socket, the project image's record, and which container a step runs in.

- :func:`podman_socket`: a ``unix://`` URL of a running ``podman system service`` (the Docker-
  compatible API that ``kfp.local.DockerRunner`` and docker-py use through ``DOCKER_HOST``).
- :func:`image_info`: what ``make image`` built (``.cache/image/image.json``): tag, id, digest.
- :func:`container_identity`: inside a container, its ID, hostname and image digest, for lineage.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import UnlearnError

IMAGE_INFO = Path(__file__).resolve().parents[1] / ".cache" / "image" / "image.json"
IMAGE_INFO_ENV = "UNLEARN_IMAGE_INFO"
IMAGE_DIGEST_ENV = "UNLEARN_IMAGE_DIGEST"

# podman (cgroupfs: /libpod_parent/libpod-<id>; systemd: libpod-<id>.scope) and docker
# (cgroupfs: /docker/<id>; systemd: docker-<id>.scope). libpod-conmon-<id> is the monitor, not
# the container, and does not match.
_CGROUP_ID = re.compile(r"(?:libpod-|docker-|/docker/)([0-9a-f]{64})(?![0-9a-f])")
# With a private cgroup namespace /proc/self/cgroup reads "0::/"; the engine's bind mount of
# /etc/hostname still names the container's directory (podman: overlay-containers/<id>/userdata,
# docker: containers/<id>).
_MOUNT_ID = re.compile(r"/(?:overlay-containers|containers)/([0-9a-f]{64})/")


class ContainerError(UnlearnError):
    """podman is missing or its service does not answer, or the image has not been built."""


# ---- the podman API service ------------------------------------------------------------------------
def default_socket_path() -> Path:
    """Where podman itself puts its API socket: /run/podman as root, the user's runtime dir otherwise."""
    if os.geteuid() == 0:
        return Path("/run/podman/podman.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/podman-run-{os.geteuid()}"
    return Path(runtime) / "podman" / "podman.sock"


def ping(path: str | os.PathLike[str], timeout: float = 2.0) -> bool:
    """Whether an API service answers ``GET /_ping`` with 200 OK on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(path))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: podman\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536 and (chunk := s.recv(4096)):
                data += chunk
    except OSError:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/1.") and status[1] == b"200" and b"OK" in body


def podman_socket(start: bool = True, *, path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> str:
    """The ``unix://`` URL of a running ``podman system service --time=0``, started if need be.

    A service already answering at the socket is reused. A started one runs in its own session
    (it outlives this process, like a daemon; its pid is in ``podman.pid`` beside the socket and
    its output in ``podman.log``), and this returns once it answers ``GET /_ping``.
    """
    sock = Path(path) if path is not None else default_socket_path()
    url = f"unix://{sock}"
    if ping(sock):
        return url
    if not start:
        raise ContainerError(f"no podman API service answers at {sock} (start: podman system service --time=0 {url})")
    podman = shutil.which("podman")
    if podman is None:
        raise ContainerError("podman is not installed (as root, `make image` installs it: apt-get install podman runc)")
    sock.parent.mkdir(parents=True, exist_ok=True)
    # Two callers at once must not start two services on one socket.
    with _file_lock(sock.with_name(sock.name + ".lock")):
        if ping(sock):
            return url
        sock.unlink(missing_ok=True)  # left by a service that died; podman refuses to bind over it
        log = sock.with_name("podman.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [podman, "system", "service", "--time=0", url],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        sock.with_name("podman.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(sock):
                return url
            if proc.poll() is not None:
                raise ContainerError(f"podman system service exited with status {proc.returncode}: {_last_line(log)}")
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        raise ContainerError(f"podman system service did not answer at {sock} within {timeout:.0f} s ({log})")


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"no output (see {path})"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- the project image -------------------------------------------------------------------------------
def image_info(path: str | os.PathLike[str] | None = None) -> dict:
    """The image ``make image`` built last: ``{"image": tag, "id": ..., "digest": "sha256:...", "ref": ...}``.

    Read from ``path``, else ``$UNLEARN_IMAGE_INFO``, else ``.cache/image/image.json`` in the checkout.
    """
    where = Path(path or os.environ.get(IMAGE_INFO_ENV) or IMAGE_INFO)
    try:
        info = json.loads(where.read_text())
    except FileNotFoundError:
        raise ContainerError(f"no image record at {where}: build the image with `make image`") from None
    except (OSError, ValueError) as e:
        raise ContainerError(f"image record {where} is unreadable ({e}): rebuild it with `make image`") from None
    missing = {"image", "id", "digest"} - (set(info) if isinstance(info, dict) else set())
    if missing:
        raise ContainerError(f"image record {where} lacks {sorted(missing)}: rebuild it with `make image`")
    return info


# ---- inside a container ------------------------------------------------------------------------------
def container_identity(
    *,
    cgroup: str | None = None,
    mountinfo: str | None = None,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
) -> dict[str, str]:
    """``{"container_id", "hostname", "image_digest"}`` inside a container, ``{}`` outside one.

    The ID comes from ``/proc/self/cgroup`` (``libpod-<id>``, ``docker-<id>``), else from the bind
    mount of ``/etc/hostname``; where neither names a container this returns ``{}``. The image
    digest is ``$UNLEARN_IMAGE_DIGEST`` (the engine does not tell the container), left out when unset.
    The keyword arguments replace what is read from this process (for tests).
    """
    cid = parse_container_id(
        _read("/proc/self/cgroup") if cgroup is None else cgroup,
        _read("/proc/self/mountinfo") if mountinfo is None else mountinfo,
    )
    if cid is None:
        return {}
    env = os.environ if environ is None else environ
    identity = {"container_id": cid, "hostname": hostname if hostname is not None else socket.gethostname()}
    if env.get(IMAGE_DIGEST_ENV):
        identity["image_digest"] = env[IMAGE_DIGEST_ENV]
    return identity


def parse_container_id(cgroup: str, mountinfo: str = "") -> str | None:
    """The 64-hex container ID named by ``/proc/self/cgroup`` or ``/proc/self/mountinfo`` text, if any."""
    for line in cgroup.splitlines():
        m = _CGROUP_ID.search(line.rsplit(":", 1)[-1])
        if m:
            return m.group(1)
    for line in mountinfo.splitlines():
        fields = line.split()
        # Field 4 is the mount point; only the engine's own bind mounts name this container (a
        # host running containers sees their storage mounts too, at other mount points).
        if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            m = _MOUNT_ID.search(fields[3])
            if m:
                return m.group(1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
