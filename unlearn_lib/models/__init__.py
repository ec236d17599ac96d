"""Diffusion models: presets, the saved format, base training, sampling."""

from ..utils import lazy_exports

# Imported on first use (lazy_exports says why).
_EXPORTS = {
    "DiffusionModel": "diffusion",
    "ModelMeta": "diffusion",
    "build_model": "diffusion",
    "ForwardProcess": "objectives",
    "drop_labels": "objectives",
    "per_sample_denoising_error": "objectives",
    "predict_eps": "objectives",
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
    "class_grid_labels": "sampling",
    "sample": "sampling",
    "TrainConfig": "training",
    "TrainResult": "training",
    "ensure_base_model": "training",
    "train_base": "training",
    "train_denoiser": "training",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "PRESETS",
    "DiffusionModel",
    "ForwardProcess",
    "ModelMeta",
    "Preset",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "class_grid_labels",
    "drop_labels",
    "ensure_base_model",
    "get_preset",
    "per_sample_denoising_error",
    "predict_eps",
    "sample",
    "train_base",
    "train_denoiser",
]
