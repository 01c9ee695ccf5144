"""Gaussian diffusion as DiT trains it: 1000 linear-beta steps, epsilon prediction, learned variance.

The schedule (`Diffusion`) is separate from the networks (`minimaxdd.diffusion.networks`) and from
sampling (`minimaxdd.diffusion.denoisers` puts a model of this formulation behind the one denoiser
interface; `minimaxdd.diffusion.sampling` samples it).
Constants from Ho et al. 2020 (linear betas 1e-4..0.02, T=1000) and Nichol & Dhariwal 2021
(learned-variance interpolation and its variational-bound term), both as DiT uses them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

NUM_TIMESTEPS = 1000          # Ho et al. 2020; DiT `create_diffusion(timestep_respacing="")`
BETA_START, BETA_END = 1e-4, 0.02   # Ho et al. 2020, Sec. 4; DiT's "linear" schedule (gaussian_diffusion.py)


def linear_betas(T: int = NUM_TIMESTEPS) -> np.ndarray:
    """The T linear betas (T,) float64 from BETA_START to BETA_END, as for T = 1000."""
    # Scaled so any T spans the same range as T=1000 (improved-diffusion's get_named_beta_schedule).
    scale = 1000 / T
    return np.linspace(scale * BETA_START, scale * BETA_END, T, dtype=np.float64)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (N, ...) -> (N,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (shapes broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation of the standard normal CDF, as improved-diffusion's losses.py computes it.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 levels (Ho et al. 2020, the t=0 decoder term).

    Elementwise, in nats. Bins are 2/255 wide (hence +-1/255 around x); the edge bins reach to
    -+infinity (x beyond -+0.999); probabilities are floored at 1e-12. All three as in
    improved-diffusion's losses.py, which DiT copies into diffusion/diffusion_utils.py."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


class Diffusion:
    """Coefficients of a discrete diffusion, optionally respaced to a subset of the training steps.

    `timestep_map[i]` is the training-time step that respaced step i stands for; the network is
    always called with that original index.
    """

    def __init__(self, betas: np.ndarray | None = None, timestep_map: np.ndarray | None = None) -> None:
        betas = linear_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)
        acp = np.cumprod(1.0 - betas)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        self.np = {
            "betas": betas, "alphas_cumprod": acp, "alphas_cumprod_prev": acp_prev,
            "sqrt_acp": np.sqrt(acp), "sqrt_1m_acp": np.sqrt(1.0 - acp),
            "sqrt_recip_acp": np.sqrt(1.0 / acp), "sqrt_recipm1_acp": np.sqrt(1.0 / acp - 1),
            "post_var": post_var,
            # log of the posterior variance, clipped because it is 0 at t=0
            "post_logvar": np.log(np.append(post_var[1], post_var[1:])),
            "post_c1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "post_c2": (1.0 - acp_prev) * np.sqrt(1.0 - betas) / (1.0 - acp),
            "log_betas": np.log(betas),
        }
        self._cache: dict = {}

    @classmethod
    def respaced(cls, steps: int, T: int = NUM_TIMESTEPS) -> "Diffusion":
        """The schedule restricted to `steps` evenly spaced training steps (improved-diffusion's respacing)."""
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in 1..{T}, got {steps}")
        if steps == T:
            return cls(linear_betas(T))
        stride = (T - 1) / (steps - 1) if steps > 1 else 0
        use = sorted({int(round(i * stride)) for i in range(steps)})
        acp = np.cumprod(1.0 - linear_betas(T))
        last, betas = 1.0, []
        for t in use:
            betas.append(1 - acp[t] / last)
            last = acp[t]
        return cls(np.array(betas), np.array(use))

    def coef(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Coefficient `name` at integer steps t (N,), shaped (N, 1, ..., 1) in float32 on t's device."""
        key = (name, t.device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.np[name], dtype=torch.float32, device=t.device)
        return self._cache[key][t].view(-1, *([1] * (ndim - 1)))

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The training-time step to feed the network for (respaced) step t."""
        key = ("map", t.device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.timestep_map, dtype=torch.long, device=t.device)
        return self._cache[key][t]

    # ---- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x0) for the given noise: (N, C, H, W), t (N,)."""
        return self.coef("sqrt_acp", t, x0.ndim) * x0 + self.coef("sqrt_1m_acp", t, x0.ndim) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean sample that x_t and epsilon imply: (N, C, H, W)."""
        return self.coef("sqrt_recip_acp", t, x_t.ndim) * x_t - self.coef("sqrt_recipm1_acp", t, x_t.ndim) * eps

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The epsilon that x_t and a clean sample imply: (N, C, H, W)."""
        return (self.coef("sqrt_recip_acp", t, x_t.ndim) * x_t - x0) / self.coef("sqrt_recipm1_acp", t, x_t.ndim)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (N, C, H, W) and clipped log-variance (N, 1, 1, 1) of q(x_{t-1} | x_t, x0)."""
        n = x_t.ndim
        mean = self.coef("post_c1", t, n) * x0 + self.coef("post_c2", t, n) * x_t
        return mean, self.coef("post_logvar", t, n)

    def p_mean_logvar(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, channels: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from the network output `out`.

        With learned sigma, out = [eps, v] and the log-variance interpolates between the clipped
        posterior variance and beta_t with weight (v + 1) / 2 (Nichol & Dhariwal 2021, Eq. 15);
        otherwise it is the clipped posterior variance (fixed-small, as DDPM samples).
        Returns (mean, logvar, x0, eps), each (N, C, H, W).
        """
        n = x_t.ndim
        eps = out[:, :channels]                                       # (N, C, H, W)
        if out.shape[1] == 2 * channels:
            frac = (out[:, channels:] + 1) / 2                        # (N, C, H, W) in [0, 1] for v in [-1, 1]
            logvar = frac * self.coef("log_betas", t, n) + (1 - frac) * self.coef("post_logvar", t, n)
        else:
            logvar = self.coef("post_logvar", t, n).expand_as(x_t)
        x0 = self.predict_x0(x_t, t, eps)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, logvar, x0, eps

    # ---- training
    def draw_level(self, n: int, g: torch.Generator) -> torch.Tensor:
        """The noise level of each of `n` training samples: a timestep, uniform over the training steps (n,)."""
        return torch.randint(0, self.num_timesteps, (n,), generator=g)

    def training_losses(self, model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample losses: `mse` (epsilon), `vb` (learned variance only) and `loss` = mse + vb.

        Also returns `x0_hat`, the predicted clean sample, with gradients (the minimax terms use it).
        As in DiT (loss_type MSE), the VB term trains only the variance: the mean is detached in it.
        """
        x_t = self.q_sample(x0, t, noise)                             # (N, C, H, W)
        out = model(x_t, self.model_t(t), y).float()                  # (N, C or 2C, H, W)
        C = x0.shape[1]
        eps = out[:, :C]                                              # (N, C, H, W)
        mse = mean_flat((noise - eps) ** 2)                           # (N,)
        terms = {"mse": mse, "x0_hat": self.predict_x0(x_t, t, eps)}
        if out.shape[1] == 2 * C:
            frozen = torch.cat([eps.detach(), out[:, C:]], dim=1)
            mean, logvar, _, _ = self.p_mean_logvar(frozen, x_t, t, C)
            true_mean, true_logvar = self.q_posterior(x0, x_t, t)
            kl = mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
            nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)) / math.log(2.0)
            terms["vb"] = torch.where(t == 0, nll, kl)
            terms["loss"] = mse + terms["vb"]
        else:
            terms["loss"] = mse
        return terms

