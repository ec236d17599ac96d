"""record_outcome: the exit handler; records the run's end (and its failing step) in MLflow."""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def record_outcome(run_id: str, settings: dict, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus) -> None:
    """Close the parent MLflow run: FINISHED, or FAILED with the failing step and its error."""
    from unlearn_lib.compliance import StepContext, finalize_step

    ctx = StepContext.parse(settings, run_id)
    finalize_step(ctx, status.state, status.error_message or "", kfp_run_id)
