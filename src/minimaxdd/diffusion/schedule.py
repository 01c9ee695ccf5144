"""Gaussian diffusion as DiT trains it: 1000 linear-beta steps, epsilon prediction, learned variance.

The schedule (`Diffusion`) is separate from the networks and from the samplers (`sampling.py`).
Constants from Ho et al. 2020 (linear betas 1e-4..0.02, T=1000) and Nichol & Dhariwal 2021
(learned-variance interpolation and its variational-bound term), both as DiT uses them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_TIMESTEPS = 1000          # Ho et al. 2020; DiT `create_diffusion(timestep_respacing="")`
BETA_START, BETA_END = 1e-4, 0.02


def linear_betas(T: int = NUM_TIMESTEPS) -> np.ndarray:
    # Scaled so any T spans the same range as T=1000 (improved-diffusion's get_named_beta_schedule).
    scale = 1000 / T
    return np.linspace(scale * BETA_START, scale * BETA_END, T, dtype=np.float64)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 levels (Ho et al. 2020, the t=0 decoder term)."""
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

    def __init__(self, betas: np.ndarray | None = None, timestep_map: np.ndarray | None = None):
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
    def q_sample(self, x0, t, noise):
        return self.coef("sqrt_acp", t, x0.ndim) * x0 + self.coef("sqrt_1m_acp", t, x0.ndim) * noise

    def predict_x0(self, x_t, t, eps):
        return self.coef("sqrt_recip_acp", t, x_t.ndim) * x_t - self.coef("sqrt_recipm1_acp", t, x_t.ndim) * eps

    def predict_eps(self, x_t, t, x0):
        return (self.coef("sqrt_recip_acp", t, x_t.ndim) * x_t - x0) / self.coef("sqrt_recipm1_acp", t, x_t.ndim)

    def q_posterior(self, x0, x_t, t):
        n = x_t.ndim
        mean = self.coef("post_c1", t, n) * x0 + self.coef("post_c2", t, n) * x_t
        return mean, self.coef("post_logvar", t, n)

    def p_mean_logvar(self, out, x_t, t, channels: int):
        """Mean and log-variance of p(x_{t-1} | x_t) from the network output `out`.

        With learned sigma, out = [eps, v] and the log-variance interpolates between the clipped
        posterior variance and beta_t with weight (v + 1) / 2 (Nichol & Dhariwal 2021, Eq. 15);
        otherwise it is the clipped posterior variance (fixed-small, as DDPM samples).
        """
        n = x_t.ndim
        eps = out[:, :channels]
        if out.shape[1] == 2 * channels:
            frac = (out[:, channels:] + 1) / 2
            logvar = frac * self.coef("log_betas", t, n) + (1 - frac) * self.coef("post_logvar", t, n)
        else:
            logvar = self.coef("post_logvar", t, n).expand_as(x_t)
        x0 = self.predict_x0(x_t, t, eps)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, logvar, x0, eps

    # ---- training
    def training_losses(self, model, x0, t, y, noise) -> dict[str, torch.Tensor]:
        """Per-sample losses: `mse` (epsilon), `vb` (learned variance only) and `loss` = mse + vb.

        Also returns `x0_hat`, the predicted clean sample, with gradients (the minimax terms use it).
        As in DiT (loss_type MSE), the VB term trains only the variance: the mean is detached in it.
        """
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, self.model_t(t), y).float()
        C = x0.shape[1]
        eps = out[:, :C]
        mse = mean_flat((noise - eps) ** 2)
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

    def sample_t(self, n: int, g: torch.Generator, device) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (n,), generator=g, device=g.device).to(device)

