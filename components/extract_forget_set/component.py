"""extract_forget_set: which records a deletion removes; the purged dataset version."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def extract_forget_set(
    settings_json: str,
    batch_json: str,
    lineage_run_id: str,
    dataset_rev: str,
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

    ctx = StepContext.parse(settings_json, batch_json, lineage_run_id)
    out = extract_step(ctx, dataset_rev, forget.path, retain.path, holdout.path, purged.path)
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
