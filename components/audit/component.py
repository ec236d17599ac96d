"""audit: is the data's influence gone, and does the model still work? A verdict from gates."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def audit(
    run_id: str,
    settings: dict,
    dataset_rev: str,
    purged_rev: str,
    forget_set_sha256: str,
    parent_version: str,
    audit_params: dict,
    model: Input[Model],
    report: Output[HTML],
    audit_record: Output[Artifact],
    metrics: Output[Metrics],
) -> NamedTuple("AuditOutputs", [("verdict", str)]):
    """Audit the unlearned model against its parent version; the report is self-contained HTML."""
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from unlearn_lib.compliance import StepContext, audit_step

    ctx = StepContext.parse(settings, run_id)
    out = audit_step(
        ctx,
        dataset_rev,
        purged_rev,
        forget_set_sha256,
        model.path,
        parent_version,
        audit_params,
        audit_record.path,
    )
    shutil.copy(Path(audit_record.path) / "report_inline.html", report.path)
    for name, value in out["metrics"].items():
        metrics.log_metric(name, float(value))
    metrics.log_metric("audit.passed", float(out["passed"]))
    audit_record.metadata.update({"verdict": out["verdict"]})
    result = namedtuple("AuditOutputs", ["verdict"])
    return result(out["verdict"])
