"""record_outcome: the exit handler's interface, and the parent run it closed."""

from __future__ import annotations

from kfp import compiler

from components.record_outcome import record_outcome
from unlearn_lib.tracking import client_for


def test_interface(tmp_path):
    spec = record_outcome.component_spec
    assert set(spec.inputs) == {"run_id", "settings", "kfp_run_id", "status"}
    assert spec.inputs["status"].type == "PipelineTaskFinalStatus"
    compiler.Compiler().compile(record_outcome, str(tmp_path / "c.yaml"))


def test_local_run_closed_the_parent_run(weak_pipeline_run):
    out, settings = weak_pipeline_run["outcome"], weak_pipeline_run["settings"]
    run = client_for(settings).get_run(out.lineage_run_id)
    # Every task ran; the audit failed, so the run did not fulfil its request.
    assert run.info.status == "FAILED" and run.data.tags["unlearn.kfp_state"] == "SUCCEEDED"
    assert run.data.tags["unlearn.status"] == "failed" and run.data.tags["unlearn.version"] == "2"
    assert run.data.tags["unlearn.failed_step"] == "audit" and run.data.tags["unlearn.run_state"] == "failed"
