"""From folders to an unlearned model folder: the library call behind ``unlearn erase``."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.manifest import Dataset, load_dataset
from ..data.selection import (
    SAME_CAPTION_MIN,
    ForgetTargets,
    Selection,
    composition_weights,
    distinct_records,
    select,
)
from ..data.tensors import TensorSet
from ..models.accel import is_main_process, wait_for_everyone
from ..models.diffusion import DiffusionModel
from ..models.digest import model_digest as model_digest  # re-exported: compliance, registry and tests use it here
from ..utils import atomic_output_dir, write_json
from ..viz import save_loss_curve
from .base import UnlearningResult, UnlearningTask, make_unlearner
from .lineage import (
    LINEAGE_KEY,
    PriorExclusion,
    deletion_entry,
    exclude_prior,
    prior_class_mapping,
    prior_deletions,
    record_deletion_labels,
)

UNLEARNING_JSON = "unlearning.json"
UNLEARNING_SCHEMA_VERSION = 1


def task_from_selection(
    dataset: Dataset,
    selection: Selection,
    base: DiffusionModel,
    reference_min: int = 16,
    prior: PriorExclusion | None = None,
) -> UnlearningTask:
    """The task for ``selection``, minus every record an earlier deletion in ``base``'s lineage matched.

    ``prior`` is the result of :func:`exclude_prior` when the caller already applied it.
    """
    if prior is None:
        selection, prior = exclude_prior(selection, base.meta.lineage)
    # The calibration half of the hold-out reference: the audit judges with the other half.
    reference = distinct_records(
        selection.reference(reference_min, part="calibration", same_caption_min=SAME_CAPTION_MIN)
    )
    erasable = selection.erasable_or_refuse()
    erased_labels = set(prior.erased_labels)
    held = [r for r in prior.excluded_train if r.label in erased_labels]
    # An image a retained record still holds stays learned, as in a model retrained without the records.
    retained_images = {r.sha256 for r in selection.retain}
    records = distinct_records(
        [r for r in prior.excluded_train if r.label not in erased_labels and r.sha256 not in retained_images]
    )
    # Erasing an erased class again makes it this deletion's forget class, not an earlier one.
    again = set(selection.forget_labels) if selection.scope == "class" else set()
    # Labels this deletion's own records carry are not held to the parent, which still draws them.
    deleting_now = {r.label for r in selection.forget if r.label is not None}
    return UnlearningTask(
        base=base,
        retain=TensorSet.from_records(dataset, selection.retain),
        # Images the retained data still holds stay learned, as in a model retrained without the records.
        forget=TensorSet.from_records(dataset, erasable),
        reference=TensorSet.from_records(dataset, reference) if reference else None,
        reference_weights=torch.tensor(composition_weights(erasable, reference)) if reference else None,
        scope=selection.scope,
        forget_labels=selection.forget_labels if selection.scope == "class" else [],
        erased_labels=[c for c in prior.erased_labels if c not in again],
        erased_mapping=prior_class_mapping(prior_deletions(base.meta.lineage)),
        erased=TensorSet.from_records(dataset, held) if held else None,
        erased_records=TensorSet.from_records(dataset, records) if records else None,
        erased_record_labels=[
            c for c in record_deletion_labels(prior_deletions(base.meta.lineage)) if c not in deleting_now
        ]
        if base.conditional
        else [],
        prior=prior.summary(),
    )


def erase(
    model_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    targets: ForgetTargets,
    algorithm: str,
    out: str | os.PathLike[str],
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
) -> tuple[UnlearningResult, dict]:
    """Unlearn ``targets`` from the model at ``model_dir``; write the new model folder at ``out``.

    Everything is validated (dataset, selection, algorithm options, output folder) before
    any training starts; the output folder appears only when complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        from ..errors import UnlearnError

        raise UnlearnError(f"output folder {out} already exists (pass --overwrite to replace it)")
    unlearner = make_unlearner(algorithm, overrides)
    base = DiffusionModel.load(model_dir)
    dataset = load_dataset(dataset_dir)
    _check_compatible(base, dataset)
    selection, prior = exclude_prior(select(dataset, targets, strict=strict), base.meta.lineage)
    task = task_from_selection(dataset, selection, base, prior=prior)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(f"{out}.checkpoints")
    result = unlearner.run(task, checkpoint_dir=str(ckpt), progress=progress)
    base_digest = model_digest(model_dir)
    entry = deletion_entry(selection, algorithm, base_digest, result.config.get("resolved_target"))
    result.model.meta.lineage = {
        "parent_model_sha256": base_digest,
        "algorithm": algorithm,
        "forget_set_sha256": selection.forget_set_sha256(),
        "dataset_digest": dataset.digest(),
        LINEAGE_KEY: prior_deletions(base.meta.lineage) + [entry],
    }
    record = {
        "schema_version": UNLEARNING_SCHEMA_VERSION,
        "algorithm": algorithm,
        "config": result.config,
        "steps": result.steps,
        "seed": result.config.get("seed"),
        "seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps_per_second, 3) if result.steps else None,
        "stop": result.stop,
        "resumed_from": result.resumed_from,
        "samples_drawn": result.samples_drawn,
        "base_model": {"path": str(model_dir), "unet_sha256": base_digest, "preset": base.meta.preset},
        "dataset": {"path": str(dataset_dir), "digest": dataset.digest()},
        "selection": selection.summary(),
        "prior_deletions": task.prior,
        "history": result.history,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "unlearn_lib": __version__,
            "torch": torch.__version__,
            "diffusers": importlib.metadata.version("diffusers"),
            "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() and result.config.get("device") != "cpu" else "cpu",
        },
    }
    if is_main_process():  # under a distributed launch every process holds the same weights
        with atomic_output_dir(out, overwrite=overwrite) as stage:
            result.model.save(stage)
            write_json(stage / UNLEARNING_JSON, record)
            curves = {k: v for k, v in result.history.items() if k in ("loss_r", "loss_f", "q") and v}
            if curves:
                save_loss_curve(
                    {k: [abs(x) for x in v] for k, v in curves.items()},
                    stage / "unlearning_curves.png",
                    title=f"{algorithm}: losses",
                )
    wait_for_everyone()
    return result, record


def _check_compatible(model: DiffusionModel, dataset: Dataset) -> None:
    from ..errors import ModelError

    if tuple(model.meta.image_shape) != tuple(dataset.image_shape):
        raise ModelError(
            f"the model generates {'x'.join(map(str, model.meta.image_shape))} images but the dataset holds "
            f"{'x'.join(map(str, dataset.image_shape))}"
        )
    if model.conditional and dataset.num_classes != model.meta.num_classes:
        raise ModelError(f"the model has {model.meta.num_classes} classes, the dataset {dataset.num_classes}")
