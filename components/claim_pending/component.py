"""claim_pending: the nightly pipeline's first task; launches the pending batches it can run now."""

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def claim_pending(
    settings: dict, max_batch: int, algorithm: str, options: dict, audit_params: dict, queue_seconds: int
) -> list:
    """For each model, its most urgent pending batch: run row created, requests claimed, lease held.

    Returns one item per launched run: the compliance pipeline's arguments for it. The runs go
    one at a time; ``queue_seconds`` (what one run may take) keeps a queued run's lease alive.
    """
    from pipelines.nightly import claim_batches
    from unlearn_lib.compliance.steps import step_settings

    return claim_batches(step_settings(settings), max_batch, algorithm, options, audit_params, queue_seconds)
