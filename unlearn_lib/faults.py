"""Fail points: named places in the compliance transaction where a test stops a real process.

``UNLEARN_FAILPOINTS=register.after_version,upload.after_first_file`` makes a process that
reaches one of those places write ``<UNLEARN_FAILPOINT_DIR>/<name>.reached`` (its PID inside)
and wait until ``<name>.release`` appears. The fault-injection tests SIGKILL the process group
while it waits, or stop a server and release it, so a crash lands exactly between two effects
(a model version created, its alias not yet moved) instead of wherever a timer happens to fall.
Unset, a fail point costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "UNLEARN_FAILPOINTS"
DIR_ENV = "UNLEARN_FAILPOINT_DIR"


def failpoint(name: str) -> None:
    wanted = os.environ.get(ENV, "")
    if not wanted or name not in wanted.split(","):
        return
    folder = Path(os.environ.get(DIR_ENV, "."))
    folder.mkdir(parents=True, exist_ok=True)
    release = folder / f"{name}.release"
    (folder / f"{name}.reached").write_text(str(os.getpid()))
    while not release.exists():
        time.sleep(0.05)
