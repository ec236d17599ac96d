"""The pipeline's bookkeeping does not import diffusers.

Every pipeline step is its own process (kfp.local's subprocess runner, or a container), and so is
every `unlearn pipeline run`. Importing diffusers costs about 7 s on 2 cores (it imports peft,
transformers and torch._dynamo), which the steps that only read records, move aliases or
validate options paid on every request. Only the steps that load a model import it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

HEAVY = ("diffusers", "transformers", "peft")

# What the bookkeeping steps and the CLI's option check import, and the light siblings of heavy modules.
LIGHT = [
    "unlearn_lib.compliance.steps",
    "unlearn_lib.compliance.erasure",
    "unlearn_lib.audit.gates",
    "unlearn_lib.models.digest",
    "unlearn_lib.models.lineage",
    "unlearn_lib.tracking.card",
    "unlearn_lib.tracking.pyfunc",
    "unlearn_lib.tracking.registry",
    "unlearn_lib.t2i.model",
    "pipelines.run",
    "pipelines.cli",
    "components.register.component",
    "components.record_outcome.component",
    "components.extract_forget_set.component",
]


def _imported_in_fresh_process(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_bookkeeping_modules_do_not_import_diffusers():
    assert _imported_in_fresh_process("\n".join(f"import {m}" for m in LIGHT)) == []


def test_checking_a_runs_options_does_not_import_diffusers():
    code = (
        "from unlearn_lib.compliance.steps import check_run_options\n"
        "check_run_options('erasediff', {'steps': 20}, {'samples_per_class': 10})\n"
        "from unlearn_lib.tracking.pyfunc import is_text_to_image\n"
    )
    assert _imported_in_fresh_process(code) == []


def test_a_wrong_option_is_still_refused_by_both_families():
    from unlearn_lib.compliance.steps import check_run_options
    from unlearn_lib.errors import UnlearnError

    with pytest.raises(UnlearnError, match="no_such_option"):
        check_run_options("erasediff", {"no_such_option": 1}, {})


@pytest.mark.parametrize("package", ["unlearn_lib.audit", "unlearn_lib.models", "unlearn_lib.t2i"])
def test_every_public_name_of_a_lazy_package_resolves(package):
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="no_such_name"):
        mod.no_such_name  # noqa: B018
