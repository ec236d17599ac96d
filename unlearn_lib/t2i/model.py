"""A text-to-image latent diffusion model in the Stable Diffusion layout.

On disk it is a ``StableDiffusionPipeline`` folder (``model_index.json``, ``vae/``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), so plain diffusers loads and prompts it
(``DiffusionPipeline.from_pretrained(folder)``), plus ``unlearn_model.json`` with what the
component configs do not say: the preset, the image shape, the caption template, lineage.
A Stable Diffusion folder made elsewhere (no ``unlearn_model.json``) loads too; its metadata
is inferred from the configs. Nothing is ever fetched from a hub: loading is local-only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError
from ..utils import write_json

META_NAME = "unlearn_model.json"
META_SCHEMA_VERSION = 1
FAMILY = "text-to-image"
_COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel


def is_text_to_image_folder(path: str | os.PathLike[str]) -> bool:
    """True for a Stable-Diffusion-layout folder (ours or any other)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        spec = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(isinstance(spec.get(c), list) and spec[c][0] for c in ("vae", "text_encoder", "tokenizer", "unet"))


@dataclass
class T2IMeta:
    preset: str
    image_shape: tuple[int, int, int]
    # For datasets whose records carry a class label as well as a caption (digits): each class's
    # name and its most common caption, the prompt class-level evaluations use. Empty otherwise.
    class_names: list[str] = field(default_factory=list)
    class_prompts: list[str] = field(default_factory=list)
    guidance_scale: float = 3.0
    cond_drop_prob: float = 0.1
    training: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    family: str = FAMILY
    schema_version: int = META_SCHEMA_VERSION

    def prompt_for(self, label: int) -> str:
        if not 0 <= label < len(self.class_prompts):
            raise ConfigError(f"class {label} has no prompt in this model (it knows {len(self.class_prompts)} classes)")
        return self.class_prompts[label]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> T2IMeta:
        if d.get("schema_version") != META_SCHEMA_VERSION or d.get("family") != FAMILY:
            raise ModelError(f"{META_NAME}: not a {FAMILY} model description (schema {d.get('schema_version')!r})")
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["image_shape"] = tuple(kwargs["image_shape"])
        return cls(**kwargs)


@dataclass
class TextToImageModel:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: Any  # transformers.CLIPTextModel (imported lazily: transformers is slow to import)
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler: DDPMScheduler
    meta: T2IMeta
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    # ---- the interface unlearning and audits use ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = self.meta.image_shape
        f = self.vae_scale_factor
        return (int(self.unet.config.in_channels), h // f, w // f)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def num_parameters(self, part: str = "unet") -> int:
        return sum(p.numel() for p in getattr(self, part).parameters())

    def to(self, device: torch.device | str) -> TextToImageModel:
        for part in (self.vae, self.unet, self.text_encoder):
            part.to(device)
        self._prompt_cache.clear()
        return self

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def embed_tokens(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The text encoder's last hidden state; ``inputs_embeds`` replaces the token embeddings
        (adversarial prompt search optimizes those)."""
        te = self.text_encoder
        if inputs_embeds is None:
            return te(input_ids.to(self.device)).last_hidden_state
        # CLIPTextModel.forward takes token ids only (transformers 5): run its parts on the
        # embeddings, as its forward does (position embeddings, causal encoder, final norm).
        from transformers.masking_utils import create_causal_mask

        tm = getattr(te, "text_model", te)
        hidden = tm.embeddings(inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return tm.final_layer_norm(out)

    def encode_prompts(self, prompts: Sequence[str], grad: bool = False) -> torch.Tensor:
        """``[N, L, D]`` conditioning for ``prompts``; cached per prompt unless ``grad``."""
        prompts = list(prompts)
        if grad:
            return self.embed_tokens(self.tokenize(prompts))
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            with torch.no_grad():
                emb = self.embed_tokens(self.tokenize(missing))
            for p, e in zip(missing, emb, strict=True):
                self._prompt_cache[p] = e.detach()
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def clear_prompt_cache(self) -> None:
        self._prompt_cache.clear()

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (the posterior mean: deterministic)."""
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(self.device, dtype=self.vae.dtype)
            out.append(self.vae.encode(xb).latent_dist.mean.float() * self.scaling_factor)
        return torch.cat(out) if out else torch.empty((0, *self.latent_shape))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (CPU float)."""
        out = []
        for start in range(0, z.shape[0], batch_size):
            zb = z[start : start + batch_size].to(self.device, dtype=self.vae.dtype) / self.scaling_factor
            out.append(self.vae.decode(zb).sample.float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.empty((0, *self.meta.image_shape))

    def eps(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, unet: torch.nn.Module | None = None
    ) -> torch.Tensor:
        return (unet or self.unet)(z_t, t, encoder_hidden_states=cond).sample.float()

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str] | None = None,
        steps: int = 25,
        guidance_scale: float | None = None,
        seed: int = 0,
        batch_size: int = 512,
        progress: bool = False,
        cond: torch.Tensor | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """Images in [-1, 1], ``[N, C, H, W]`` CPU float, with DDIM and classifier-free guidance
        against the empty prompt (as Stable Diffusion does). ``cond`` replaces the prompts'
        encodings (an optimized prompt embedding). The initial noise is drawn once from ``seed``."""
        if cond is None:
            if not prompts:
                raise ConfigError("sampling a text-to-image model needs at least one prompt")
            cond = self.encode_prompts(prompts)
        if steps < 1:
            raise ConfigError(f"sampling steps must be >= 1, got {steps}")
        n = cond.shape[0]
        w = self.meta.guidance_scale if guidance_scale is None else float(guidance_scale)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((n, *self.latent_shape), generator=gen)
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(steps)
        uncond = self.encode_prompts([""])
        self.unet.eval()
        device = self.device
        latents = torch.empty((n, *self.latent_shape))
        bar = tqdm(total=-(-n // batch_size) * steps, desc="sample", disable=not progress, mininterval=1.0)
        for start in range(0, n, batch_size):
            z = noise[start : start + batch_size].to(device)
            c = cond[start : start + batch_size].to(device)
            u = uncond.expand(c.shape[0], -1, -1)
            for t in sched.timesteps:
                tt = torch.full((z.shape[0],), int(t), device=device, dtype=torch.long)
                if w != 1.0:
                    e = self.eps(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([c, u]))
                    e_c, e_u = e.chunk(2)
                    e = e_u + w * (e_c - e_u)
                else:
                    e = self.eps(z, tt, c)
                z = sched.step(e, t, z, eta=0.0).prev_sample
                bar.update(1)
            latents[start : start + z.shape[0]] = z.float().cpu()
        bar.close()
        return latents if return_latents else self.decode(latents)

    def clone(self) -> TextToImageModel:
        """A copy whose UNet can be trained while this one stays frozen (VAE and text encoder shared:
        no algorithm here updates them)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(self.unet.config)
        unet.load_state_dict(self.unet.state_dict())
        unet.to(self.device)
        meta = T2IMeta.from_dict(json.loads(json.dumps(self.meta.to_dict())))
        return TextToImageModel(
            vae=self.vae,
            unet=unet,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=DDPMScheduler.from_config(self.scheduler.config),
            meta=meta,
        )

    # ---- on disk -------------------------------------------------------------------------------
    def pipeline(self) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the pipeline folder and metadata into ``path`` (an existing, empty staging folder)."""
        path = Path(path)
        device = self.device
        if device.type != "cpu":
            self.to("cpu")
        try:
            self.pipeline().save_pretrained(path, safe_serialization=True)
        finally:
            if device.type != "cpu":
                self.to(device)
        write_json(path / META_NAME, self.meta.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> TextToImageModel:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        # A per-load progress bar on stderr: noise in logs and in one-line errors.
        hf_logging.disable_progress_bar()
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"model folder {path} does not exist")
        if not is_text_to_image_folder(path):
            raise ModelError(
                f"{path} is not a text-to-image model folder: model_index.json naming vae, unet, "
                "text_encoder and tokenizer is missing"
            )
        for part in _COMPONENTS:
            if not (path / part).is_dir():
                raise ModelError(f"{path} is not a complete text-to-image model folder: {part}/ is missing")
        try:
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
            meta_path = path / META_NAME
            if meta_path.is_file():
                meta = T2IMeta.from_dict(json.loads(meta_path.read_text()))
            else:
                size = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
                meta = T2IMeta(
                    preset="external", image_shape=(int(vae.config.in_channels), size, size), guidance_scale=7.5
                )
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ModelError(f"cannot load text-to-image model from {path}: {str(err).splitlines()[0]}") from None
        for part in (vae, unet, text_encoder):
            part.requires_grad_(False)
            part.eval()
            part.to(device)
        return cls(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, meta=meta)
