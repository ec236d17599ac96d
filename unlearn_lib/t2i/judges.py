"""Who says what a generated image shows: the text-to-image audit's judges.

A judge is trained apart from the model it judges and never seen by the unlearning code. Three
kinds, chosen with ``unlearn audit --judge``:

* the **evaluator** (``unlearn_lib.audit.Evaluator``): the digits classifier the class-conditional
  audit uses too; the default for models of the digits' captions;
* ``torchscript:PATH``: any TorchScript image classifier. It receives images in [-1, 1], ``[N, C,
  H, W]``, resized to its input size (``size``) and greyscale repeated to three channels when it
  wants three, and returns logits over the model's classes, in the order of the model's class
  prompts. A scripted ``features`` method, if present, gives the features for FID/KID; else the
  logits are the features;
* ``clip:FOLDER``: a local CLIP (a ``transformers`` ``CLIPModel`` folder with its tokenizer, loaded
  from disk only): zero-shot classification over the model's class prompts, its image embeddings
  as the features, and the CLIP score (100 x cosine between an image and its prompt, Hessel et
  al. 2021, as ``torchmetrics`` computes it) for the retained prompts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ..data.tensors import to_model_space
from ..errors import ConfigError, ModelError

# CLIP's preprocessing constants (OpenAI CLIP, the CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Judge(Protocol):
    name: str

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 or floats in [-1, 1], ``[N, C, H, W]`` -> ``[N, classes]``."""
        ...

    def features(self, images: torch.Tensor) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...


def _floats(images: torch.Tensor) -> torch.Tensor:
    return to_model_space(images) if images.dtype == torch.uint8 else images.float()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(p.read_bytes())
    return h.hexdigest()


class TorchScriptJudge:
    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, channels: int | None = None, device: str = "cpu"
    ) -> None:
        self.path = Path(path)
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelError(f"cannot load the TorchScript classifier {path}: {str(err).splitlines()[0]}") from None
        self.size, self.channels, self.device = size, channels, device
        self.name = f"torchscript:{self.path.name}"

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = _floats(images)
        if self.channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        return torch.cat(
            [self.net(self._prep(images[i : i + batch_size])).float().cpu() for i in range(0, len(images), batch_size)]
        )

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        if not hasattr(self.net, "features"):
            return self.logits(images, batch_size)
        return torch.cat(
            [
                self.net.features(self._prep(images[i : i + batch_size])).float().flatten(1).cpu()
                for i in range(0, len(images), batch_size)
            ]
        )

    def fingerprint(self) -> str:
        return _sha256(self.path)


class ClipJudge:
    def __init__(self, folder: str | os.PathLike[str], prompts: list[str], device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPTokenizer

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise ModelError(f"{folder} is not a CLIP folder (config.json is missing)")
        try:
            self.model = CLIPModel.from_pretrained(self.folder, local_files_only=True).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the CLIP model in {folder}: {str(err).splitlines()[0]}") from None
        if not prompts:
            raise ConfigError("a CLIP judge classifies by the model's class prompts, and the model has none")
        self.device, self.prompts = device, list(prompts)
        self.size = int(self.model.config.vision_config.image_size)
        self.name = f"clip:{self.folder.name}"
        self.text = self.text_embeds(self.prompts)

    @staticmethod
    def _tensor(out: object) -> torch.Tensor:
        # transformers returns the projected embedding, or an output object holding it.
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return F.normalize(self._tensor(self.model.get_text_features(**ids)).float(), dim=-1).cpu()

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(images), batch_size):
            x = (_floats(images[i : i + batch_size]) + 1) / 2
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
            x = ((x - mean) / std).to(self.device)
            out.append(F.normalize(self._tensor(self.model.get_image_features(pixel_values=x)).float(), dim=-1).cpu())
        return torch.cat(out)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp().item() * self.features(images) @ self.text.T

    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> float:
        """Mean of 100 * max(cos(image, its prompt), 0)."""
        cos = (self.features(images) * self.text_embeds(prompts)).sum(-1)
        return float((100 * cos.clamp(min=0)).mean())

    def fingerprint(self) -> str:
        return _sha256(self.folder)


def load_judge(spec: str, class_prompts: list[str], device: str = "cpu") -> Judge:
    """``torchscript:PATH[@SIZE]``, ``clip:FOLDER`` or an evaluator folder."""
    if spec.startswith("torchscript:"):
        path, _, size = spec.removeprefix("torchscript:").partition("@")
        return TorchScriptJudge(path, size=int(size) if size else None, device=device)
    if spec.startswith("clip:"):
        return ClipJudge(spec.removeprefix("clip:"), class_prompts, device=device)
    from ..audit.evaluator import Evaluator

    if not (Path(spec) / "evaluator.json").is_file():
        raise ConfigError(f"judge {spec!r}: expected torchscript:PATH[@SIZE], clip:FOLDER or an evaluator folder")
    return Evaluator.load(spec, device=device)
