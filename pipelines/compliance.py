"""The compliance pipeline: extract -> unlearn -> audit -> register, with an exit handler.

Execution caching is off for every task: a compliance run must do the work it records.

Parameters are typed so that the Kubeflow UI's run form is usable: the run's ID in the state
database (created by ``unlearn pipeline submit`` / the nightly claim task before the DAG
starts; the requests, the model and the MLflow parent run are found through it), the request
IDs (shown, and checked against the run), the options and audit parameters as dicts, and
``settings`` — empty on a cluster, where every step reads its settings from the
``unlearn-settings`` ConfigMap and its credentials from Secrets (kfp-kubernetes), or the exact
settings of a local run.
"""


import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from components.audit import audit
from components.extract_forget_set import extract_forget_set
from components.record_outcome import record_outcome
from components.register import register
from components.unlearn import unlearn

PIPELINE_NAME = "unlearn-compliance"
GOLDEN = Path(__file__).with_name("compliance.yaml")

SETTINGS_CONFIG_MAP = "unlearn-settings"
# ConfigMap key -> the step's environment variable (Settings.load reads UNLEARN_*).
SETTINGS_KEYS = (
    "UNLEARN_MLFLOW_TRACKING_URI",
    "UNLEARN_MLFLOW_EXPERIMENT",
    "UNLEARN_MODEL_NAME",
    "UNLEARN_S3_ENDPOINT_URL",
    "UNLEARN_S3_BUCKET",
    "UNLEARN_S3_PREFIX",
    "UNLEARN_STATE_DB_URL",
    "UNLEARN_GIT_REMOTE",
)
# Secret name -> {key: environment variable}; optional ones may be absent (no MLflow auth).
SECRETS: dict[str, tuple[dict[str, str], bool]] = {
    "unlearn-s3": ({"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, False),
    "unlearn-state-db": ({"UNLEARN_STATE_DB_PASSWORD": "UNLEARN_STATE_DB_PASSWORD"}, False),
    "unlearn-mlflow-auth": (
        {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")},
        True,
    ),
}


@dataclass(frozen=True)
class ClusterOptions:
    """What the compiled DAG asks of the cluster (compile-time: the platform spec is not a parameter)."""

    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[dict[str, Any], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    audit_on_gpu: bool = True
    # Seconds per step: a hung step fails (and its run is resumed) instead of holding the lease.
    timeouts: dict[str, int] = field(
        default_factory=lambda: {"extract": 1800, "unlearn": 6 * 3600, "audit": 2 * 3600, "register": 1800, "exit": 600}
    )


def _platform(task: dsl.PipelineTask, timeout: int, gpu: bool, opts: ClusterOptions) -> None:
    kubernetes.use_config_map_as_env(
        task, SETTINGS_CONFIG_MAP, {key: key for key in SETTINGS_KEYS}, optional=False
    )
    for name, (keys, optional) in SECRETS.items():
        kubernetes.use_secret_as_env(task, name, keys, optional=optional)
    kubernetes.set_timeout(task, timeout)
    kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
    task.set_caching_options(False)
    if gpu:
        task.set_accelerator_type(opts.gpu_resource).set_accelerator_limit(1)
        for key, value in opts.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for toleration in opts.gpu_tolerations:
            kubernetes.add_toleration(task, **toleration)


def build_pipeline(opts: ClusterOptions | None = None) -> Any:
    """The compliance DAG for a cluster described by ``opts``."""
    opts = opts or ClusterOptions()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Erase a deletion request's data from a registered diffusion "
        "model, audit the result and register it with lineage.",
    )
    def compliance_pipeline(
        run_id: str,
        request_ids: list = [],  # noqa: B006 -- kfp takes the default from the signature
        dataset_rev: str = "HEAD",
        algorithm: str = "erasediff",
        options: dict = {},  # noqa: B006
        audit_params: dict = {},  # noqa: B006
        settings: dict = {},  # noqa: B006
    ) -> None:
        common = {"run_id": run_id, "settings": settings}
        outcome = record_outcome(**common, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        outcome.set_display_name("record outcome")
        _platform(outcome, opts.timeouts["exit"], False, opts)
        with dsl.ExitHandler(outcome, name="compliance-run"):
            extract = extract_forget_set(**common, dataset_rev=dataset_rev, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            extract.set_display_name("extract forget set")
            _platform(extract, opts.timeouts["extract"], False, opts)
            forget_hash = extract.outputs["forget_set_sha256"]
            revs = {"dataset_rev": extract.outputs["dataset_rev"]}

            erase = unlearn(
                **common,
                **revs,
                forget_set_sha256=forget_hash,
                algorithm=algorithm,
                options=options,
                forget=extract.outputs["forget"],
                retain=extract.outputs["retain"],
            )
            erase.set_display_name("unlearn (GPU)")
            erase.set_memory_limit("32G").set_cpu_limit("8")
            _platform(erase, opts.timeouts["unlearn"], True, opts)
            # A preempted GPU pod is retried; the step resumes from its checkpoints on S3.
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
            check = audit(**lineage, audit_params=audit_params)
            check.set_display_name("audit")
            _platform(check, opts.timeouts["audit"], opts.audit_on_gpu, opts)

            reg = register(**lineage, algorithm=algorithm, audit_record=check.outputs["audit_record"])
            reg.set_display_name("register")
            _platform(reg, opts.timeouts["register"], False, opts)

    return compliance_pipeline


compliance_pipeline = build_pipeline()


def executor_images(pipeline: Any) -> dict[str, str]:
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    return {name: executors[name]["container"]["image"] for name in executors}


@contextlib.contextmanager
def using_image(pipeline: Any, image: str | None) -> Iterator[Any]:
    """Run or compile ``pipeline`` with every step in ``image`` (e.g. ``repo@sha256:...``).

    The components' image is fixed when they are defined; a build knows its digest only later.
    """
    if not image:
        yield pipeline
        return
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    before = executor_images(pipeline)
    for name in before:
        executors[name]["container"]["image"] = image
    try:
        yield pipeline
    finally:
        for name, old in before.items():
            executors[name]["container"]["image"] = old


def compile_pipeline(
    out: str | Path = GOLDEN, image: str | None = None, opts: ClusterOptions | None = None
) -> Path:
    """Write the pipeline's IR YAML (the file a KFP cluster runs)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = compliance_pipeline if opts is None else build_pipeline(opts)
    with using_image(pipeline, image):
        compiler.Compiler().compile(pipeline, str(out))
    return out
