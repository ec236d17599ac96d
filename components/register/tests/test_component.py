"""register: its interface, and the version a kfp.local run registered."""

from __future__ import annotations

import json

from kfp import compiler

from components.register import register
from unlearn_lib.tracking import client_for


def test_interface(tmp_path):
    spec = register.component_spec
    assert spec.inputs["model"].type == "system.Model@0.0.1"
    assert spec.inputs["audit_record"].type == "system.Artifact@0.0.1"
    assert {"version", "alias"} <= set(spec.outputs)
    compiler.Compiler().compile(register, str(tmp_path / "c.yaml"))


def test_local_run_registered_a_candidate_with_lineage(weak_pipeline_run):
    executor = json.loads((weak_pipeline_run["run_dir"] / "register" / "executor_output.json").read_text())
    assert executor["parameterValues"] == {"version": "2", "alias": "candidate"}
    settings = weak_pipeline_run["settings"]
    mv = client_for(settings).get_model_version(settings.model_name, "2")
    assert mv.tags["unlearn.request_ids"] == "REQ-WEAK" and mv.tags["unlearn.parent_version"] == "1"
    assert (settings.workspace_path / "exports" / "models" / settings.model_name / "v2" / "_COMPLETE.json").is_file()
