"""The EDM formulation (Karras et al. 2022), beside the paper's DDPM one: every model is a denoiser D(x; sigma, y).

`EDM` wraps any backbone F(x, c_noise, y) in EDM's preconditioning, draws training noise levels and
computes the weighted loss on D's clean-image estimate (the minimax terms read the same estimate).
The deterministic samplers (`EDM_SAMPLERS`: Heun, Euler, DPM-Solver++(2M)) integrate the
probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma on EDM's sigma grid (`sigma_steps`), and
`generate_edm` runs one on a model batch by batch, with the per-image noise of
`minimaxdd.diffusion.samplers`, so image i of class c is the same whatever the batching.
Facts and constants from the paper and NVlabs/edm (training/networks.py EDMPrecond,
training/loss.py EDMLoss, generate.py edm_sampler); the code is ours. The DDPM path
(`minimaxdd.diffusion.schedule`, `minimaxdd.diffusion.samplers`) is untouched.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from minimaxdd.diffusion.samplers import PerImageNoise, sample_batches
from minimaxdd.diffusion.schedule import mean_flat
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast

SIGMA_DATA = 0.5        # std of the data in [-1, 1]: Karras et al. 2022, Sec. 5 and Table 1; edm EDMPrecond sigma_data
P_MEAN, P_STD = -1.2, 1.2   # ln(sigma) ~ N(P_MEAN, P_STD^2): Karras et al. 2022, Table 1 ("Training"); edm EDMLoss
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0   # sampling range: Karras et al. 2022, Table 1 ("Sampling"); edm generate.py
RHO = 7.0               # time-step exponent of Eq. 5: Karras et al. 2022, Sec. 3 and Table 1

# D(x (N, C, H, W), sigma (a Python float)) -> the denoised x, (N, C, H, W) float32
DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]
# backbone(x_in (N, C, H, W), c_noise (N,) float, y (N,) long) -> F (N, C or 2C, H, W)
Backbone = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as (N,) float32 on x's device, from a scalar or an (N,) tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(x.shape[0])


class EDM:
    """The EDM formulation: preconditioning, training noise levels and the weighted denoising loss.

    The training loop holds one, as it holds `Diffusion()` for the DDPM formulation; the noise level
    it draws per sample (`draw_level`) is sigma in data units rather than a timestep.
    """

    noise_level_name = "sigma"
    sigma_data, p_mean, p_std = SIGMA_DATA, P_MEAN, P_STD

    def precond(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip, c_out, c_in, c_noise at sigma (any shape, each the same shape): Karras et al. 2022, Table 1.

        c_in scales the input to unit variance, c_skip and c_out make the network's target F unit
        variance and c_noise = ln(sigma) / 4 is what the network sees of the noise level.
        """
        sd2, s2 = self.sigma_data ** 2, sigma ** 2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2: a unit-weight loss on F (Table 1)."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def denoise(self, net: Backbone, x: torch.Tensor, sigma: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """D(x; sigma, y) = c_skip x + c_out F(c_in x; c_noise, y): (N, C, H, W) float32.

        `sigma` is a scalar or (N,); `y` (N,) long, the null class (net's num_classes) for the
        unconditional model. The network runs in whatever dtype autocast gives; the mixing is in
        float32. A network with learned variance (2C outputs) contributes its first C channels.
        """
        s = _per_sample(sigma, x)                                        # (N,)
        c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in self.precond(s))
        F = net(c_in * x, c_noise.flatten(), y)                          # (N, C or 2C, H, W)
        C = x.shape[1]
        if F.shape[1] not in (C, 2 * C):
            raise ValueError(f"the network returned {F.shape[1]} channels for {C}-channel inputs; "
                             f"an EDM backbone returns C (or 2C with learn_sigma) channels")
        return c_skip * x.float() + c_out * F[:, :C].float()             # (N, C, H, W)

    def draw_level(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n training noise levels sigma (n,): ln sigma ~ N(P_MEAN, P_STD^2), one randn call on `g`."""
        return (self.p_mean + self.p_std * torch.randn(n, generator=g)).exp()

    def training_losses(self, net: Backbone, x0: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample terms on x = x0 + sigma * noise, with the keys of `Diffusion.training_losses`.

        `loss` = lambda(sigma) * mean over C, H, W of (D - x0)^2 (EDM's weighted loss, (N,));
        `mse` = the unweighted mean squared error of D (N,), for logging; `x0_hat` = D (N, C, H, W),
        with gradients (the minimax terms use it).
        """
        s = _per_sample(sigma, x0)                                       # (N,)
        x = x0 + s.view(-1, 1, 1, 1) * noise                             # (N, C, H, W)
        D = self.denoise(net, x, s, y)                                   # (N, C, H, W) float32
        mse = mean_flat((D - x0.float()) ** 2)                           # (N,)
        return {"loss": self.loss_weight(s) * mse, "mse": mse, "x0_hat": D}


# ---------------------------------------------------------------------------------------------
# samplers


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> torch.Tensor:
    """EDM's noise levels (steps + 1,) float64: sigma_max down to sigma_min, spaced by Eq. 5
    (Karras et al. 2022) so that sigma^(1/rho) is uniform, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho                                  # (steps,)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def _levels(sigmas: torch.Tensor) -> list[float]:
    return [float(s) for s in sigmas]


def euler(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
          on_step: Callable | None = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, one network call each (EDM Algorithm 1, first order)."""
    sig = _levels(sigmas)
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoise_fn(x, s)) / s                                   # dx/dsigma, (N, C, H, W)
        x = x + (s_next - s) * d
        if on_step is not None:
            on_step()
    return x


def heun(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
         on_step: Callable | None = None) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1 without churn).

    Heun's second-order correction at every step but the last (to sigma = 0, where the slope is
    undefined), which is Euler: 2 * steps - 1 network calls for `steps` steps.
    """
    sig = _levels(sigmas)
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoise_fn(x, s)) / s                                   # (N, C, H, W)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise_fn(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if on_step is not None:
            on_step()
    return x


def dpm_solver(denoise_fn: DenoiseFn, x: torch.Tensor, sigmas: torch.Tensor,
               on_step: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, Algorithm 2) on the sigma grid.

    With EDM's x = x0 + sigma * noise (alpha = 1), lambda = -ln sigma and a step of h = ln(s / s_next)
    is x <- (s_next / s) x + (1 - s_next / s) D', D' = D + (D - D_prev) / (2 r), r = h_prev / h.
    One network call per step; the first step and the last (to sigma = 0, where h is infinite and
    the step returns D itself) are first order.
    """
    sig = _levels(sigmas)
    prev_D, prev_h = None, None
    for s, s_next in zip(sig[:-1], sig[1:]):
        D = denoise_fn(x, s)                                             # (N, C, H, W)
        if s_next == 0:
            x = D
        else:
            h = math.log(s / s_next)
            Dm = D if prev_D is None else D + (D - prev_D) * (h / (2 * prev_h))
            x = (s_next / s) * x - math.expm1(-h) * Dm
            prev_D, prev_h = D, h
        if on_step is not None:
            on_step()
    return x


# (denoise_fn, x = sigmas[0] * noise, sigmas, on_step) -> x at sigma = 0; the keys are the CLI's choices.
EdmSampler = Callable[..., torch.Tensor]
EDM_SAMPLERS: dict[str, EdmSampler] = {"heun": heun, "euler": euler, "dpm-solver": dpm_solver}
# Steps per sampler: Heun 18 (35 network calls) is EDM's CIFAR-10 setting (Karras et al. 2022, Table 2;
# edm generate.py num_steps=18); Euler 35 spends the same 35 calls; DPM-Solver++(2M) 20 steps, the
# upper end of the 15-20 its authors recommend (Lu et al. 2022, DPM-Solver++, Sec. 1 and 6).
EDM_DEFAULT_STEPS: dict[str, int] = {"heun": 18, "euler": 35, "dpm-solver": 20}


def network_calls(sampler: str, steps: int) -> int:
    """How many network evaluations `sampler` makes in `steps` steps (per image, before guidance doubles them)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def guided_denoiser(model: nn.Module, y: torch.Tensor, scale: float, precision: str = "fp32",
                    edm: EDM | None = None) -> DenoiseFn:
    """denoise_fn(x, sigma) -> D (float32) for labels y (N,), with classifier-free guidance on D.

    D_w = D_uncond + w (D_cond - D_uncond), the conditional and null-class halves in one network call;
    w = 1 calls the network on the conditional labels only. A model cast to bf16 runs without
    autocast, its inputs cast to its dtype.
    """
    edm = edm or EDM()
    null = torch.full_like(y, model.num_classes)                         # (N,) the null class
    p0 = next(model.parameters(), None)
    dtype = torch.float32 if p0 is None else p0.dtype
    used = resolve_precision(precision, p0.device if p0 is not None else "cpu") if dtype == torch.float32 else "fp32"

    def net(x_in: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(x_in.to(dtype), c_noise, labels)

    def denoise_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        with autocast(x.device, used):
            if scale == 1.0:
                return edm.denoise(net, x, sigma, y)
            D = edm.denoise(net, torch.cat([x, x]), sigma, torch.cat([y, null]))  # (2N, C, H, W)
        cond, uncond = D.chunk(2)                                        # (N, C, H, W) each
        return uncond + scale * (cond - uncond)
    return denoise_fn


@torch.no_grad()
def generate_edm(model: nn.Module, labels: torch.Tensor, seeds: list[int], *, sampler: str = "heun",
                 steps: int = 18, cfg_scale: float = 1.0, clip: bool = False, precision: str = "fp32",
                 batch_size: int = 64, device: str | torch.device = "cpu", desc: str = "sample",
                 compile: bool = False, network: nn.Module | None = None) -> torch.Tensor:
    """Sample one image (or latent) per (label, seed) with an EDM denoiser: (N, C, H, W) float32 on the CPU.

    As `minimaxdd.diffusion.samplers.generate`: per-image noise streams, batches spread over ranks,
    precision "bf16" runs a bf16 copy, `compile` compiles it with frozen weights and `network`
    (a `sampling_network(model, precision, compile)` built once) serves several calls. The initial
    x is sigma_max * noise; `clip` clamps the final x to [-1, 1].
    """
    if sampler not in EDM_SAMPLERS:
        raise ValueError(f"unknown EDM sampler {sampler!r}; choose one of {', '.join(EDM_SAMPLERS)}")
    step_fn, sigmas, edm = EDM_SAMPLERS[sampler], sigma_steps(steps), EDM()

    def one_batch(net: nn.Module, y: torch.Tensor, noise: PerImageNoise, on_step: Callable) -> torch.Tensor:
        x = float(sigmas[0]) * noise()                                     # (n, C, H, W)
        x = step_fn(guided_denoiser(net, y, cfg_scale, precision, edm), x, sigmas, on_step)
        return x.clamp(-1, 1) if clip else x

    return sample_batches(model, labels, seeds, one_batch, steps=steps, precision=precision, batch_size=batch_size,
                          device=device, desc=desc, compile=compile, network=network)


@torch.no_grad()
def denoise_from(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, sigma: float, seeds: list[int], *,
                 sampler: str = "heun", steps: int = 18, cfg_scale: float = 1.0, precision: str = "fp32",
                 batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """Start from given images instead of pure noise (SDEdit, Meng et al. 2022; D4M's prototypes): x0 (N, C, H, W)
    in the model's space, noised to `sigma` (one noise stream per image seed) and sampled down EDM's grid from
    there: `sigma` itself, then the levels of `sigma_steps(steps)` below it. Returns (N, C, H, W) float32 on the
    CPU. `sigma` at or above SIGMA_MAX is the ordinary sampler started from x0 + noise."""
    if sampler not in EDM_SAMPLERS:
        raise ValueError(f"unknown EDM sampler {sampler!r}; choose one of {', '.join(EDM_SAMPLERS)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if len(x0) != len(labels) or len(x0) != len(seeds):
        raise ValueError(f"x0, labels and seeds differ in length: {len(x0)}, {len(labels)}, {len(seeds)}")
    grid = sigma_steps(steps)
    sigmas = torch.cat([torch.tensor([float(sigma)], dtype=torch.float64), grid[grid < sigma]])
    edm, step_fn, out = EDM(), EDM_SAMPLERS[sampler], []
    for i in range(0, len(x0), batch_size):
        y = labels[i:i + batch_size].to(device)                                     # (n,)
        noise = PerImageNoise(seeds[i:i + batch_size], tuple(x0.shape[1:]), device)()
        x = x0[i:i + batch_size].to(device).float() + float(sigma) * noise          # (n, C, H, W)
        out.append(step_fn(guided_denoiser(model, y, cfg_scale, precision, edm), x, sigmas).float().cpu())
    return torch.cat(out)
