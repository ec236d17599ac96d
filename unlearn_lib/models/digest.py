"""Identity of a saved model, shared by the unlearning run (lineage) and the audit (what it measured).

Here, beside the model's save format, rather than in either of those layers: the audit must
not import the method it judges, and both must name a model by the same hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..utils import sha256_file


def model_digest(path: str | os.PathLike[str]) -> str:
    """Identity of a saved model: the hash of its UNet weights file."""
    return sha256_file(Path(path) / "unet" / "diffusion_pytorch_model.safetensors")
