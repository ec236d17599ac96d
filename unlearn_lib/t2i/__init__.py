"""Text-to-image latent diffusion models (the Stable Diffusion layout): model, training, erasure, audit."""

from ..utils import lazy_exports

# Imported on first use (lazy_exports says why).
_EXPORTS = {
    "T2IMeta": "model",
    "TextToImageModel": "model",
    "is_text_to_image_folder": "model",
    "T2I_PRESETS": "training",
    "T2IPreset": "training",
    "T2ITrainConfig": "training",
    "ensure_t2i_model": "training",
    "get_t2i_preset": "training",
    "train_t2i": "training",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
