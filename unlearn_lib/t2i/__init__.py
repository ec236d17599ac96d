"""Text-to-image latent diffusion models (the Stable Diffusion layout): model, training, erasure, audit."""

from .model import T2IMeta, TextToImageModel, is_text_to_image_folder
from .training import T2I_PRESETS, T2IPreset, T2ITrainConfig, ensure_t2i_model, get_t2i_preset, train_t2i

__all__ = [
    "T2I_PRESETS",
    "T2IMeta",
    "T2IPreset",
    "T2ITrainConfig",
    "TextToImageModel",
    "ensure_t2i_model",
    "get_t2i_preset",
    "is_text_to_image_folder",
    "train_t2i",
]
