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


REDACTED_FILL = (128, 128, 128)
REDACTED_MARK = (200, 0, 0)


def redacted_tile(width: int, height: int) -> Image.Image:
    """A grey tile crossed in red: where a picture withholds an image, it says so."""
    tile = Image.new("RGB", (width, height), REDACTED_FILL)
    draw = ImageDraw.Draw(tile)
    draw.line((0, 0, width - 1, height - 1), fill=REDACTED_MARK, width=max(1, min(width, height) // 10))
    draw.line((0, height - 1, width - 1, 0), fill=REDACTED_MARK, width=max(1, min(width, height) // 10))
    return tile


def grid_image(
    images: torch.Tensor | np.ndarray,
    nrow: int,
    scale: int = 4,
    pad: int = 2,
    row_labels: Sequence[str] | None = None,
    redacted: Sequence[bool] | None = None,
) -> Image.Image:
    """Tile ``[N, C, H, W]`` images (uint8, or floats in [-1, 1]) into rows of ``nrow``.

    Tiny images are upscaled with nearest-neighbour so every pixel stays visible: the grid is an
    exact mosaic (tile ``i`` is image ``i`` repeated ``scale`` times along both axes), which is what
    lets a test cut it back into tiles and compare them to the data. Tiles flagged in ``redacted``
    are drawn by :func:`redacted_tile` instead of their image.
    """
    arr = _as_uint8(images)
    n, c, h, w = arr.shape
    if redacted is not None and len(redacted) != n:
        raise ValueError(f"redacted has {len(redacted)} flags for {n} images")
    ncol = nrow
    rows = max(1, -(-n // ncol))
    label_w = 0 if not row_labels else 8 + 7 * max(len(s) for s in row_labels)
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = Image.new("RGB", (label_w + ncol * cell_w + pad, rows * cell_h + pad), (255, 255, 255))
    for i in range(n):
        if redacted is not None and redacted[i]:
            im = redacted_tile(w * scale, h * scale)
        else:
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


def compose_panels(
    panels: Mapping[str, Image.Image], title: str | None = None, notes: Sequence[str] = (), gap: int = 16
) -> Image.Image:
    """Grids side by side under a caption each, composed pixel for pixel (no resampling).

    Unlike :func:`save_comparison`, which draws through matplotlib and so rescales the grids,
    every panel keeps its exact pixels: a picture of the grids holds the grids' tiles unchanged.
    """
    line = 14  # the default bitmap font is 11 px high
    head = (line + 6 if title else 0) + line + 4
    foot = len(notes) * line + (6 if notes else 0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [t for t in (title or "", *panels, *notes) if t]
    text_w = max((int(measure.textlength(t)) for t in texts), default=0)
    width = max(sum(im.width for im in panels.values()) + gap * (len(panels) + 1), text_w + 2 * gap)
    height = head + max((im.height for im in panels.values()), default=0) + foot + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 4), title, fill=(0, 0, 0))
    x = gap
    for name, im in panels.items():
        draw.text((x, head - line - 2), name, fill=(0, 0, 0))
        canvas.paste(im, (x, head))
        x += im.width + gap
    y = height - foot - gap // 2
    for note in notes:
        draw.text((gap, y), note, fill=(60, 60, 60))
        y += line
    return canvas


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
