"""What each training step draws, from a generator seeded by (seed, step) alone: the batch's order, flips, label
dropout, noise levels, noise and augmentation. A resumed run draws what an uninterrupted one would, and N
processes draw the global batch and slice it, so they train as one process would."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from minimaxdd.diffusion.augment import apply_augment, draw_augment
from minimaxdd.diffusion.codecs import PixelCodec, VAECodec, encode_dataset
from minimaxdd.diffusion.edm import EDM
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.training.config import LoopConfig

_MIX = 0x9E3779B97F4A7C15
# a value of FORMULATIONS: draw_level(n, g) and training_losses(net, x0, level, y, noise)
Formulation = Diffusion | EDM


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for one training step (and one stream within it), independent of resumption."""
    return torch.Generator().manual_seed((((int(seed) * _MIX + step) % 2**63) * _MIX + stream) % 2**63)


@dataclass
class Targets:
    """The training set in model space, with labels already mapped to network classes."""
    x: torch.Tensor | None               # pixel: (N, C, H, W) in [-1, 1]
    mean: torch.Tensor | None            # vae: (N, 2, c, h, w) latent means (index 1 = mirrored)
    std: torch.Tensor | None
    y: torch.Tensor                      # (N,) network class indices

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
        """The clean samples of `idx` (B, C, H, W): flipped at random, latents drawn from their moments."""
        flips = torch.rand(len(idx), generator=g) < 0.5 if flip else torch.zeros(len(idx), dtype=torch.bool)
        if self.x is not None:
            x = self.x[idx]
            return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        m = self.mean[idx, flips.long()].float()
        s = self.std[idx, flips.long()].float()
        return m + s * torch.randn(m.shape, generator=g)


def make_targets(codec: PixelCodec | VAECodec, ds: Any, class_map: list[int]) -> Targets:
    """The dataset `ds` encoded by `codec` (cached), labels mapped through `class_map`."""
    enc = encode_dataset(codec, ds.x_train, ds.fingerprint())
    y = torch.as_tensor(class_map)[ds.y_train]
    return Targets(enc.get("x"), enc.get("mean"), enc.get("std"), y)


def draw_step(targets: Targets, cfg: LoopConfig, step: int, per_epoch: int, null: int,
          formulation: Formulation) -> tuple[torch.Tensor, ...]:
    """The global batch of `step` and its draws: (x0, labels, y, dropped, t, noise, augmentation labels (B, A),
    A = 0 without augmentation), all on the CPU.

    Every draw is made for the global batch, then sliced: N processes train as one would. The order
    of the draws from the step's generator fixes the bytes: flips (and latent noise), label dropout,
    noise levels (DDPM timesteps or EDM sigmas), noise."""
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(len(targets), generator=step_generator(cfg.seed, epoch, stream=1))
    idx = perm[k * cfg.batch:(k + 1) * cfg.batch]
    g = step_generator(cfg.seed, step)
    x0 = targets.batch(idx, g, cfg.flip)                                   # (B, C, H, W)
    labels = targets.y[idx]                                                # (B,)
    y = labels.clone()
    dropped = torch.rand(len(y), generator=g) < cfg.class_dropout
    y[dropped] = null                                                      # the conditioning, (B,)
    t = formulation.draw_level(len(y), g)                                  # (B,) timesteps or sigmas
    noise = torch.randn(x0.shape, generator=g)                             # (B, C, H, W)
    p = getattr(cfg, "augment", 0.0)                                       # drawn last: p = 0 keeps the bytes
    if p > 0:
        x0, aug = apply_augment(x0, draw_augment(len(y), p, g))            # (B, C, H, W), (B, AUGMENT_DIM)
    else:
        aug = torch.zeros(len(y), 0)
    return x0, labels, y, dropped, t, noise, aug
