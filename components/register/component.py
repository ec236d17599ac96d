"""register: a new model version with lineage; `production` moves only when the audit passed."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    run_id: str,
    settings: dict,
    dataset_rev: str,
    purged_rev: str,
    forget_set_sha256: str,
    parent_version: str,
    algorithm: str,
    model: Input[Model],
    audit_record: Input[Artifact],
) -> NamedTuple("RegisterOutputs", [("version", str), ("alias", str)]):
    """Register the model; alias `production` on PASS (the previous version stays), else `candidate`."""
    from collections import namedtuple

    from unlearn_lib.compliance import StepContext, register_step

    ctx = StepContext.parse(settings, run_id)
    out = register_step(
        ctx, model.path, audit_record.path, parent_version, dataset_rev, purged_rev, forget_set_sha256, algorithm
    )
    result = namedtuple("RegisterOutputs", ["version", "alias"])
    return result(out["version"], out["alias"])
