"""Pictures people look at: sample grids and loss curves (PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw


def _as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return arr


def grid_image(
    images: torch.Tensor | np.ndarray,
    nrow: int,
    scale: int = 4,
    pad: int = 2,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tile ``[N, C, H, W]`` images (uint8, or floats in [-1, 1]) into rows of ``nrow``.

    Tiny images are upscaled with nearest-neighbour so every pixel stays visible.
    """
    arr = _as_uint8(images)
    n, c, h, w = arr.shape
    ncol = nrow
    rows = max(1, -(-n // ncol))
    label_w = 0 if not row_labels else 8 + 7 * max(len(s) for s in row_labels)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = Image.new("RGB", (label_w + ncol * cell_w + pad, rows * cell_h + pad), (255, 255, 255))
    for i in range(n):
        tile = arr[i].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if c == 1 else tile
        im = Image.fromarray(tile, mode="RGB").resize((w * scale, h * scale), Image.NEAREST)
        r, col = divmod(i, ncol)
        canvas.paste(im, (label_w + pad + col * cell_w, pad + r * cell_h))
    if row_labels:
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(row_labels[:rows]):
            draw.text((4, pad + r * cell_h + max(0, (h * scale - 10) // 2)), text, fill=(0, 0, 0))
    return canvas


def save_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike[str],
    nrow: int,
    scale: int = 4,
    row_labels: Sequence[str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=nrow, scale=scale, row_labels=row_labels).save(path)
    return path


def save_comparison(panels: Mapping[str, Image.Image], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Side-by-side grids with a caption each (e.g. base model vs unlearned)."""
    path = Path(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    axes = np.atleast_1d(axes)
    for ax, (name, im) in zip(axes, panels.items(), strict=True):
        ax.imshow(im)
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_loss_curve(
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "",
    smooth: int = 25,
    logy: bool = True,
) -> Path:
    """One line per series, smoothed by a running mean of ``smooth`` steps."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, values in series.items():
        v = np.asarray(list(values), dtype=float)
        if v.size == 0:
            continue
        k = max(1, min(smooth, v.size // 5 or 1))
        sm = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k - 1, k - 1 + sm.size), sm, label=name)
    if logy and all(min(v, default=1) > 0 for v in series.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
