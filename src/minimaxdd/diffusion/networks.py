"""Registry of denoising networks: `DENOISERS`, whose names are the CLI's `--model` choices.

Names: `dit-xl/2`, `dit-s/4`, `uvit-s`, ... Each maps to a config dict (`{"arch": "dit", ...}`)
without the data shape; `denoiser_config` adds it and `build_from_config` builds the network through
`ARCHITECTURES`. Every checkpoint this package writes carries that dict, so a network is rebuilt
from its checkpoint alone. Weights load strictly through `minimaxdd.diffusion.weights` (the official
DiT release, diffusers folders) and `minimaxdd.diffusion.checkpoints` (this package's checkpoints).
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from minimaxdd.diffusion.dit import DiT, DiTConfig
from minimaxdd.diffusion.unet import UNet, UNetConfig
from minimaxdd.diffusion.uvit import UViT, UViTConfig
from minimaxdd.errors import UserError

# Sizes: (hidden, depth, heads). DiT S/B/L/XL from Peebles & Xie 2023, Table 1; dit-n (nano, for
# 8x8 digits and tests) and dit-t (tiny, for 28-32 px on CPUs) are ours.
DIT_SIZES = {"n": (128, 6, 4), "t": (256, 8, 4), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16),
             "xl": (1152, 28, 16)}
# U-ViT (Bao et al. 2023): uvit-s = CIFAR-10 config (512 wide, 12+1 blocks, 8 heads, patch 2);
# uvit-m = ImageNet-64 mid (768 wide, 16+1 blocks, 12 heads, patch 4); uvit-t is ours, for tests and CPUs.
UVIT_SIZES = {"t": (192, 6, 4, 2), "s": (512, 12, 8, 2), "m": (768, 16, 12, 4)}

DENOISERS: dict[str, dict] = {}
for _s, (_d, _n, _h) in DIT_SIZES.items():
    for _p in (2, 4, 8):
        DENOISERS[f"dit-{_s}/{_p}"] = {"arch": "dit", "hidden_size": _d, "depth": _n, "num_heads": _h, "patch_size": _p}
for _s, (_d, _n, _h, _p) in UVIT_SIZES.items():
    DENOISERS[f"uvit-{_s}"] = {"arch": "uvit", "hidden_size": _d, "depth": _n, "num_heads": _h, "patch_size": _p}
# Pixel-space conv U-Nets (ours; `minimaxdd.diffusion.unet`): widths per level, 2 res blocks per level, attention
# at the lowest level and in the middle with 64 channels per head, embedding 4x the first width (EDM's DDPM++).
# unet-s is the CPU model of issue 18 (~1.6M parameters on 28 px digits).
# unet-xs (ours, issue 27): half unet-s's widths, a quarter of its FLOPs, for the digits demo on CPUs without bf16.
UNET_SIZES = {"xs": (16, 32, 32), "s": (32, 64, 64), "m": (64, 128, 128), "l": (128, 256, 256)}
for _s, _c in UNET_SIZES.items():
    DENOISERS[f"unet-{_s}"] = {"arch": "unet", "channels": list(_c), "blocks": 2, "heads": max(1, _c[-1] // 64),
                               "embed_dim": 4 * _c[0]}

# The "arch" of a config dict -> the network class built from the rest of the dict.
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {
    "dit": lambda cfg: DiT(DiTConfig(**cfg)),
    "uvit": lambda cfg: UViT(UViTConfig(**cfg)),
    "unet": lambda cfg: UNet(UNetConfig.from_dict(cfg)),
}


def denoiser_config(name: str, input_size: int, in_channels: int, num_classes: int,
                    learn_sigma: bool | None = None, **overrides: Any) -> dict:
    """The config dict of registry entry `name` for the given data shape."""
    key = name.lower()
    if key not in DENOISERS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(DENOISERS)}")
    cfg = dict(DENOISERS[key], input_size=input_size, in_channels=in_channels, num_classes=num_classes, **overrides)
    if learn_sigma is not None:
        cfg["learn_sigma"] = learn_sigma
    p = cfg.get("patch_size", 1)   # the U-Nets have no patches
    if input_size % p:
        raise UserError(f"model {name} has patch {p}, which does not divide the input size {input_size}; "
                        f"pick a patch that divides it (e.g. {name.split('/')[0]}/2) or resize the data")
    return cfg


def build_from_config(cfg: dict) -> nn.Module:
    """The network a config dict (`{"arch": ..., ...}`, as checkpoints store it) describes, freshly initialised."""
    cfg = dict(cfg)
    arch = cfg.pop("arch")
    if arch not in ARCHITECTURES:
        names = list(ARCHITECTURES)
        raise UserError(f"unknown architecture {arch!r} in a model config "
                        f"(expected {', '.join(names[:-1])} or {names[-1]})")
    return ARCHITECTURES[arch](cfg)


def build_denoiser(name: str, input_size: int, in_channels: int, num_classes: int, **kw: Any) -> nn.Module:
    """Registry entry `name` built for the given data shape; `kw` overrides config fields (e.g. learn_sigma)."""
    return build_from_config(denoiser_config(name, input_size, in_channels, num_classes, **kw))


# --------------------------------------------------------------------------- Difffit

def is_difffit_gamma(key: str) -> bool:
    """Whether a state-dict key is a Difffit gamma (one at init, so a checkpoint may lack it)."""
    return "gamma" in key.split(".")[-1]


# Difffit's trainable set as the Minimax reference selects it: every parameter whose name contains
# "bias", "norm", "gamma" or the class embedding ("y_embed" in DiT, "label_emb" in U-ViT). DiT's
# LayerNorms have no affine weights, so "norm" matches nothing there; the whole label table is
# trained, null row included.
DIFFFIT_KEYS = ("bias", "norm", "gamma", "y_embed", "label_emb")


def difffit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Difffit trains: those whose name contains one of DIFFFIT_KEYS."""
    return [p for n, p in model.named_parameters() if any(k in n for k in DIFFFIT_KEYS)]
