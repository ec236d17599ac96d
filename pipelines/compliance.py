"""The compliance pipeline: extract -> unlearn -> audit -> register, with an exit handler.

Execution caching is off for every task: a compliance run must do the work it records.
"""

from pathlib import Path

from kfp import compiler, dsl

from components.audit import audit
from components.extract_forget_set import extract_forget_set
from components.record_outcome import record_outcome
from components.register import register
from components.unlearn import unlearn

PIPELINE_NAME = "unlearn-compliance"
GOLDEN = Path(__file__).with_name("compliance.yaml")


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Erase a deletion request's data from a registered diffusion "
    "model, audit the result and register it with lineage.",
)
def compliance_pipeline(
    settings_json: str,
    batch_json: str,
    lineage_run_id: str,
    dataset_rev: str = "HEAD",
    algorithm: str = "erasediff",
    options_json: str = "{}",
    audit_params_json: str = "{}",
) -> None:
    common = {"settings_json": settings_json, "batch_json": batch_json, "lineage_run_id": lineage_run_id}
    outcome = record_outcome(**common)
    outcome.set_caching_options(False)
    with dsl.ExitHandler(outcome, name="compliance-run"):
        extract = extract_forget_set(**common, dataset_rev=dataset_rev)
        extract.set_display_name("extract forget set")
        forget_hash = extract.outputs["forget_set_sha256"]
        revs = {"dataset_rev": extract.outputs["dataset_rev"]}

        erase = unlearn(
            **common,
            **revs,
            forget_set_sha256=forget_hash,
            algorithm=algorithm,
            options_json=options_json,
            forget=extract.outputs["forget"],
            retain=extract.outputs["retain"],
        )
        erase.set_display_name("unlearn (GPU)")
        erase.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        erase.set_memory_limit("32G").set_cpu_limit("8")
        # A preempted GPU pod is retried; the step resumes from its checkpoints.
        erase.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)

        # The audit and the registration see the same lineage: what was erased, from which version.
        lineage = {
            **common,
            **revs,
            "purged_rev": extract.outputs["purged_rev"],
            "forget_set_sha256": forget_hash,
            "parent_version": erase.outputs["parent_version"],
            "model": erase.outputs["model"],
        }
        check = audit(**lineage, audit_params_json=audit_params_json)
        check.set_display_name("audit")

        reg = register(**lineage, algorithm=algorithm, audit_record=check.outputs["audit_record"])
        reg.set_display_name("register")
        for task in (extract, erase, check, reg):
            task.set_caching_options(False)


def compile_pipeline(out: str | Path = GOLDEN) -> Path:
    """Write the pipeline's IR YAML (the file a KFP cluster runs)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(compliance_pipeline, str(out))
    return out
