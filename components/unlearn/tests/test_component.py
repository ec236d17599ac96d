"""unlearn: its interface and GPU/retry settings, and its output from a kfp.local run of the DAG."""

from __future__ import annotations

import json

from kfp import compiler

from components.unlearn import unlearn
from unlearn_lib.models import DiffusionModel


def test_interface(tmp_path):
    spec = unlearn.component_spec
    assert spec.inputs["forget"].type == "system.Dataset@0.0.1" and spec.inputs["retain"].type == "system.Dataset@0.0.1"
    assert spec.outputs["model"].type == "system.Model@0.0.1"
    assert {"algorithm", "options", "forget_set_sha256", "dataset_rev", "run_id", "settings"} <= set(spec.inputs)
    assert spec.inputs["options"].type == "Dict"
    compiler.Compiler().compile(unlearn, str(tmp_path / "c.yaml"))


def test_local_run_wrote_a_diffusers_model_with_its_record(weak_pipeline_run):
    model_dir = weak_pipeline_run["run_dir"] / "unlearn" / "model"
    model = DiffusionModel.load(model_dir)  # plain diffusers folder plus metadata
    record = json.loads((model_dir / "unlearning.json").read_text())
    assert record["algorithm"] == "erasediff" and record["steps"] == 2
    assert model.meta.lineage["forget_set_sha256"] == record["selection"]["forget_set_sha256"]
    executor = json.loads((weak_pipeline_run["run_dir"] / "unlearn" / "executor_output.json").read_text())
    assert executor["parameterValues"]["parent_version"] == "1"
