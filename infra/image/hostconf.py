"""Host-side helpers for ``infra/image/build.sh`` (standard library only: runs before any venv exists).

Subcommands:
  apt-mirror          print the Debian archive URL apt is configured with (for debootstrap)
  containers-conf     make /etc/containers/containers.conf run containers on this kind of host
  requirements        print the image's requirement lines (the project's runtime dependencies)
  wheel-key           print the key of the wheelhouse: what decides which wheels it holds
  version             print the project version from pyproject.toml
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]

# crun fails on these hosts (cgroup hybrid mode) and the kernel refuses podman's default
# ulimits; the values were measured to work (see the image section of infra/README.md).
CONTAINERS_CONF: dict[str, dict[str, str]] = {
    "containers": {"default_ulimits": "[]"},
    "engine": {"runtime": '"runc"', "cgroup_manager": '"cgroupfs"'},
}


def apt_mirror(suite: str = "bookworm") -> str:
    """The first archive that serves ``suite`` itself (not -security/-updates), as apt reads it."""
    etc = Path("/etc/apt")
    candidates: list[tuple[str, list[str]]] = []
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                # deb [options] URI suite components...
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    candidates.append((m.group(1), [m.group(2)]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "").split()))
    for uri, suites in candidates:
        if suite in suites:
            return uri.rstrip("/")
    raise SystemExit(f"no Debian archive for '{suite}' in /etc/apt/sources.list or /etc/apt/sources.list.d/")


def containers_conf(path: Path) -> list[str]:
    """Set the keys podman needs here, keeping everything else in the file; returns what changed."""
    text = path.read_text() if path.is_file() else ""
    try:
        current = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"{path} is not valid TOML ({e}); fix it by hand") from None
    changed = []
    for table, keys in CONTAINERS_CONF.items():
        for key, value in keys.items():
            if current.get(table, {}).get(key) == tomllib.loads(f"v = {value}")["v"]:
                continue
            text = _set_key(text, table, key, value)
            changed.append(f"[{table}] {key} = {value}")
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return changed


def _set_key(text: str, table: str, key: str, value: str) -> str:
    lines = text.splitlines()
    header = re.compile(rf"\s*\[\s*{re.escape(table)}\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return "\n".join([*lines, "", f"[{table}]", f"{key} = {value}", ""]).lstrip("\n")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    for i in range(start + 1, end):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            # An array value may span lines: drop its continuation lines with it.
            last, depth = i, lines[i].count("[") - lines[i].count("]")
            while depth > 0 and last + 1 < end:
                last += 1
                depth += lines[last].count("[") - lines[last].count("]")
            lines[i : last + 1] = [f"{key} = {value}"]
            break
    else:
        lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> list[str]:
    return list(_pyproject()["project"]["dependencies"])


def wheel_key(extra: list[str]) -> str:
    # Only the inputs that decide the wheelhouse's content: a version bump or a new pytest marker
    # in pyproject.toml must not cost a refill.
    h = hashlib.sha256()
    h.update((ROOT / "requirements" / "constraints.txt").read_bytes())
    for line in [*requirements(), *extra]:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("apt-mirror").add_argument("--suite", default="bookworm")
    sub.add_parser("containers-conf").add_argument("--path", type=Path, default=Path("/etc/containers/containers.conf"))
    sub.add_parser("requirements")
    sub.add_parser("wheel-key").add_argument("extra", nargs="*")
    sub.add_parser("version")
    args = p.parse_args(argv)
    if args.cmd == "apt-mirror":
        print(apt_mirror(args.suite))
    elif args.cmd == "containers-conf":
        for change in containers_conf(args.path):
            print(f"{args.path}: {change}", file=sys.stderr)
    elif args.cmd == "requirements":
        print("\n".join(requirements()))
    elif args.cmd == "wheel-key":
        print(wheel_key(args.extra))
    elif args.cmd == "version":
        print(_pyproject()["project"]["version"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
