"""A diffusion model as this project ships it: a diffusers UNet, its noise scheduler and metadata.

On disk it is a ``DDPMPipeline`` folder (``model_index.json``, ``unet/``, ``scheduler/``)
so plain diffusers loads it (``UNet2DModel.from_pretrained(path, subfolder="unet")``),
plus ``unlearn_model.json`` with what the scheduler and UNet configs do not say: the
number of classes, the null class used for classifier-free guidance, the preset, lineage.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelError
from ..utils import write_json
from .presets import Preset, get_preset

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

META_NAME = "unlearn_model.json"
META_SCHEMA_VERSION = 1


@dataclass
class ModelMeta:
    preset: str
    image_shape: tuple[int, int, int]
    num_classes: int  # 0 for an unconditional model
    class_names: list[str] = field(default_factory=list)
    guidance_scale: float = 2.0
    cond_drop_prob: float = 0.1
    training: dict[str, Any] = field(default_factory=dict)
    # Empty for a base model. An unlearned one: its parent's digest, the algorithm, the forget-set
    # hash, and ``deletions``: every deletion it has absorbed, oldest first (unlearning.lineage).
    lineage: dict[str, Any] = field(default_factory=dict)
    schema_version: int = META_SCHEMA_VERSION

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_class(self) -> int | None:
        """Index of the learned "no class" embedding used for guidance (``num_classes``)."""
        return self.num_classes if self.conditional else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        if d.get("schema_version") != META_SCHEMA_VERSION:
            raise ModelError(f"{META_NAME}: unknown schema_version {d.get('schema_version')!r}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["image_shape"] = tuple(kwargs["image_shape"])
        return cls(**kwargs)


@dataclass
class DiffusionModel:
    unet: UNet2DModel
    scheduler: DDPMScheduler
    meta: ModelMeta

    @property
    def conditional(self) -> bool:
        return self.meta.conditional

    @property
    def null_class(self) -> int | None:
        return self.meta.null_class

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def to(self, device: torch.device | str) -> DiffusionModel:
        self.unet.to(device)
        return self

    def clone(self) -> DiffusionModel:
        from diffusers import DDPMScheduler, UNet2DModel

        unet = UNet2DModel.from_config(self.unet.config)
        unet.load_state_dict(self.unet.state_dict())
        unet.to(self.device)
        meta = ModelMeta.from_dict(json.loads(json.dumps(self.meta.to_dict())))
        return DiffusionModel(unet=unet, scheduler=DDPMScheduler.from_config(self.scheduler.config), meta=meta)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the diffusers folder and metadata into ``path`` (an existing, empty staging folder)."""
        from diffusers import DDPMPipeline

        path = Path(path)
        unet = self.unet
        was_device = self.device
        if was_device.type != "cpu":
            unet = self.clone().unet.to("cpu")
        DDPMPipeline(unet=unet, scheduler=self.scheduler).save_pretrained(path, safe_serialization=True)
        write_json(path / META_NAME, self.meta.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> DiffusionModel:
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"model folder {path} does not exist")
        meta_path = path / META_NAME
        for needed in (path / "unet" / "config.json", path / "scheduler" / "scheduler_config.json", meta_path):
            if not needed.is_file():
                raise ModelError(f"{path} is not an unlearn model folder: {needed.relative_to(path)} is missing")
        from diffusers import DDPMScheduler, UNet2DModel

        try:
            meta = ModelMeta.from_dict(json.loads(meta_path.read_text()))
            unet = UNet2DModel.from_pretrained(path, subfolder="unet")
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ModelError(f"cannot load model from {path}: {str(err).splitlines()[0]}") from None
        unet.to(device)
        unet.eval()
        return cls(unet=unet, scheduler=scheduler, meta=meta)


def build_model(
    preset: str | Preset,
    num_classes: int,
    class_names: list[str] | None = None,
    guidance_scale: float = 2.0,
    cond_drop_prob: float = 0.1,
    seed: int | None = None,
) -> DiffusionModel:
    """A freshly initialised model; ``num_classes=0`` makes it unconditional.

    With ``seed`` the initial weights are reproducible (and the global RNG is left as it was).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        # One extra embedding row is the null class that classifier-free guidance conditions on.
        unet = UNet2DModel(**p.unet_kwargs(num_classes + 1 if num_classes > 0 else None))
    scheduler = DDPMScheduler(
        num_train_timesteps=p.num_train_timesteps, beta_schedule=p.beta_schedule, prediction_type="epsilon"
    )
    meta = ModelMeta(
        preset=p.name,
        image_shape=(p.channels, p.sample_size, p.sample_size),
        num_classes=num_classes,
        class_names=list(class_names or [str(i) for i in range(num_classes)]),
        guidance_scale=guidance_scale,
        cond_drop_prob=cond_drop_prob if num_classes > 0 else 0.0,
    )
    return DiffusionModel(unet=unet, scheduler=scheduler, meta=meta)
