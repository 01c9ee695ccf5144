"""Sampling grids and solvers over the one denoiser interface (`minimaxdd.diffusion.denoisers`).

Every solver but DDPM's ancestral one integrates in EDM's scaling, x = x0 + sigma n, down a grid of noise
levels (float64, decreasing), calling D(x, sigma) -> x0 estimate; the same code serves EDM models and the
paper's DDPM models (through `VPDenoiser`):

    euler, heun       the probability-flow ODE dx/dsigma = (x - D) / sigma (Karras et al. 2022, Algorithm 1
                      without churn); DDIM (eta 0) is Euler's method in this scaling (Karras et al., Sec. 3)
    dpm_solver        DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), and with `noise` its SDE variant
    ddpm_ancestral    the paper's sampler: ancestral steps on the respaced DDPM schedule with the learned
                      variance (DiT's p_sample loop), on the DDPM state itself

Grids: `karras_sigmas` (EDM's Eq. 5), `respaced_sigmas` (DiT's respacing: the training steps a respaced
schedule keeps) and `dpm_time_points` (the DPM-Solver authors' time-uniform or log-SNR-uniform points).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from minimaxdd.diffusion.edm import RHO
from minimaxdd.diffusion.schedule import NUM_TIMESTEPS, Diffusion

# D(x (N, C, H, W), sigma (a Python float)) -> the denoised x, (N, C, H, W) float32
DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]


# ---------------------------------------------------------------------------------------------- grids


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO) -> torch.Tensor:
    """EDM's noise levels (steps + 1,) float64: sigma_max down to sigma_min, spaced by Eq. 5 (Karras et al.
    2022) so that sigma^(1/rho) is uniform, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho                                  # (steps,)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


SPACINGS = ("time", "logsnr")


def dpm_time_points(steps: int, spacing: str = "time") -> np.ndarray:
    """The training steps a DPM-Solver visits, from 999 down to 0 (steps + 1 points, fewer if rounding merges some).

    "time": uniform in t (diffusers' linspace; the DPM-Solver authors' advice for high-resolution and
    latent models). "logsnr": uniform in lambda = log(alpha / sigma) (their advice for low-resolution
    pixel models; Lu et al. 2022), rounded to the nearest training step.
    Near t = 0 lambda moves fast, so at high step counts neighbouring points can round to the same
    step; those are merged (a zero-length step would divide by zero).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    T = NUM_TIMESTEPS
    if spacing == "time":
        ts = np.linspace(T - 1, 0, steps + 1)
    else:
        acp = Diffusion().np["alphas_cumprod"]
        lam = 0.5 * np.log(acp / (1 - acp))                        # decreasing in t
        ts = np.interp(np.linspace(lam[-1], lam[0], steps + 1), lam[::-1], np.arange(T)[::-1])
    ts = np.round(ts).astype(np.int64)
    return ts[np.r_[True, np.diff(ts) != 0]]


def step_sigmas(ts: np.ndarray, final_zero: bool) -> torch.Tensor:
    """The noise levels sigma_t = sqrt((1 - abar_t) / abar_t) of training steps ts, float64, optionally then 0."""
    acp = Diffusion().np["alphas_cumprod"][np.asarray(ts)]
    sig = torch.as_tensor(np.sqrt((1 - acp) / acp), dtype=torch.float64)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]) if final_zero else sig


def respaced_sigmas(steps: int) -> torch.Tensor:
    """The `steps` training steps DiT's respacing keeps (`Diffusion.respaced`), as noise levels from the
    highest down, then 0 (steps + 1,): DDIM's grid, its last step landing on its x0 estimate."""
    return step_sigmas(Diffusion.respaced(steps).timestep_map[::-1].copy(), final_zero=True)


# ---------------------------------------------------------------------------------------------- solvers


def _tick(on_step: Callable | None) -> None:
    if on_step is not None:
        on_step()


def euler(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
          on_step: Callable | None = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, one network call each (EDM Algorithm 1, first order)."""
    sig = [float(s) for s in sigmas]
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoise_fn(x, s)) / s                                   # dx/dsigma, (N, C, H, W)
        x = x + (s_next - s) * d
        _tick(on_step)
    return x


def heun(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
         on_step: Callable | None = None) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1 without churn).

    Heun's second-order correction at every step but one to sigma = 0 (where the slope is undefined),
    which is Euler: 2 * steps - 1 network calls for `steps` steps on a grid ending at 0.
    """
    sig = [float(s) for s in sigmas]
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoise_fn(x, s)) / s                                   # (N, C, H, W)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise_fn(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d_next)
        x = x_next
        _tick(on_step)
    return x


def dpm_solver(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor, on_step: Callable | None = None,
               noise: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, Algorithm 2); with `noise`, SDE-DPM-Solver++(2M).

    In EDM's scaling lambda = -ln sigma, and a step of h = ln(s / s_next) is
        ODE  x <- (s_next / s) x - expm1(-h) D'
        SDE  x <- (s_next / s) e^-h x + (1 - e^-2h) D' + s_next sqrt(1 - e^-2h) z   (fresh z from `noise`)
    with D' = D + (D - D_prev) h / (2 h_prev). One network call per step. The first step and the last are
    first order: the last step's h is the largest, so the extrapolation (D - D_prev) / (2r), r = h_prev / h,
    blows up (on a Gaussian whose exact score is known, 2M in 20 time-uniform DDPM steps gave std 0.39 for
    0.30 with it, 0.26 without); a step to sigma = 0 (infinite h) returns D itself.
    """
    sig = [float(s) for s in sigmas]
    prev_D, prev_h = None, None
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:])):
        D = denoise_fn(x, s)                                             # (N, C, H, W)
        if s_next == 0:
            x = D
        else:
            h = math.log(s / s_next)
            first_order = prev_D is None or i == len(sig) - 2
            Dm = D if first_order else D + (D - prev_D) * (h / (2 * prev_h))
            if noise is None:
                x = (s_next / s) * x - math.expm1(-h) * Dm
            else:
                em = -math.expm1(-2 * h)
                x = (s_next / s * math.exp(-h)) * x + em * Dm + s_next * math.sqrt(em) * noise()
            prev_D, prev_h = D, h
        _tick(on_step)
    return x


def ddpm_ancestral(raw_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: Callable[[], torch.Tensor],
                   steps: int, clip: bool, on_step: Callable | None = None) -> torch.Tensor:
    """Ancestral sampling on the DDPM schedule respaced to `steps` (the paper's sampler: 50 steps; DiT's loop).

    raw_fn(x_t, t) is the (guided) network output at training steps t: epsilon, and the learned variance
    channels when the network has them (else the clipped posterior variance, fixed-small). `clip` clamps
    each predicted x0 to [-1, 1] (DiT's clip_denoised). Starts from x_T = noise() on the DDPM state.
    """
    d = Diffusion.respaced(steps)
    x = noise()                                                       # (N, C, H, W)
    C = x.shape[1]
    for i in reversed(range(steps)):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)  # (N,) respaced step
        out = raw_fn(x, d.model_t(t))                                 # (N, C or 2C, H, W)
        _, logvar, x0, _ = d.p_mean_logvar(out, x, t, C)
        mean, _ = d.q_posterior(x0.clamp(-1, 1) if clip else x0, x, t)   # (N, C, H, W)
        x = mean + torch.exp(0.5 * logvar) * noise() if i > 0 else mean
        _tick(on_step)
    return x
