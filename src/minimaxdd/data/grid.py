"""Image grids (PNG): one row per class, the first `per_row` images of each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid_array(images: torch.Tensor, labels: torch.Tensor, per_row: int = 10, scale: int = 2,
               pad: int = 1) -> np.ndarray:
    """uint8 (N, C, H, W) with labels (N,) -> an (rows*H', per_row*W', 3) uint8 array."""
    classes = sorted(set(labels.tolist()))
    C, H, W = images.shape[1:]
    h, w = H * scale + pad, W * scale + pad
    out = np.full((len(classes) * h + pad, per_row * w + pad, 3), 255, dtype=np.uint8)
    for r, c in enumerate(classes):
        for j, img in enumerate(images[labels == c][:per_row]):
            a = img.permute(1, 2, 0).numpy()  # (H, W, C)
            a = np.repeat(a, 3, axis=2) if C == 1 else a[:, :, :3]
            a = a.repeat(scale, 0).repeat(scale, 1)
            out[pad + r * h: pad + r * h + H * scale, pad + j * w: pad + j * w + W * scale] = a
    return out


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path, per_row: int = 10, scale: int = 2) -> Path:
    """Write `grid_array(images, labels, per_row, scale)` to `path` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(images, labels, per_row, scale)).save(path)
    return path
