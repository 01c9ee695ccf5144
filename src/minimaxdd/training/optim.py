"""The optimiser and weight-averaging maths of the training loop: AdamW, the learning-rate ramp and the EMA
of the weights (DiT's constant-decay EMA with a warm-up, or EDM2's power-function EMA)."""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn

from minimaxdd.errors import UserError
from minimaxdd.training.config import LoopConfig


def ema_pairs(ema: nn.Module, model: nn.Module, params: list[nn.Parameter]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(EMA tensor, parameter) for the trained parameters only: a frozen one never moves, so its EMA
    stays equal to it (Difffit trains ~0.5% of a DiT; lerping the rest was memory traffic for nothing)."""
    trained = set(map(id, params))
    return [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if id(p) in trained]


def adamw(params: list[nn.Parameter], **kw: Any) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where torch has one (CPU and CUDA floating-point parameters): one
    call per step instead of a dozen small ops per tensor. On the 2-core CPU its gain on a compiled
    Difffit step of a small DiT was within the noise (BENCHMARKS.md, `micro_speed.py adamw`)."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kw)


@functools.lru_cache(maxsize=8)
def power_ema_exponent(sigma_rel: float) -> float:
    """EDM2's power-function EMA (Karras et al. 2024, Sec. 3.1): the exponent gamma whose profile has
    relative standard deviation `sigma_rel`, i.e. sigma_rel^2 = (g+1) / ((g+2)^2 (g+3)), solved by bisection."""
    if not 0 < sigma_rel < 0.28:       # gamma -> 0 gives sigma_rel = sqrt(1/12) ~ 0.289
        raise UserError(f"ema_length must be in (0, 0.28) (a relative std; EDM2 uses 0.05-0.10), got {sigma_rel}")
    lo, hi = 0.0, 1e6
    for _ in range(200):
        g = (lo + hi) / 2
        if (g + 1) / ((g + 2) ** 2 * (g + 3)) > sigma_rel ** 2:
            lo = g
        else:
            hi = g
    return (lo + hi) / 2


def ema_decay(cfg: LoopConfig, done: int) -> float:
    """The EMA decay after `done` steps (see LoopConfig.ema_length and ema_warmup)."""
    if cfg.ema_length is not None:     # beta_t = (1 - 1/t)^(gamma + 1): an average over the whole run so far
        return (1 - 1 / done) ** (power_ema_exponent(cfg.ema_length) + 1)
    return min(cfg.ema, (1 + done) / (10 + done)) if cfg.ema_warmup else cfg.ema


def update_ema(pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, for each pair."""
    if pairs:
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1 - decay)


def lr_at(cfg: LoopConfig, step: int, total: int) -> float:
    """The learning rate of `step` of `total`: a linear ramp over the first `lr_warmup` of the planned steps,
    then constant `lr`."""
    if cfg.lr_warmup > 0:
        return cfg.lr * min(1.0, (step + 1) / max(1.0, cfg.lr_warmup * total))
    return cfg.lr
