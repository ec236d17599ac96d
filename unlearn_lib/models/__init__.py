"""Diffusion models: presets, the saved format, base training, sampling."""

from .diffusion import DiffusionModel, ModelMeta, build_model
from .objectives import ForwardProcess, drop_labels, per_sample_denoising_error, predict_eps
from .presets import PRESETS, Preset, get_preset
from .sampling import class_grid_labels, sample
from .training import TrainConfig, TrainResult, ensure_base_model, train_base, train_denoiser

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
