"""extract_forget_set: which records a deletion removes; the purged dataset version."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract_forget_set(
    run_id: str,
    settings: dict,
    dataset_rev: str,
    kfp_run_id: str,
    forget: Output[Dataset],
    retain: Output[Dataset],
    holdout: Output[Dataset],
    purged: Output[Dataset],
) -> NamedTuple(
    "ExtractOutputs", [("dataset_rev", str), ("purged_rev", str), ("forget_set_sha256", str), ("scope", str)]
):
    """Select the forget, retain and hold-out records at ``dataset_rev`` and commit the purged version."""
    from collections import namedtuple

    from unlearn_lib.compliance import StepContext, extract_step

    ctx = StepContext.parse(settings, run_id)
    out = extract_step(ctx, dataset_rev, forget.path, retain.path, holdout.path, purged.path, kfp_run_id)
    forget.metadata.update(
        {
            "records": out["forget"],
            "forget_set_sha256": out["forget_set_sha256"],
            "scope": out["scope"],
            "dataset_rev": out["dataset_rev"],
        }
    )
    purged.metadata.update({"dataset_rev": out["purged_rev"]})
    result = namedtuple("ExtractOutputs", ["dataset_rev", "purged_rev", "forget_set_sha256", "scope"])
    return result(out["dataset_rev"], out["purged_rev"], out["forget_set_sha256"], out["scope"])
