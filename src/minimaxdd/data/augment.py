"""Batched, differentiable augmentation on image tensors.

Every function takes a float batch `x` of shape (N, C, H, W) on any device and a seeded
`torch.Generator` on the same device, draws one set of parameters per image from that
generator, and transforms the whole batch with a few tensor ops (no per-image Python loop).
Because the ops are differentiable, DM (`minimaxdd.baselines.distribution_matching`) can push
gradients through them. `AUGMENTATIONS` names the batch augmentations an evaluation protocol may
train with (`minimaxdd.evaluation.protocols`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DSAParams:
    """Ranges of Differentiable Siamese Augmentation.

    Defaults are `ParamDiffAug` of the DSA code (Zhao & Bilen, ICML 2021,
    github.com/VICO-UoE/DatasetCondensation, utils.py), also used by DM and the ECCV 2024 challenge.
    """

    scale: float = 1.2        # x and y scaled independently by U(1/1.2, 1.2)
    rotate: float = 15.0      # degrees, U(-15, 15)
    crop_pad: float = 0.125   # translate by up to 12.5% of the side, zero fill
    cutout: float = 0.5       # cut a square of half the side
    brightness: float = 1.0   # add U(-0.5, 0.5)
    saturation: float = 2.0   # scale chroma by U(0, 2)
    contrast: float = 0.5     # scale deviation from the image mean by U(0.5, 1.5)
    flip: float = 0.5         # probability of a horizontal flip


DSA_DEFAULT = DSAParams()
# The challenge / DSA evaluation strategy 'color_crop_cutout_flip_scale_rotate': one of these per batch
# ("S" mode of the DSA code, VICO-UoE/DatasetCondensation utils.py DiffAugment).
DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device)  # (n,) in [0, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)


def flip(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Mirror each image left-right with probability p.flip."""
    keep = _rand(x.shape[0], g, x.device) >= p.flip  # (N,)
    return torch.where(keep[:, None, None, None], x, x.flip(3))


def scale(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Stretch x and y independently by U(1/p.scale, p.scale) about the centre, zero fill."""
    n = x.shape[0]
    lo = 1.0 / p.scale
    sx = _rand(n, g, x.device) * (p.scale - lo) + lo  # (N,)
    sy = _rand(n, g, x.device) * (p.scale - lo) + lo  # (N,)
    theta = torch.zeros(n, 2, 3, device=x.device)  # (N, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def rotate(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Rotate about the centre by U(-p.rotate, p.rotate) degrees, zero fill."""
    n = x.shape[0]
    a = (_rand(n, g, x.device) - 0.5) * 2 * p.rotate / 180 * math.pi  # (N,) radians
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(a)], 1),
                         torch.stack([-sin, cos, torch.zeros_like(a)], 1)], 1)  # (N, 2, 3)
    return _affine(x, theta)


def crop(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Translate each image by a whole number of pixels (up to crop_pad of its side), zero fill."""
    n, _, h, w = x.shape
    mx, my = int(w * p.crop_pad + 0.5), int(h * p.crop_pad + 0.5)
    dx = torch.randint(-mx, mx + 1, (n,), generator=g, device=x.device)
    dy = torch.randint(-my, my + 1, (n,), generator=g, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (N, H) source row of each row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (N, W)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (N, H, W)
    idx = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (N, H, W)
    out = x.flatten(2).gather(2, idx.flatten(1)[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)
    return out * valid[:, None].to(x.dtype)


def cutout(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Zero a square of side cutout*H at a random centre (it may hang over the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=g, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :]  # (1, H)
    xs = torch.arange(w, device=x.device)[None, :]  # (1, W)
    in_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])  # (N, H)
    in_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])  # (N, W)
    hole = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
    return x * (~hole)[:, None].to(x.dtype)


def color(x: torch.Tensor, g: torch.Generator, p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """Brightness, then saturation, then contrast, as DSA's 'color' group."""
    n = x.shape[0]
    x = x + (_rand(n, g, x.device) - 0.5)[:, None, None, None] * p.brightness
    m = x.mean(dim=1, keepdim=True)  # (N, 1, H, W) grey value of each pixel
    x = (x - m) * (_rand(n, g, x.device) * p.saturation)[:, None, None, None] + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1) image mean
    return (x - m) * (_rand(n, g, x.device) + p.contrast)[:, None, None, None] + m


DSA_OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def dsa(x: torch.Tensor, g: torch.Generator, strategy: tuple[str, ...] = DSA_STRATEGY,
        p: DSAParams = DSA_DEFAULT) -> torch.Tensor:
    """DSA as used to train evaluation networks: one op of `strategy` drawn per batch,
    with per-image parameters (the DSA code's default 'S' mode)."""
    k = int(torch.randint(len(strategy), (1,), generator=g, device=g.device).item())
    return DSA_OPS[strategy[k]](x, g, p)


# Random resized crop as IDC trains on ImageNet subsets: RandomResizedCrop(size, scale=(0.5, 1.0))
# (snu-mllab/Efficient-Dataset-Condensation, data.py transform_imagenet); aspect ratios torchvision's
# default (3/4, 4/3).
RRC_SCALE = (0.5, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = RRC_SCALE,
                        ratio: tuple[float, float] = RRC_RATIO) -> torch.Tensor:
    """Crop a box of area U(scale) x HW and aspect ratio log-U(ratio) per image, resized back
    to H x W (bilinear). Boxes that would leave the image are clamped to fit, where
    torchvision instead retries and falls back to a centre crop."""
    n, dev = x.shape[0], x.device
    area = _rand(n, g, dev) * (scale[1] - scale[0]) + scale[0]  # (N,) fraction of H x W
    logr = _rand(n, g, dev) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])  # (N,)
    r = torch.exp(logr)  # (N,) width / height
    bw = torch.sqrt(area * r).clamp(max=1.0)  # box width as a fraction of the image width
    bh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (_rand(n, g, dev) * (1 - bw) + bw / 2) * 2 - 1  # box centre in [-1, 1]
    cy = (_rand(n, g, dev) * (1 - bh) + bh / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3, device=dev)  # (N, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = bw, cx, bh, cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rrc_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random resized crop (0.5-1) + flip: the geometric half of IDC's augmentation (`idc` adds the colour)."""
    return flip(random_resized_crop(x, g), g)


# IDC's colour augmentation after the crop and flip (snu-mllab/Efficient-Dataset-Condensation, data.py
# transform_imagenet, augment=True, which the Minimax evaluation trains with): ColorJitter(brightness 0.4,
# contrast 0.4, saturation 0.4) in the fb.resnet.torch form of its misc/utils.py, then AlexNet-style PCA
# lighting with alphastd 0.1, both on pixels in [0, 1] before the ImageNet normalisation.
JITTER = 0.4
LIGHTING_STD = 0.1
# The ImageNet RGB PCA (pixels in [0, 1]) of Krizhevsky et al. 2012, as fb.resnet.torch and IDC's data.py give it:
# eigenvalues, and the eigenvectors as columns.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
GREY = (0.299, 0.587, 0.114)   # ITU-R 601 luma weights, IDC's Grayscale


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB pixels (N, 3, H, W) -> (N, 1, H, W); the image itself for other channel counts."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    w = torch.tensor(GREY, dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(dim=1, keepdim=True)


def colour_jitter(x: torch.Tensor, g: torch.Generator, strength: float = JITTER) -> torch.Tensor:
    """Brightness, contrast and saturation in a random order per image, each a blend
    x + a (target - x) with a ~ U(-strength, strength) per image: towards black, towards the image's
    mean grey, towards its grey image. x is (N, C, H, W) pixels in [0, 1], not clamped (as IDC).
    Saturation needs colour, so it leaves images of other than 3 channels alone."""
    n, dev = x.shape[0], x.device
    alpha = (_rand(3 * n, g, dev).view(3, n) * 2 - 1) * strength                 # (3, N) per op, per image
    order = torch.rand(n, 3, generator=g, device=dev).argsort(dim=1)             # (N, 3) op at each position
    targets = (lambda v: torch.zeros_like(v),                                     # brightness
               lambda v: _grey(v).mean(dim=(1, 2, 3), keepdim=True).expand_as(v),  # contrast
               lambda v: _grey(v).expand_as(v) if v.shape[1] == 3 else v)          # saturation
    for pos in range(3):
        for op, target in enumerate(targets):
            a = torch.where(order[:, pos] == op, alpha[op], torch.zeros_like(alpha[op]))   # (N,) 0 elsewhere
            x = x + a.to(x.dtype)[:, None, None, None] * (target(x) - x)
    return x


def lighting(x: torch.Tensor, g: torch.Generator, std: float = LIGHTING_STD) -> torch.Tensor:
    """AlexNet's PCA lighting: add eigvec @ (a * eigval) to every pixel, a ~ N(0, std^2) per image and
    component. x is (N, 3, H, W) pixels in [0, 1]; other channel counts are returned unchanged."""
    a = torch.randn(x.shape[0], 3, generator=g, device=x.device) * std                 # (N, 3)
    if x.shape[1] != 3:
        return x
    vec = torch.tensor(PCA_EIGVEC, dtype=x.dtype, device=x.device)                      # (3 RGB, 3 comps)
    val = torch.tensor(PCA_EIGVAL, dtype=x.dtype, device=x.device)                      # (3,)
    shift = (a.to(x.dtype) * val) @ vec.T                                               # (N, 3 RGB)
    return x + shift[:, :, None, None]


Stats = tuple[torch.Tensor, torch.Tensor]   # per-channel (mean, std) with which a batch was standardised


def idc(x: torch.Tensor, g: torch.Generator, stats: Stats | None = None) -> torch.Tensor:
    """IDC's whole training augmentation for ImageNet subsets: random resized crop (0.5-1), flip, colour
    jitter and PCA lighting. `stats`: the (mean, std) that standardised x (the colour ops act on pixels in
    [0, 1], so x is mapped back and forth); None when x already holds pixels in [0, 1]."""
    x = rrc_flip(x, g)
    if stats is not None:
        mean, std = (t.to(x.device, x.dtype)[None, :, None, None] for t in stats)
        return (lighting(colour_jitter(x * std + mean, g), g) - mean) / std
    return lighting(colour_jitter(x, g), g)


def cutmix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, beta: float = 1.0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): paste one box from a shuffled copy of the batch.

    Returns (mixed x, y, y of the pasted images, lam), the loss being
    lam * CE(y) + (1 - lam) * CE(y_pasted), with lam the exact area kept.
    """
    n, _, h, w = x.shape
    # Beta is not drawable from a torch.Generator; a NumPy generator seeded from it keeps
    # the draw reproducible from the same seed. Beta(1, 1) is the uniform (IDC's setting).
    seed = int(torch.randint(2**62, (1,), generator=g, device=g.device).item())
    lam = float(np.random.default_rng(seed).beta(beta, beta))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=g, device=g.device).item())
    cx = int(torch.randint(w, (1,), generator=g, device=g.device).item())
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    perm = torch.randperm(n, generator=g, device=g.device).to(x.device)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return x, y, y[perm], lam


def mixup(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, alpha: float = 0.8
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): lam x + (1 - lam) x[perm] with lam ~ Beta(alpha, alpha), one lam per batch
    as RDED's validation/utils.py mixup. Returns (mixed x, y, y[perm], lam) like `cutmix`."""
    seed = int(torch.randint(2**62, (1,), generator=g, device=g.device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g, device=g.device).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def swap_halves(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """RDED's ShufflePatches with factor 2 (LINs-lab/RDED validation/utils.py), batched: per image, the left
    and right halves swap places with probability 1/2, then the top and bottom halves do, independently.
    x (N, C, H, W) -> the same shape."""
    n, _, h, w = x.shape
    for dim, side in ((3, w), (2, h)):
        swap = (_rand(n, g, x.device) < 0.5)[:, None, None, None]          # (N, 1, 1, 1)
        x = torch.where(swap, torch.roll(x, shifts=side - side // 2, dims=dim), x)
    return x


def rded_patch2(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """RDED's training augmentation at --factor 2 (its ImageNet scripts): `swap_halves`, then a random resized
    crop of scale (1 / 2, 1) and a flip (validation/main.py)."""
    return flip(random_resized_crop(swap_halves(x, g), g, scale=(0.5, 1.0)), g)


def flip_only(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A horizontal flip with probability 1/2: RDED's augmentation at --factor 1 (its CIFAR scripts), where
    RandomResizedCrop(scale (1, 1)) keeps the whole image."""
    return flip(x, g)


def no_augmentation(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The batch unchanged (draws nothing from `g`)."""
    return x


# The batch augmentations an evaluation protocol trains with, by the name its `augment` field gives:
# each maps (x (N, C, H, W), generator) -> a batch of the same shape.
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
def dsa_noflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """DSA without its mirror op: for a classifier that must not learn that mirrored images share a label
    (`evaluation.symmetry` tests whether they do)."""
    return dsa(x, g, DSA_NO_FLIP)


DSA_NO_FLIP = tuple(op for op in DSA_STRATEGY if op != "flip")
AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {"dsa": dsa, "dsa_noflip": dsa_noflip, "rrc_flip": rrc_flip,
                                                         "idc": idc, "flip": flip_only, "rded_patch2": rded_patch2,
                                                         "none": no_augmentation}
# The ones that act on pixel values and so take the batch's normalisation as `stats=(mean, std)`.
NEEDS_STATS = ("idc",)


def for_protocol(name: str, stats: Stats | None) -> Augmentation:
    """AUGMENTATIONS[name] as an (x, g) -> x function for batches standardised with `stats`."""
    fn = AUGMENTATIONS[name]
    return functools.partial(fn, stats=stats) if name in NEEDS_STATS else fn
