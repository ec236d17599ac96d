"""The nightly pipeline: claim the pending batches, then one compliance run per batch.

The first task (``claim_pending``, never cached) reads the queue from the state database and,
for each model, launches its most urgent batch: the run row is created, the requests are
claimed and the model's lease is held for the cluster run, exactly as ``unlearn pipeline
submit`` does. Its output is the list of those runs' pipeline arguments; ``dsl.ParallelFor``
runs the compliance pipeline (a sub-pipeline, exit handler included) once per item, one at a
time. A model that is busy, and a model's further batches, wait for the next tick.

kfp allows an ``ExitHandler`` only in the outermost scope of a pipeline function; the
compliance pipeline's handler is in *its* outermost scope, so the compiler accepts it inside
this loop (the check is per pipeline function; a handler written directly in the loop body
would be refused).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components.claim_pending import claim_pending
from pipelines.compliance import ClusterOptions, _platform, build_pipeline, using_image
from unlearn_lib.errors import UnlearnError
from unlearn_lib.settings import Settings

PIPELINE_NAME = "unlearn-nightly"
GOLDEN = Path(__file__).with_name("nightly.yaml")
CLAIM_TIMEOUT = 1800  # seconds: the claim only reads the queue and opens runs


def runnable_now(settings: Settings, store: Any, echo: Callable[[str], None]) -> list[Any]:
    """The queued requests that may run now, in deadline order, each checked against the world again.

    Valid when submitted is not valid forever: another request may have erased the records
    (the request is done), or the model may be gone (it fails, not retried).
    """
    from unlearn_lib.requests.intake import DONE, REJECTED, assess

    out = []
    for row in store.runnable_requests(settings.max_attempts):
        req = row.request
        verdict = assess(settings, req, store)
        if verdict.state == DONE:
            store.transition(
                [req.request_id],
                DONE,
                reason=verdict.reason,
                version=verdict.version,
                evidence_json=_json(verdict.evidence or {}),
            )
            echo(f"{req.request_id}: {verdict.reason or 'already fulfilled'}")
        elif verdict.state == REJECTED:
            store.fail_requests([req.request_id], None, f"no longer valid: {verdict.reason}", retryable=False)
            echo(f"{req.request_id}: no longer valid: {verdict.reason}")
        else:
            out.append(req)
    return out


def _json(data: dict) -> str:
    import json

    return json.dumps(data, sort_keys=True)


def claim_batches(
    settings: Settings,
    max_batch: int = 50,
    algorithm: str = "erasediff",
    options: dict | None = None,
    audit_params: dict | None = None,
    queue_seconds: float = 0,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Launch the most urgent pending batch of every model that is free; the launched runs' arguments.

    Each launch holds its model's lease for the cluster run (its steps renew it, its exit
    handler releases it), so a second tick, or a `pipeline submit`, cannot take the same
    requests. The runs go one at a time: the n-th waits for those before it, so its lease is
    held ``n * queue_seconds`` longer (the time a run may take); otherwise it would lapse while
    queued and the run be taken for dead. A batch that cannot start (its model vanished,
    MLflow down) is reported and the others go on; when nothing could start and something
    failed, the task fails.
    """
    from pipelines.run import RunOutcome, launch
    from unlearn_lib.compliance.steps import error_line
    from unlearn_lib.requests.intake import batches_of
    from unlearn_lib.state import StateStore, model_lease

    store = StateStore.open(settings)
    launched: list[dict[str, Any]] = []
    errors: list[str] = []
    models: set[str] = set()
    for batch in batches_of(runnable_now(settings, store, echo), max_batch):
        if batch.model in models:
            # One run per model per tick: its lease is taken by the batch launched above.
            echo(f"batch {batch.batch_id} ({', '.join(batch.request_ids)}) waits for the next tick")
            continue
        models.add(batch.model)
        try:
            started = launch(settings, batch, "HEAD", algorithm, options, audit_params, runner="kfp", explicit=False)
        except Exception as err:
            # One bad batch must not stop the others (launch already undid what it had begun).
            errors.append(f"batch {batch.batch_id} not started: {error_line(err)}")
            echo(errors[-1])
            continue
        if isinstance(started, RunOutcome):
            echo(f"batch {batch.batch_id} not started: {started.message}")
            continue
        if launched and queue_seconds:
            ttl = settings.lease_ttl_seconds + len(launched) * queue_seconds
            store.renew_lease(model_lease(batch.model), started.run_id, ttl)
        echo(f"batch {batch.batch_id}: run {started.run_id} claimed {', '.join(batch.request_ids)}")
        launched.append(dict(started.arguments))
    if errors and not launched:
        raise UnlearnError("; ".join(errors))
    if not launched:
        echo("no pending deletion requests to run")
    return launched


def build_nightly(opts: ClusterOptions | None = None) -> Any:
    """The nightly DAG for a cluster described by ``opts`` (the same as the compliance pipeline's)."""
    opts = opts or ClusterOptions()
    compliance = build_pipeline(opts)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Claim the pending deletion requests (oldest deadline first, one batch per model) "
        "and run the compliance pipeline for each batch, one at a time.",
    )
    def nightly_pipeline(
        max_batch: int = 50,
        algorithm: str = "erasediff",
        options: dict = {},  # noqa: B006 -- kfp takes the default from the signature
        audit_params: dict = {},  # noqa: B006
        settings: dict = {},  # noqa: B006 -- empty on a cluster: the unlearn-settings ConfigMap
    ) -> None:
        claimed = claim_pending(
            settings=settings,
            max_batch=max_batch,
            algorithm=algorithm,
            options=options,
            audit_params=audit_params,
            # What one compliance run may take: its steps' timeouts (fixed when compiled, like them).
            queue_seconds=sum(opts.timeouts.values()),
        )
        claimed.set_display_name("claim pending batches")
        # _platform turns caching off too: a cached claim would replay yesterday's runs.
        _platform(claimed, opts.timeouts.get("claim", CLAIM_TIMEOUT), False, opts)
        with dsl.ParallelFor(claimed.output, parallelism=1, name="batches") as item:
            # Every parameter comes from the launch's arguments, which name them all.
            run = compliance(**{name: getattr(item, name) for name in compliance.component_spec.inputs})
            run.set_display_name("compliance run")
            run.set_caching_options(False)

    return nightly_pipeline


nightly_pipeline = build_nightly()


def compile_pipeline(out: str | Path = GOLDEN, image: str | None = None, opts: ClusterOptions | None = None) -> Path:
    """Write the nightly pipeline's IR YAML (what `unlearn schedule create` uploads)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = nightly_pipeline if opts is None else build_nightly(opts)
    with using_image(pipeline, image):
        compiler.Compiler().compile(pipeline, str(out))
    return out


if __name__ == "__main__":
    print(f"wrote {compile_pipeline()}")
