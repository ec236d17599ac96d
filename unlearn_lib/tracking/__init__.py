"""MLflow lineage: one parent run per pipeline run, a nested run per step, registry helpers."""

from .lineage import (
    TAG_PREFIX,
    DVCDatasetSource,
    check_reachable,
    client_for,
    configure,
    log_dataset,
    start_pipeline_run,
    step_run,
)
from .registry import (
    CANDIDATE,
    PRODUCTION,
    alias_version,
    download_version,
    production_version,
    promote,
    register_base_model,
    register_version,
    set_alias,
    versions_for_request,
)

__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "TAG_PREFIX",
    "DVCDatasetSource",
    "alias_version",
    "check_reachable",
    "client_for",
    "configure",
    "download_version",
    "log_dataset",
    "production_version",
    "promote",
    "register_base_model",
    "register_version",
    "set_alias",
    "start_pipeline_run",
    "step_run",
    "versions_for_request",
]
