"""Diffusion formulations by name: how noise levels are drawn, what the loss is, which samplers apply.

    ddpm   the paper's: 1000 linear-beta steps, epsilon prediction, learned variance (DiT;
           `diffusion.schedule`)
    edm    Karras et al. 2022: continuous sigma, preconditioned denoiser, lognormal sigma training
           (`diffusion.edm`)

Both are sampled by the same samplers (`diffusion.sampling`) through one denoiser interface
(`diffusion.denoisers`).

A checkpoint records its formulation (`CheckpointMeta.formulation`); fine-tuning and sampling read it.
"""
from __future__ import annotations

from typing import Callable

from minimaxdd.diffusion.edm import EDM
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.errors import UserError

FORMULATIONS: dict[str, Callable[[], Diffusion | EDM]] = {"ddpm": Diffusion, "edm": EDM}


def build_formulation(name: str) -> Diffusion | EDM:
    """The formulation object for `name` (a key of FORMULATIONS)."""
    if name not in FORMULATIONS:
        raise UserError(f"unknown diffusion formulation {name!r}; choose one of {', '.join(FORMULATIONS)}")
    return FORMULATIONS[name]()
