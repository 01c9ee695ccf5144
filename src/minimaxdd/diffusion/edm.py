"""The EDM formulation (Karras et al. 2022), beside the paper's DDPM one (`minimaxdd.diffusion.schedule`).

`EDM` wraps any backbone F(x, c_noise, y) in EDM's preconditioning, draws training noise levels and
computes the weighted loss on D's clean-image estimate (the minimax terms read the same estimate).
Sampling is shared with the DDPM formulation: `minimaxdd.diffusion.denoisers` puts both behind one
denoiser interface and `minimaxdd.diffusion.sampling` runs the solvers on it.
Facts and constants from the paper and NVlabs/edm (training/networks.py EDMPrecond,
training/loss.py EDMLoss, generate.py edm_sampler); the code is ours.
"""
from __future__ import annotations

from typing import Callable

import torch

from minimaxdd.diffusion.schedule import NUM_TIMESTEPS, linear_betas, mean_flat

SIGMA_DATA = 0.5        # std of the data in [-1, 1]: Karras et al. 2022, Sec. 5 and Table 1; edm EDMPrecond sigma_data
P_MEAN, P_STD = -1.2, 1.2   # ln(sigma) ~ N(P_MEAN, P_STD^2): Karras et al. 2022, Table 1 ("Training"); edm EDMLoss
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0   # sampling range: Karras et al. 2022, Table 1 ("Sampling"); edm generate.py
RHO = 7.0               # time-step exponent of Eq. 5: Karras et al. 2022, Sec. 3 and Table 1
LEVELS = ("lognormal", "ddpm")   # how training draws sigma: EDM's lognormal, or the paper's DDPM timesteps
WEIGHTINGS = ("edm", "ddpm")     # the diffusion loss's weight: EDM's lambda(sigma), or the paper's L_simple


def ddpm_sigmas(T: int = NUM_TIMESTEPS) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of the paper's T linear-beta steps (T,) float32: the noise level, in
    data units, of DDPM step t under the VP-to-EDM correspondence x_t = sqrt(abar_t) (x0 + sigma_t n)
    (Karras et al. 2022, Sec. 2 and App. C.1). 0.01 at t = 0, 157 at t = 999."""
    abar = torch.as_tensor(linear_betas(T)).neg().add(1).cumprod(0)
    return ((1 - abar) / abar).sqrt().float()

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

    def __init__(self, levels: str = "lognormal", weighting: str = "edm") -> None:
        """`levels`: how `draw_level` draws training noise levels (a value of LEVELS): EDM's lognormal, or
        "ddpm", the paper's timesteps (uniform over its 1000 linear-beta steps) mapped to sigma (`ddpm_sigmas`).
        `weighting` (a value of WEIGHTINGS): EDM's loss weight, or "ddpm", the weight that gives the network's
        output F the gradient the paper's L_simple gives its epsilon (`loss_weight`). Minimax fine-tuning under
        EDM uses both "ddpm" to train on the paper's objective (`training.finetune.EDM_TRANSFERS`)."""
        if levels not in LEVELS:
            raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.levels, self.weighting = levels, weighting

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
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2: a unit-weight loss on F (Table 1).

        With weighting "ddpm": 1 / (sigma c_out). The paper's L_simple is |eps_hat - eps|^2 = |D - x0|^2 /
        sigma^2 on an epsilon with d D / d eps = -sigma, so its gradient on eps has norm 2 |D - x0| / sigma (per
        element); this weight gives F (d D / d F = c_out) the same, at every sigma."""
        if self.weighting == "ddpm":
            return 1 / (sigma * self.precond(sigma)[1])
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
        """n training noise levels sigma (n,): ln sigma ~ N(P_MEAN, P_STD^2), one randn call on `g`; with
        levels "ddpm", sigma_t of a timestep uniform over the paper's 1000 steps, one randint call."""
        if self.levels == "ddpm":
            return ddpm_sigmas()[torch.randint(0, NUM_TIMESTEPS, (n,), generator=g)]
        return (self.p_mean + self.p_std * torch.randn(n, generator=g)).exp()

    def paper_output_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma / c_out = sqrt(sigma^2 + sigma_data^2) / sigma_data (any shape): the factor that gives a term on
        the clean-image estimate, through F, the gradient the paper's d x0_hat / d eps_hat = -sigma gives it through
        epsilon. With weighting "ddpm" and the paper's levels, every per-sample gradient on the network's output
        is then the paper's (the transfer `paper` of `training.finetune`)."""
        return (sigma ** 2 + self.sigma_data ** 2).sqrt() / self.sigma_data

    def paper_term_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """(sigma / c_out)^2 = 1 + sigma^2 / sigma_data^2 (any shape): what the paper's DDPM formulation gives
        a term on the clean-image estimate, relative to its diffusion loss, beyond what EDM gives it.

        In the paper, x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar), so d x0_hat / d eps_hat = -sigma,
        and the diffusion loss is unit-weight on eps_hat, whose error is (x0 - x0_hat) / sigma. Under EDM,
        d D / d F = c_out and the loss is unit-weight on F, whose error is (D - x0) / c_out. At one sigma and
        one error of the estimate, (term gradient) / (diffusion gradient) on the network's output is
        proportional to sigma^2 in the paper and to c_out^2 here: scaling the terms' gradient by
        (sigma / c_out)^2 restores the paper's ratio (BENCHMARKS.md, "The minimax terms' gradient share")."""
        return 1 + (sigma / self.sigma_data) ** 2

    def training_losses(self, net: Backbone, x0: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample terms on x = x0 + sigma * noise, with the keys of `Diffusion.training_losses`.

        `loss` = lambda(sigma) * mean over C, H, W of (D - x0)^2 (EDM's weighted loss, (N,));
        `mse` = the unweighted mean squared error of D (N,), for logging; `x0_hat` = D (N, C, H, W),
        with gradients (the minimax terms use it); `sigma` (N,), the levels, for terms that weight by them.
        """
        s = _per_sample(sigma, x0)                                       # (N,)
        x = x0 + s.view(-1, 1, 1, 1) * noise                             # (N, C, H, W)
        D = self.denoise(net, x, s, y)                                   # (N, C, H, W) float32
        mse = mean_flat((D - x0.float()) ** 2)                           # (N,)
        return {"loss": self.loss_weight(s) * mse, "mse": mse, "x0_hat": D, "sigma": s}
