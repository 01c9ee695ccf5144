"""One interface for every model: the denoiser D(x; sigma, y), as NVlabs/edm wraps each formulation.

Every sampler sees x = x0 + sigma * n (EDM's scaling: sigma in data units) and a denoiser that returns
D, its estimate of x0. Two preconditionings put a network behind that interface:

    EDMDenoiser   EDM's own (Karras et al. 2022, Table 1): D = c_skip x + c_out F(c_in x; ln(sigma) / 4, y)
    VPDenoiser    the paper's 1000-step epsilon-prediction DiT, as EDM's iDDPMPrecond wraps ADM: the DDPM
                  state is x_t = alpha_t (x0 + sigma_t n) with sigma_t = sqrt((1 - abar_t) / abar_t) and
                  alpha_t = 1 / sqrt(1 + sigma_t^2), so D = x - sigma eps(alpha x, t), t the training step
                  whose sigma_t is nearest (the network knows only those 1000 levels)

`Guided` adds classifier-free guidance, written once (`cfg_mix`) for both: the conditional and null-class
halves run in one network call. Guidance is linear, so mixing D (here) and mixing epsilon (the paper's
code) are the same; the paper's ancestral sampler, which also needs the learned variance, reads the guided
network output through `Guided.raw`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from minimaxdd.diffusion.edm import EDM, SIGMA_MAX, SIGMA_MIN
from minimaxdd.diffusion.guides import Guides
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int, guided: int | None = None
            ) -> torch.Tensor:
    """Classifier-free guidance uncond + scale (cond - uncond) on the first `guided` of `channels` channels.

    cond, uncond (N, C', H, W) with C' >= channels; channels past `guided` (DiT's quirk: it guides 3 of its
    4 latent channels) and past `channels` (a learned variance) are the conditional half's. None guides all.
    """
    k = channels if guided is None else guided
    out = cond[:, :channels].clone()                                    # (N, C, H, W)
    out[:, :k] = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([out, cond[:, channels:]], dim=1)                  # (N, C', H, W)


class Denoiser:
    """D(x; sigma, y) around a network: (N, C, H, W) float32, x = x0 + sigma n, sigma a Python float.

    The network runs in its own dtype (a bf16 copy runs without autocast) or under autocast at
    `precision`; the preconditioning arithmetic is float32. Subclasses set `formulation`.
    """

    formulation = ""
    clip_each_step = False     # whether `clip` clamps D at every step (DDPM's clip_denoised) or only the end

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        self.model = model
        self.num_classes, self.channels = model.num_classes, model.in_channels
        p0 = next(model.parameters(), None)
        self.dtype = torch.float32 if p0 is None else p0.dtype
        device = p0.device if p0 is not None else "cpu"
        self.precision = resolve_precision(precision, device) if self.dtype == torch.float32 else "fp32"

    def __call__(self, x: torch.Tensor, sigma: float, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def round_sigma(self, sigma: float) -> float:
        """The nearest noise level the network knows (every level, for continuous formulations)."""
        return sigma

    def sigma_range(self) -> tuple[float, float]:
        """The lowest and highest noise level a sampling grid should span."""
        raise NotImplementedError


class EDMDenoiser(Denoiser):
    """EDM's preconditioning (`minimaxdd.diffusion.edm.EDM.denoise`) around a backbone F(x_in, c_noise, y)."""

    formulation = "edm"

    def __init__(self, model: nn.Module, precision: str = "fp32", edm: EDM | None = None) -> None:
        super().__init__(model, precision)
        self.edm = edm or EDM()

    def _net(self, x_in: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(x_in.to(self.dtype), c_noise, labels)

    def __call__(self, x: torch.Tensor, sigma: float, y: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            return self.edm.denoise(self._net, x, sigma, y)

    def sigma_range(self) -> tuple[float, float]:
        return SIGMA_MIN, SIGMA_MAX      # Karras et al. 2022, Table 1 ("Sampling")


class VPDenoiser(Denoiser):
    """The DDPM formulation (`minimaxdd.diffusion.schedule.Diffusion`, 1000 steps) as a denoiser.

    `raw(x_t, t, y)` is the network itself on the DDPM state (epsilon, and the learned variance when it has
    one); `__call__` is D in EDM's scaling at the training step nearest to sigma (EDM's iDDPMPrecond does
    the same rounding: Karras et al. 2022, Appendix C.3.4).
    """

    formulation = "ddpm"
    clip_each_step = True      # improved-diffusion / DiT clip the predicted x0 at every step (clip_denoised)

    def __init__(self, model: nn.Module, precision: str = "fp32", diffusion: Diffusion | None = None) -> None:
        super().__init__(model, precision)
        self.diffusion = diffusion or Diffusion()
        acp = self.diffusion.np["alphas_cumprod"]
        self.sigmas = np.sqrt((1 - acp) / acp)                           # (T,) float64, increasing in t
        self._log_sigmas = np.log(self.sigmas)

    def step(self, sigma: float) -> int:
        """The training step whose noise level is nearest to sigma (in log sigma)."""
        return int(np.abs(self._log_sigmas - math.log(sigma)).argmin())

    def round_sigma(self, sigma: float) -> float:
        return float(self.sigmas[self.step(sigma)]) if sigma > 0 else 0.0

    def sigma_range(self) -> tuple[float, float]:
        return float(self.sigmas[0]), float(self.sigmas[-1])

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network's output at the DDPM state x_t (N, C, H, W), training steps t (N,): (N, C or 2C, H, W),
        float32."""
        with autocast(x_t.device, self.precision):
            return self.model(x_t.to(self.dtype), t, y).float()

    def __call__(self, x: torch.Tensor, sigma: float, y: torch.Tensor) -> torch.Tensor:
        t = torch.full((x.shape[0],), self.step(sigma), dtype=torch.long, device=x.device)  # (N,)
        alpha = 1 / math.sqrt(1 + sigma ** 2)
        eps = self.raw(alpha * x, t, y)[:, :self.channels]              # (N, C, H, W)
        return x.float() - sigma * eps


PRECONDITIONINGS: dict[str, type[Denoiser]] = {"ddpm": VPDenoiser, "edm": EDMDenoiser}


def as_denoiser(model: nn.Module, formulation: str, precision: str = "fp32") -> Denoiser:
    """The model of a formulation ("ddpm" or "edm", as checkpoints record it) behind the one interface."""
    if formulation not in PRECONDITIONINGS:
        raise ValueError(f"unknown formulation {formulation!r}; choose one of {', '.join(PRECONDITIONINGS)}")
    return PRECONDITIONINGS[formulation](model, precision)


class Guided:
    """A denoiser with its labels bound and classifier-free guidance at `scale` (1 = the conditional model alone).

    `__call__(x, sigma)` is the guided D (clamped to [-1, 1] when `clip` and the formulation clips every step);
    `raw(x_t, t)` the guided network output of a `VPDenoiser` (its learned variance from the conditional half).
    `guided_channels` limits guidance to the first k channels (the official DiT sampling script's quirk).
    `guides` (`minimaxdd.diffusion.guides.Guides`): guidance only on an interval of sigma, mode guidance and the
    deviation term, applied to D in both calls (to raw's epsilon through D = x - sigma eps).
    """

    def __init__(self, denoiser: Denoiser, y: torch.Tensor, scale: float = 1.0, guided_channels: int | None = None,
                 clip: bool = False, guides: Guides | None = None) -> None:
        self.denoiser, self.y, self.scale, self.guided_channels = denoiser, y, scale, guided_channels
        self.clip = clip and denoiser.clip_each_step
        self.null = torch.full_like(y, denoiser.num_classes)              # (N,) the null class
        self.guides = guides

    def _scale_at(self, sigma: float) -> float:
        return self.scale if self.guides is None or self.guides.guidance_here(sigma) else 1.0

    def _halves(self, fn: Callable, x: torch.Tensor, level: float | torch.Tensor, scale: float) -> torch.Tensor:
        """fn on the conditional and null-class halves in one call, mixed; fn alone on y at scale 1."""
        if scale == 1.0:
            return fn(x, level, self.y)
        cond, uncond = fn(torch.cat([x, x]), level, torch.cat([self.y, self.null])).chunk(2)
        return cfg_mix(cond, uncond, scale, x.shape[1], self.guided_channels)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        D = self._halves(self.denoiser, x, sigma, self._scale_at(sigma))  # (N, C, H, W)
        if self.guides is not None:
            D = self.guides.adjust(D, sigma)
        return D.clamp(-1, 1) if self.clip else D

    def raw(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.denoiser, VPDenoiser):
            raise TypeError("the raw network output is the DDPM formulation's (epsilon and variance)")
        den = self.denoiser
        sigma = float(den.sigmas[int(t[0])])                                # every image is at the same step

        def net(x: torch.Tensor, steps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return den.raw(x, steps.repeat(len(x) // len(steps)), y)   # (2N,) for the two halves
        out = self._halves(net, x_t, t, self._scale_at(sigma))              # (N, C or 2C, H, W)
        if self.guides is None or not self.guides.changes_D(sigma):
            return out
        C = x_t.shape[1]
        return torch.cat([self.guides.adjust_eps(out[:, :C], x_t.float(), sigma), out[:, C:]], dim=1)
