"""A registered model version as a servable MLflow Model (``python_function`` flavor).

The model folder (diffusers ``DDPMPipeline`` folder + ``unlearn_model.json``) travels inside the
MLflow Model unchanged, as the pyfunc artifact ``unlearn_model``: the registry still holds the
exact files the audit judged, and ``download_version`` hands them back as a plain folder.

Request: one row per generation request (``dataframe_records``/``dataframe_split`` when served)

==============  ==================  =====================================================================
column          type                meaning
==============  ==================  =====================================================================
``prompt``      string, optional    class-conditional models: a class index (``"3"``), a class name, or
                                    a caption naming one class (``"a handwritten digit three"``);
                                    text-to-image models: the text to draw (any words their
                                    tokenizer knows; required unless ``label`` is given);
                                    unconditional models ignore it
``label``       long, optional      class index; must agree with ``prompt`` when both are given
                                    (text-to-image: stands for the class's prompt, instead of one)
``num_images``  long                images to generate for this row (1 to ``max_images`` in total)
``steps``       long                DDIM inference steps (1 to the scheduler's training timesteps)
``seed``        long, optional      noise seed (>= 0); absent: a fresh one, returned in the output
==============  ==================  =====================================================================

Response: a DataFrame with one row per image (``{"predictions": [{...}, ...]}`` when served):
``row`` (index of the request row), ``index`` (image number within that row), ``label`` and
``class_name`` (null for unconditional models), ``seed`` (the row's seed: the same request and
seed give the same images), ``width``, ``height`` and ``image``: a base64-encoded PNG at the
model's native resolution (greyscale ``L`` or ``RGB``).

A request the model cannot honour (unknown class, ``num_images`` < 1, too many steps) raises
``MlflowException`` with ``INVALID_PARAMETER_VALUE``: the scoring server answers 400 with one line.

Text-to-image models (a ``StableDiffusionPipeline`` folder) are served the same way, with the
project's sampler (DDIM, classifier-free guidance against the empty prompt at the model's scale).

Serving assumption: the model is logged as code (``pyfunc_entry.py``, which imports
:class:`DiffusionPyfunc` from this module), so the serving environment must have this project
(``unlearn-lib``) installed at the version pinned in ``requirements.txt``: serve with
``mlflow models serve -m models:/NAME@production --env-manager local`` from the project's
environment or its container image. The package is not on PyPI, so ``--env-manager
virtualenv/uv/conda`` works only with a package index that hosts it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import secrets
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

ARTIFACT_KEY = "unlearn_model"
# A serving process generates on CPU by default: a bound on one request keeps one caller from
# holding the server for hours. Override per deployment with model_config={"max_images": N}.
DEFAULT_MAX_IMAGES = 256
MAX_PROMPT_CHARS = 1000
# Distributions the inference path imports directly; their versions are pinned at log time.
# unlearn-lib's own metadata brings the rest (its code is what loads the model).
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "unlearn-lib",
    "torch",
    "diffusers",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
    "pandas",
    "transformers",
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

INPUT_SCHEMA = Schema(
    [
        ColSpec("string", "prompt", required=False),
        ColSpec("long", "label", required=False),
        ColSpec("long", "num_images"),
        ColSpec("long", "steps"),
        ColSpec("long", "seed", required=False),
    ]
)
OUTPUT_SCHEMA = Schema(
    [
        ColSpec("long", "row"),
        ColSpec("long", "index"),
        ColSpec("long", "label", required=False),
        ColSpec("string", "class_name", required=False),
        ColSpec("long", "seed"),
        ColSpec("long", "width"),
        ColSpec("long", "height"),
        ColSpec("string", "image"),
    ]
)
SIGNATURE = ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA)


def _bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _optional_int(row: pd.Series, column: str) -> int | None:
    """An integer cell, None when the column is absent or null (a mixed request leaves NaN there)."""
    import numpy as np

    value = row.get(column)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    # A column with nulls arrives as floats: 3.0 is 3, 3.5 is a mistake.
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise _bad_request(f"{column} must be an integer, got {value!r}")


def _class_aliases(class_names: list[str]) -> list[tuple[str, int]]:
    """Words that name each class in a prompt: its name, its index, its number word for digit names."""
    aliases: list[tuple[str, int]] = []
    for i, name in enumerate(class_names):
        words = {name.strip().casefold(), str(i)}
        if name.strip().isdigit() and int(name) < len(_NUMBER_WORDS):
            # The digits data set's captions spell classes out ("a handwritten digit three").
            words.add(_NUMBER_WORDS[int(name)])
        aliases.extend((w, i) for w in words if w)
    return aliases


def resolve_prompt(prompt: str, class_names: list[str]) -> int:
    """The class a prompt names: exactly, or as the only class word in a caption."""
    text = prompt.strip().casefold()
    aliases = _class_aliases(class_names)
    exact = {i for w, i in aliases if w == text}
    if len(exact) == 1:
        return exact.pop()
    found = {i for w, i in aliases if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text)}
    known = ", ".join(class_names)
    if not found:
        raise _bad_request(f"prompt {prompt!r} names none of the model's classes ({known})")
    if len(found) > 1:
        named = ", ".join(class_names[i] for i in sorted(found))
        raise _bad_request(f"prompt {prompt!r} names more than one class ({named}); name one")
    return found.pop()


def images_to_png_b64(images: Any) -> list[str]:
    """``[N, C, H, W]`` floats in [-1, 1] as base64 PNG strings (L for one channel, else RGB)."""
    import numpy as np
    from PIL import Image

    # Same mapping to uint8 as the sample grids (viz), without importing matplotlib to serve.
    arr = np.clip(np.rint((images.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    out = []
    for img in arr:
        pil = Image.fromarray(img[0], mode="L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


class DiffusionPyfunc(mlflow.pyfunc.PythonModel):
    """Generates images from the model folder in ``context.artifacts`` with the project's sampler."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ..utils import pick_device

        config = context.model_config or {}
        self.max_images = int(config.get("max_images", DEFAULT_MAX_IMAGES))
        folder = context.artifacts[ARTIFACT_KEY]
        # "auto": CUDA when the serving machine has it, else CPU.
        device = pick_device(config.get("device"))
        self.t2i: Any = None
        self.model: Any = None
        if is_text_to_image(folder):
            from ..t2i import TextToImageModel

            self.t2i = TextToImageModel.load(folder, device=device)
        else:
            from ..models import DiffusionModel

            self.model = DiffusionModel.load(folder, device=device)

    def _row_request(self, row: pd.Series) -> tuple[int | None, str | None, int, int, int | None]:
        label = _optional_int(row, "label")
        prompt = row.get("prompt")
        prompt = None if prompt is None or (not isinstance(prompt, str) and pd.isna(prompt)) else str(prompt)
        if self.t2i is not None:
            label, prompt = self._t2i_prompt(label, prompt)
            scheduler = self.t2i.scheduler
        else:
            label = self._class_label(label, prompt)
            prompt = None
            scheduler = self.model.scheduler
        num_images = _optional_int(row, "num_images")
        if num_images is None or num_images < 1:
            raise _bad_request(f"num_images must be >= 1, got {num_images}")
        steps = _optional_int(row, "steps")
        most = int(scheduler.config.num_train_timesteps)
        if steps is None or not 1 <= steps <= most:
            raise _bad_request(f"steps must be between 1 and {most}, got {steps}")
        seed = _optional_int(row, "seed")
        if seed is not None and not 0 <= seed < 2**63:
            raise _bad_request(f"seed must be between 0 and 2**63-1, got {seed}")
        return label, prompt, num_images, steps, seed

    def _class_label(self, label: int | None, prompt: str | None) -> int | None:
        meta = self.model.meta
        if meta.conditional:
            if label is not None and not 0 <= label < meta.num_classes:
                raise _bad_request(f"label {label} is out of range: the model has classes 0-{meta.num_classes - 1}")
            if prompt is not None and prompt.strip():
                named = resolve_prompt(prompt, meta.class_names)
                if label is not None and label != named:
                    raise _bad_request(f"label {label} and prompt {prompt!r} (class {named}) disagree")
                label = named
            if label is None:
                raise _bad_request("a class-conditional model needs a label or a prompt naming a class")
        elif label is not None:
            raise _bad_request("this model is unconditional: it takes no label")
        return label

    def _t2i_prompt(self, label: int | None, prompt: str | None) -> tuple[int | None, str]:
        meta = self.t2i.meta
        text = (prompt or "").strip()
        if label is not None:
            if not 0 <= label < len(meta.class_prompts):
                raise _bad_request(
                    f"label {label} names no class: this model has {len(meta.class_prompts)} class prompts"
                )
            if text and text.casefold() != meta.class_prompts[label].casefold():
                raise _bad_request(f"label {label} stands for the prompt {meta.class_prompts[label]!r}; give one")
            return label, meta.class_prompts[label]
        if not text:
            raise _bad_request("a text-to-image model needs a prompt (or a label naming one of its class prompts)")
        if len(text) > MAX_PROMPT_CHARS:
            raise _bad_request(f"the prompt is {len(text)} characters long; at most {MAX_PROMPT_CHARS}")
        return None, text

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from ..errors import UnlearnError
        from ..models import sample

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if model_input.empty:
            raise _bad_request("the request has no rows")
        # Validate every row before generating anything: a bad last row must not cost minutes.
        requests = [self._row_request(row) for _, row in model_input.iterrows()]
        total = sum(n for _, _, n, _, _ in requests)
        if total > self.max_images:
            raise _bad_request(f"the request asks for {total} images; this model serves at most {self.max_images}")
        meta = self.t2i.meta if self.t2i is not None else self.model.meta
        records: list[dict[str, Any]] = []
        for row, (label, prompt, n, steps, seed) in enumerate(requests):
            seed = secrets.randbelow(2**31) if seed is None else seed
            try:
                if self.t2i is not None:
                    images = self.t2i.sample([prompt] * n, steps=steps, seed=seed)
                else:
                    labels = None if label is None else [label] * n
                    images = sample(self.model, labels, num_samples=n, steps=steps, seed=seed)
            except UnlearnError as err:
                raise _bad_request(str(err)) from None
            _, height, width = meta.image_shape
            for index, png in enumerate(images_to_png_b64(images)):
                records.append(
                    {
                        "row": row,
                        "index": index,
                        "label": label,
                        "class_name": None if label is None else meta.class_names[label],
                        "seed": seed,
                        "width": width,
                        "height": height,
                        "image": png,
                    }
                )
        return pd.DataFrame.from_records(records, columns=[c.name for c in OUTPUT_SCHEMA.inputs])


def _pin(dist: str) -> str:
    version = metadata.version(dist)
    # A local build label (torch "+cpu", "+cu124") is not on PyPI; the serving machine picks its build.
    return f"{dist}=={version.split('+', 1)[0]}"


def pip_requirements() -> list[str]:
    """The inference path's distributions at the versions installed here."""
    return [_pin(d) for d in RUNTIME_DISTRIBUTIONS]


def is_text_to_image(model_dir: str | os.PathLike[str]) -> bool:
    from ..t2i.model import is_text_to_image_folder

    return is_text_to_image_folder(model_dir)


def _read_meta(model_dir: Path) -> dict[str, Any]:
    """The folder's description, with ``family`` and ``num_classes`` for either family."""
    from ..errors import ModelError
    from ..models.diffusion import META_NAME, ModelMeta

    t2i = is_text_to_image(model_dir)
    needed = ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json", META_NAME]
    if t2i:
        needed += ["vae/config.json", "text_encoder/config.json"]
    for name in needed:
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir} is not an unlearn model folder: {name} is missing")
    raw = json.loads((model_dir / META_NAME).read_text())
    if t2i:
        from ..t2i.model import T2IMeta

        meta = T2IMeta.from_dict(raw).to_dict()
        return meta | {"num_classes": len(meta["class_prompts"])}
    return ModelMeta.from_dict(raw).to_dict() | {"family": "class-conditional"}


def log_model_folder(
    model_dir: str | os.PathLike[str],
    artifact_path: str = "model",
    *,
    input_example: bool = True,
    model_config: dict[str, Any] | None = None,
    extra_pip_requirements: list[str] | None = None,
) -> ModelInfo:
    """Log ``model_dir`` to the active run as an MLflow Model named ``artifact_path``.

    Requirements are pinned from this environment, never inferred: inference would import and
    scan the model in a subprocess (slow) and may reach for the network. ``input_example`` adds a
    one-image, one-step request that MLflow runs once at log time (a serving smoke test, about a
    second for the digits preset) and stores as ``serving_input_example.json``.
    """
    model_dir = Path(model_dir)
    meta = _read_meta(model_dir)
    example = None
    if input_example:
        first = {"label": 0} if meta["num_classes"] else {}
        if meta["family"] == "text-to-image" and not meta["num_classes"]:
            first = {"prompt": "a picture"}
        example = pd.DataFrame([{**first, "num_images": 1, "steps": 1, "seed": 0}])
    return mlflow.pyfunc.log_model(
        name=artifact_path,
        # A file, not a pickled instance: loading runs this project's code as installed, not bytes
        # that cloudpickle wrote at log time (and MLflow warns about pickled models).
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=SIGNATURE,
        input_example=example,
        pip_requirements=pip_requirements() + list(extra_pip_requirements or []),
        model_config={"device": "auto", "max_images": DEFAULT_MAX_IMAGES, **(model_config or {})},
        metadata={
            "unlearn_model": {
                k: meta[k]
                for k in ("family", "preset", "image_shape", "num_classes", "class_names", "guidance_scale")
                + (("class_prompts",) if meta["family"] == "text-to-image" else ())
            },
            "output_image_format": "base64 PNG",
        },
    )


def model_folder_in(mlflow_model_dir: str | os.PathLike[str]) -> Path | None:
    """The unlearn model folder inside a downloaded MLflow Model, None if it is not one of ours."""
    from mlflow.models import Model

    root = Path(mlflow_model_dir)
    if not (root / "MLmodel").is_file():
        return None
    pyfunc_conf = Model.load(str(root)).flavors.get("python_function", {})
    entry = (pyfunc_conf.get("artifacts") or {}).get(ARTIFACT_KEY)
    return root / entry["path"] if entry else None
