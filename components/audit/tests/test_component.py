"""audit: its typed outputs (HTML, Metrics, Artifact), and what a kfp.local run wrote."""

from __future__ import annotations

import json

from kfp import compiler

from components.audit import audit
from unlearn_lib.audit import validate_record


def test_interface(tmp_path):
    spec = audit.component_spec
    assert spec.outputs["report"].type == "system.HTML@0.0.1"
    assert spec.outputs["metrics"].type == "system.Metrics@0.0.1"
    assert spec.outputs["audit_record"].type == "system.Artifact@0.0.1"
    assert spec.inputs["model"].type == "system.Model@0.0.1"
    compiler.Compiler().compile(audit, str(tmp_path / "c.yaml"))


def test_local_run_wrote_report_metrics_and_verdict(weak_pipeline_run):
    task_dir = weak_pipeline_run["run_dir"] / "audit"
    record = json.loads((task_dir / "audit_record" / "audit.json").read_text())
    validate_record(record)
    assert record["verdict"] == "fail" and record["params"]["redact_forget_images"] is True
    html = (task_dir / "report").read_text()
    assert "data:image/png;base64," in html and "FAIL" in html  # one self-contained page
    executor = json.loads((task_dir / "executor_output.json").read_text())
    assert executor["parameterValues"]["verdict"] == "fail"
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["audit.passed"] == 0.0 and "audit.extracted_records" in metrics
