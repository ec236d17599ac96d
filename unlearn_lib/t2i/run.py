"""``unlearn erase`` for text-to-image models: build the task, run an algorithm, save the pipeline folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.manifest import Dataset, load_dataset
from ..data.selection import ForgetTargets, select
from ..data.tensors import TensorSet, to_model_space, to_uint8
from ..errors import ConfigError, ModelError, UnlearnError
from ..measures.distances import flat01, neighbourhood_distance
from ..models import accel
from ..utils import atomic_output_dir, write_json
from ..viz import grid_image, save_loss_curve
from .erase import RECORDS_NEEDED, T2IResult, T2ITask, T2IUnlearner, make_t2i_unlearner
from .model import TextToImageModel

UNLEARNING_JSON = "unlearning.json"


def t2i_digest(model_dir: str | os.PathLike[str]) -> str:
    """Identity of a text-to-image model: its UNet weights (the only part unlearning moves)."""
    from ..models.digest import model_digest

    if not (Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise ModelError(f"{model_dir}: unet/diffusion_pytorch_model.safetensors is missing")
    return model_digest(model_dir)


def near_records(images: torch.Tensor, task: T2ITask, k: int = 5) -> list[bool] | None:
    """Which images must not be shown: closer to a deleted record than its k nearest other
    training images are on average (the extraction criterion at alpha 1). Pictures of an
    erasure never show the data it erased."""
    if task.forget_records is None or task.retain_records is None or len(task.forget_records) == 0:
        return None
    forget = task.forget_records.distinct()
    nb = neighbourhood_distance(forget, task.retain_records, k)
    d = torch.cdist(flat01(to_uint8(images)), flat01(forget.images))
    return (d < nb[None, :]).any(1).tolist()


def _mean_latent(latents: torch.Tensor) -> torch.Tensor:
    return latents.flatten(1).mean(0)


def nearest_captions(
    forget_captions: Sequence[str],
    forget_latents: torch.Tensor,
    retain_captions: Sequence[str],
    retain_latents: torch.Tensor,
) -> dict[str, str]:
    """Each forget caption's anchor: the retained caption whose images' mean latent is nearest.

    The text-to-image form of our class remap: the erased caption comes to draw the most
    similar thing the model keeps, which disturbs the rest of the model least.
    """
    by_caption: dict[str, list[int]] = {}
    for i, c in enumerate(retain_captions):
        by_caption.setdefault(c, []).append(i)
    centres = {c: _mean_latent(retain_latents[idx]) for c, idx in by_caption.items()}
    out = {}
    for fc in sorted(set(forget_captions)):
        idx = [i for i, c in enumerate(forget_captions) if c == fc]
        m = _mean_latent(forget_latents[idx])
        out[fc] = min(centres, key=lambda c: (float((centres[c] - m).norm()), c))
    return out


def _generate(
    model: TextToImageModel, prompts: list[str], per_prompt: int, seed: int
) -> tuple[torch.Tensor, list[str]]:
    expanded = [p for p in prompts for _ in range(per_prompt)]
    return model.sample(expanded, seed=seed, return_latents=True), expanded


def check_request(targets: ForgetTargets | None, forget_prompts: Sequence[str], has_dataset: bool) -> bool:
    """Refuse a request that names both records and prompts, neither, or records without their
    dataset; True when it names records."""
    has_targets = targets is not None and not targets.is_empty()
    if has_targets and forget_prompts:
        raise ConfigError(
            "give either records to forget (--forget-caption/-records/-labels) or --forget-prompt, not both"
        )
    if not has_targets and not forget_prompts:
        raise ConfigError(
            "nothing to forget: name records (--forget-caption, --forget-records, ...) or --forget-prompt"
        )
    if has_targets and not has_dataset:
        raise ConfigError("erasing records by caption needs the dataset the model was trained on (--dataset)")
    return has_targets


def build_task(
    base: TextToImageModel,
    dataset: Dataset | None,
    targets: ForgetTargets | None,
    forget_prompts: Sequence[str] = (),
    anchor_prompts: Sequence[str] = (),
    retain_prompts: Sequence[str] = (),
    generate_per_prompt: int = 64,
    seed: int = 0,
    strict: bool = True,
) -> tuple[T2ITask, dict]:
    """The task and a summary of what it selected (for ``unlearning.json``)."""
    forget_prompts, anchor_prompts, retain_prompts = list(forget_prompts), list(anchor_prompts), list(retain_prompts)
    has_targets = check_request(targets, forget_prompts, dataset is not None)
    if has_targets and dataset is not None:  # check_request refused records without a dataset
        sel = select(dataset, targets, strict=strict)
        missing = [r.record_id for r in sel.forget + sel.retain if not r.caption]
        if missing:
            raise ConfigError(f"record {missing[0]} has no caption: a text-to-image model is conditioned on captions")
        forget = TensorSet.from_records(dataset, sel.forget)
        retain = TensorSet.from_records(dataset, sel.retain)
        f_lat = base.encode_images(to_model_space(forget.images))
        r_lat = base.encode_images(to_model_space(retain.images))
        f_caps = [r.caption or "" for r in sel.forget]
        r_caps = [r.caption or "" for r in sel.retain]
        if anchor_prompts:
            anchors = [anchor_prompts[i % len(anchor_prompts)] for i in range(len(f_caps))]
            mapping = {c: anchors[f_caps.index(c)] for c in sorted(set(f_caps))}
        else:
            mapping = nearest_captions(f_caps, f_lat, r_caps, r_lat)
            anchors = [mapping[c] for c in f_caps]
        concepts = sorted(set(f_caps))
        task = T2ITask(
            base=base,
            forget_latents=f_lat,
            forget_prompts=f_caps,
            retain_latents=r_lat,
            retain_prompts=r_caps,
            anchor_prompts=anchors,
            mode="caption",
            concepts=concepts,
            other_prompts=sorted(set(r_caps) - set(concepts)),
            forget_records=forget,
            retain_records=retain,
            dataset=dataset,
            retain_rows=list(sel.retain),
        )
        summary = {**sel.summary(), "mode": "caption", "anchors": mapping}
        return task, summary
    if not retain_prompts and base.meta.class_prompts:
        low = [p.lower() for p in forget_prompts]
        retain_prompts = [p for p in base.meta.class_prompts if p.lower() not in low]
    keep = list(dict.fromkeys([*anchor_prompts, *retain_prompts]))
    if not keep:
        keep = [""]
    f_lat, f_caps = _generate(base, forget_prompts, generate_per_prompt, seed)
    r_lat, r_caps = _generate(base, keep, generate_per_prompt, seed + 1)
    if anchor_prompts:
        per_sample = [anchor_prompts[i % len(anchor_prompts)] for i in range(len(f_caps))]
    else:
        # As for captions: the kept prompt whose generated images lie nearest. The empty prompt
        # (ESD's anchor) only when nothing else is known: unconditional samples still draw the
        # erased concept now and then, so it cannot erase a class that the model draws unprompted.
        mapping = nearest_captions(f_caps, f_lat, r_caps, r_lat)
        per_sample = [mapping[c] for c in f_caps]
    anchors = list(dict.fromkeys(per_sample))
    task = T2ITask(
        base=base,
        forget_latents=f_lat,
        forget_prompts=f_caps,
        retain_latents=r_lat,
        retain_prompts=r_caps,
        anchor_prompts=per_sample,
        mode="prompt",
        concepts=list(forget_prompts),
        other_prompts=[p for p in keep if p],
    )
    summary = {
        "mode": "prompt",
        "scope": "concept",
        "forget_prompts": list(forget_prompts),
        "anchor_prompts": anchors,
        "retain_prompts": keep,
        "generated_per_prompt": generate_per_prompt,
        "forget_set_sha256": hashlib.sha256("\n".join(forget_prompts).encode()).hexdigest(),
    }
    return task, summary


def t2i_unlearner(algorithm: str, overrides: dict[str, Any] | None) -> tuple[T2IUnlearner, int]:
    """The configured unlearner, and how many images per prompt a prompt-only request generates
    (``generate_per_prompt``: an option of the request, not of the algorithm)."""
    options = dict(overrides or {})
    value = options.pop("generate_per_prompt", 64)
    try:
        per_prompt = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"generate_per_prompt must be an integer, got {value!r}") from None
    return make_t2i_unlearner(algorithm, options), per_prompt


def erase_t2i(
    model_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str] | None,
    targets: ForgetTargets | None,
    algorithm: str,
    out: str | os.PathLike[str],
    forget_prompts: Sequence[str] = (),
    anchor_prompts: Sequence[str] = (),
    retain_prompts: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    strict: bool = True,
    device: str = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> tuple[T2IResult, dict]:
    """Unlearn from the text-to-image model at ``model_dir``; write the new pipeline folder at ``out``.

    Options, the model, the dataset and the selection are all checked before any training.
    Checkpoints go to ``checkpoint_dir`` (default ``OUT.checkpoints``): a killed run given the
    same folder and request resumes from the newest one; they are removed when the run ends.
    """
    from ..utils import pick_device

    out = Path(out)
    if out.exists() and not overwrite:
        raise UnlearnError(f"output folder {out} already exists (pass --overwrite to replace it)")
    unlearner, per_prompt = t2i_unlearner(algorithm, overrides)
    # Refused before the model loads: a wrong request costs nothing.
    check_request(targets, forget_prompts, dataset_dir is not None)
    if unlearner.needs_records and (forget_prompts or dataset_dir is None or targets is None or targets.is_empty()):
        raise ConfigError(RECORDS_NEEDED.format(name=algorithm))
    base = TextToImageModel.load(model_dir, device=pick_device(device))
    dataset = load_dataset(dataset_dir) if dataset_dir else None
    if dataset is not None and tuple(dataset.image_shape) != tuple(base.meta.image_shape):
        raise ModelError(
            f"the model generates {'x'.join(map(str, base.meta.image_shape))} images but the dataset holds "
            f"{'x'.join(map(str, dataset.image_shape))}"
        )
    task, summary = build_task(
        base,
        dataset,
        targets,
        forget_prompts,
        anchor_prompts,
        retain_prompts,
        generate_per_prompt=per_prompt,
        seed=unlearner.config.seed,
        strict=strict,
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir else Path(f"{out}.checkpoints")
    result = unlearner.run(task, progress=progress, checkpoint_dir=ckpt)
    parent = t2i_digest(model_dir)
    prior = list(base.meta.lineage.get("deletions", []))
    entry = {
        "algorithm": algorithm,
        "mode": task.mode,
        "concepts": task.concepts,
        "forget_set_sha256": summary["forget_set_sha256"],
        "parent_model_sha256": parent,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result.model.meta.lineage = {
        "parent_model_sha256": parent,
        "algorithm": algorithm,
        "forget_set_sha256": summary["forget_set_sha256"],
        "dataset_digest": dataset.digest() if dataset is not None else None,
        "deletions": prior + [entry],
    }
    record = {
        "schema_version": 1,
        "family": "text-to-image",
        "algorithm": algorithm,
        "config": result.config,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "resumed_from": result.resumed_from,
        "trainable_parameters": result.trainable_parameters,
        "adapter": (
            {"kind": "lora", "rank": result.config["lora_rank"], "path": "lora/pytorch_lora_weights.safetensors"}
            if result.adapter is not None
            else None
        ),
        "unet_parameters": base.num_parameters(),
        "base_model": {"path": str(model_dir), "unet_sha256": parent, "preset": base.meta.preset},
        "dataset": {"path": str(dataset_dir), "digest": dataset.digest()} if dataset is not None else None,
        "selection": summary,
        "history": result.history,
        "created_at": entry["at"],
        "environment": {"unlearn_lib": __version__, "torch": torch.__version__},
    }
    if not accel.is_main_process():  # the other processes of a distributed launch hold the same weights
        accel.wait_for_everyone()
        return result, record
    show = list(dict.fromkeys([*task.concepts[:4], *[p for p in task.other_prompts if p][:4]]))
    with atomic_output_dir(out, overwrite=overwrite) as stage:
        result.model.save(stage)
        if result.adapter is not None:
            # The adapter alone, in diffusers' LoRA format: `pipe.load_lora_weights(OUT / "lora")` on
            # the base pipeline gives the merged model back.
            from diffusers import StableDiffusionPipeline

            StableDiffusionPipeline.save_lora_weights(stage / "lora", unet_lora_layers=result.adapter)
        write_json(stage / UNLEARNING_JSON, record)
        curves = {k: [abs(x) for x in v] for k, v in result.history.items() if v and k != "loss_f_star"}
        if curves:
            save_loss_curve(curves, stage / "unlearning_curves.png", title=f"{algorithm} (text-to-image): losses")
        if show:
            per = 8
            before = base.sample([p for p in show for _ in range(per)], seed=123)
            after = result.model.sample([p for p in show for _ in range(per)], seed=123)
            for name, images in (("samples_before.png", before), ("samples_after.png", after)):
                grid = grid_image(images, nrow=per, scale=4, row_labels=show, redacted=near_records(images, task))
                grid.save(stage / name)
    accel.wait_for_everyone()
    return result, record
