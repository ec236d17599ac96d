"""unlearn: the production model minus the forget set's influence (runs on a GPU when one is given)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def unlearn(
    run_id: str,
    settings: dict,
    dataset_rev: str,
    forget_set_sha256: str,
    algorithm: str,
    options: dict,
    forget: Input[Dataset],
    retain: Input[Dataset],
    model: Output[Model],
) -> NamedTuple("UnlearnOutputs", [("parent_version", str), ("steps", int)]):
    """Unlearn the forget set from ``models:/NAME@production``; checkpoints let a restarted pod resume."""
    from collections import namedtuple

    from unlearn_lib.compliance import StepContext, unlearn_step

    ctx = StepContext.parse(settings, run_id)
    out = unlearn_step(ctx, dataset_rev, forget_set_sha256, algorithm, options, model.path)
    model.metadata.update(
        {
            "algorithm": algorithm,
            "parent_version": out["parent_version"],
            "steps": out["steps"],
            "framework": "diffusers",
        }
    )
    result = namedtuple("UnlearnOutputs", ["parent_version", "steps"])
    return result(out["parent_version"], int(out["steps"]))
