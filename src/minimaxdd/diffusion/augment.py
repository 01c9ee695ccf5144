"""Non-leaking augmentation for diffusion training (Karras et al. 2020, ADA; used by EDM, Karras et al. 2022, App. F.2).

Each training image gets, each with probability p, a horizontal flip, a vertical flip, a rotation by a
multiple of 90 degrees and an integer translation (reflect padding); the network is told which through an
augmentation-label vector (`AUGMENT_DIM` values, all zero for an unaugmented image) that it embeds beside
the noise level and the class. Sampling passes no labels (zeros), so the model generates unaugmented
images and the augmentations do not leak into the samples, while a small training set looks larger.
EDM trains its CIFAR-10 models with p = 0.12 (their geometric set also holds scaling, fractional rotation
and anisotropy; ours keeps the transforms that are exact on a pixel grid).

Labels, per image: [xflip, yflip, cos(theta) - 1, sin(theta), tx / W, ty / H] (EDM's encoding of the
flips, rotation and translation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_DIM = 6
MAX_SHIFT = 0.125          # the largest translation, as a fraction of the side (EDM's translate_std is 0.125)


def draw_augment(n: int, p: float, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The parameters of n augmentations, every draw made whatever p is (so p changes values, not the stream):
    xflip, yflip (n,) bool; k (n,) quarter turns 0-3; tx, ty (n,) shifts as fractions of the side."""
    apply = torch.rand(n, 4, generator=g) < p                                    # (n, 4) which ops apply
    coin = torch.rand(n, 2, generator=g) < 0.5                                   # flip directions
    k = torch.randint(1, 4, (n,), generator=g)                                   # a turn of 1-3 quarters
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * MAX_SHIFT                  # (n, 2) in [-MAX, MAX]
    return {"xflip": apply[:, 0] & coin[:, 0], "yflip": apply[:, 1] & coin[:, 1],
            "k": torch.where(apply[:, 2], k, torch.zeros_like(k)),
            "tx": torch.where(apply[:, 3], shift[:, 0], 0.0), "ty": torch.where(apply[:, 3], shift[:, 1], 0.0)}


def apply_augment(x: torch.Tensor, a: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C, S, S) with the augmentations `a` (from draw_augment): the augmented images and their labels
    (N, AUGMENT_DIM) float32. Translations move by whole pixels (round(t * S)), padding by reflection."""
    n, _, h, w = x.shape
    if h != w:
        raise ValueError(f"non-leaking augmentation rotates by quarter turns and needs square images, got {h}x{w}")
    out = torch.where(a["xflip"].view(-1, 1, 1, 1), x.flip(-1), x)
    out = torch.where(a["yflip"].view(-1, 1, 1, 1), out.flip(-2), out)
    for k in (1, 2, 3):
        m = a["k"] == k
        if m.any():
            out[m] = torch.rot90(out[m], k, dims=(-2, -1))
    dx, dy = (a["tx"] * w).round().long(), (a["ty"] * h).round().long()        # (N,) pixels
    pad = int(math.ceil(MAX_SHIFT * h))
    if bool((dx != 0).any() or (dy != 0).any()):
        padded = F.pad(out, (pad, pad, pad, pad), mode="reflect")               # (N, C, S + 2p, S + 2p)
        rows = (torch.arange(h) + pad)[None, :] - dy[:, None]                   # (N, S) source rows
        cols = (torch.arange(w) + pad)[None, :] - dx[:, None]                   # (N, S) source cols
        idx = torch.arange(n)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    cos_sin = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])[a["k"]]   # (N, 2) exact
    labels = torch.stack([a["xflip"].float(), a["yflip"].float(), cos_sin[:, 0] - 1, cos_sin[:, 1],
                          dx.float() / w, dy.float() / h], dim=1)               # (N, AUGMENT_DIM)
    return out.contiguous(), labels
