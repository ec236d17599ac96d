#!/usr/bin/env bash
# `make image`: build infra/Dockerfile with podman, offline (no image registry, no package
# index inside builds). Steps, each skipped when its result is already there:
#   1. podman, runc, debootstrap (apt, as root) and /etc/containers/containers.conf
#   2. the base image localhost/unlearn-base:bookworm (debootstrap + podman import)
#   3. the wheelhouse .cache/image/wheels (pip on the host), keyed by what decides its content
#   4. podman build; .cache/image/image.json records the image's tag, id and digest
#
# Environment: TORCH_INDEX (a CUDA build: torch comes from that index during the build, which
# must reach it), BASE_IMAGE, PYTHON (a CPython 3.11 for pip, like the image's), IMAGE_ALIAS.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=$ROOT/.cache/image
PY=${PYTHON:-python3}
BASE_IMAGE=${BASE_IMAGE:-localhost/unlearn-base:bookworm}
TORCH_INDEX=${TORCH_INDEX:-}
HOSTCONF=(python3 "$ROOT/infra/image/hostconf.py")
T0=$SECONDS

log() { printf '[image +%ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { printf 'make image: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

command -v python3 >/dev/null || die "python3 is needed on the host"

# ---- 1. tools and podman's configuration ---------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || die "${missing[*]} not installed; as root: apt-get install podman runc debootstrap"
    log "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after apt-get install"
    done
fi
if is_root; then
    "${HOSTCONF[@]}" containers-conf --path /etc/containers/containers.conf
else
    # Rootless podman reads the user's file on top of /etc's.
    "${HOSTCONF[@]}" containers-conf --path "${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf"
fi

mkdir -p "$CACHE"
# One build at a time (a test's fixture and a developer's `make image`): the wheelhouse is swapped
# in place and podman tags move.
exec 9>"$CACHE/.lock"
flock 9

# ---- 2. base image: no registry is reachable, so make it from the Debian archive apt uses ---------
# The root file system is kept as a tarball too: when podman's storage is reset, importing it
# takes seconds where debootstrap takes minutes.
base_tar=$CACHE/base-bookworm.tar
if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE exists"
else
    if [ ! -s "$base_tar" ]; then
        is_root || die "building the base image needs root (debootstrap); or set BASE_IMAGE to an existing image"
        mirror=$("${HOSTCONF[@]}" apt-mirror)
        log "debootstrap bookworm from $mirror (packages cached in $CACHE/debs)"
        mkdir -p "$CACHE/debs"
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,git --cache-dir="$CACHE/debs" \
            bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        # Nothing installs Debian packages in the image (no index is reachable): apt's lists and the
        # downloaded .debs would be dead weight.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        tar -C "$rootfs" -c . >"$base_tar.tmp"
        mv "$base_tar.tmp" "$base_tar"
        rm -rf "$rootfs"
        trap - EXIT
    fi
    podman import --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$base_tar" "$BASE_IMAGE" >>"$CACHE/debootstrap.log" 2>&1 \
        || { tail -5 "$CACHE/debootstrap.log" >&2; die "podman import of $base_tar failed"; }
    log "imported $BASE_IMAGE from $base_tar"
fi

# ---- 3. wheelhouse: the image installs from it with --no-index ------------------------------------
torch_pin=$(grep -E '^torch==' requirements/constraints.txt) || die "requirements/constraints.txt pins no torch"
# The CPU build explicitly: a bare torch==X from PyPI is the CUDA build with GBs of nvidia wheels.
# It comes from pip's find-links (/opt/wheels here); elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
torch_cpu=${TORCH_WHEEL:-$torch_pin+cpu}
tooling=("pip>=23.2" "setuptools>=77" "wheel")
"${HOSTCONF[@]}" requirements >"$CACHE/requirements.txt.new"
# Rewritten only when it changes: the Dockerfile copies it, and its content keys the dependency layer.
if cmp -s "$CACHE/requirements.txt.new" "$CACHE/requirements.txt"; then
    rm "$CACHE/requirements.txt.new"
else
    mv "$CACHE/requirements.txt.new" "$CACHE/requirements.txt"
fi
key=$("${HOSTCONF[@]}" wheel-key "$torch_cpu" "${tooling[@]}")
if [ "$(cat "$CACHE/wheels/.stamp" 2>/dev/null)" = "$key" ]; then
    log "wheelhouse up to date ($(find "$CACHE/wheels" -name '*.whl' | wc -l) wheels)"
else
    "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PY is not CPython 3.11 (the image's Python, Debian bookworm's); set PYTHON"
    log "filling the wheelhouse with $PY -m pip wheel"
    rm -rf "$CACHE/wheels.new"
    mkdir -p "$CACHE/wheels.new" "$CACHE/wheels"
    # The previous wheelhouse is a source too: only what changed is fetched again. pip wheel (not
    # download) because some pins are sdists only, and nothing can build them inside the image.
    "$PY" -m pip wheel --wheel-dir "$CACHE/wheels.new" --find-links "$CACHE/wheels" \
        -c requirements/constraints.txt "$torch_cpu" -r "$CACHE/requirements.txt" "${tooling[@]}" \
        >"$CACHE/pip.log" 2>&1 || { tail -20 "$CACHE/pip.log" >&2; die "pip wheel failed (log: $CACHE/pip.log)"; }
    echo "$key" >"$CACHE/wheels.new/.stamp"
    rm -rf "$CACHE/wheels"
    mv "$CACHE/wheels.new" "$CACHE/wheels"
    log "wheelhouse filled: $(find "$CACHE/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$CACHE/wheels" | cut -f1)"
fi

# ---- 4. the image ----------------------------------------------------------------------------------
version=$("${HOSTCONF[@]}" version)
if [ -n "$TORCH_INDEX" ]; then
    variant=$(basename "${TORCH_INDEX%/}")   # .../whl/cu126 -> cu126
    network=()                               # torch comes from TORCH_INDEX
else
    variant=cpu
    network=(--network=none)                 # proves the build needs nothing from outside
fi
tag=localhost/unlearn:$version-$variant
alias=${IMAGE_ALIAS:-ghcr.io/unlearn/unlearn:$version}
log "podman build $tag"
podman build --pull=never --layers "${network[@]}" \
    --ignorefile infra/image/.containerignore \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX="$TORCH_INDEX" --build-arg VERSION="$version" \
    -f infra/Dockerfile -t "$tag" -t "$alias" . >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; die "podman build failed (log: $CACHE/build.log)"; }

id=$(podman image inspect --format '{{.Id}}' "$tag")
digest=$(podman image inspect --format '{{.Digest}}' "$tag")
[ -n "$digest" ] || die "podman reports no digest for $tag"
python3 - "$CACHE/image.json" "$tag" "$id" "$digest" "$alias" <<'EOF'
import json, os, sys
path, image, image_id, digest, alias = sys.argv[1:]
info = {
    "image": image,
    "id": image_id,
    "digest": digest,
    "ref": f"{image.rsplit(':', 1)[0]}@{digest}",
    "tags": [image, alias],
}
with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
EOF
log "built $tag ($alias): id ${id:0:12}, digest $digest, $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$tag"
