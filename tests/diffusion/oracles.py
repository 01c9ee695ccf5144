"""Models whose exact answer is known, shared by the diffusion tests: with them a correct sampler's only error
is its own discretisation."""
import numpy as np
import torch
import torch.nn as nn

from minimaxdd.diffusion.dit import DiT, DiTConfig
from minimaxdd.diffusion.edm import EDM
from minimaxdd.diffusion.schedule import linear_betas

MU, S = 0.3, 0.4     # the Gaussian data N(MU, S^2) of the oracle tests

def exact_D(x, sigma, mu=MU, s=S):
    """The exact denoiser of N(mu, s^2) data: E[x0 | x0 + sigma n = x]."""
    return mu + s ** 2 / (s ** 2 + sigma ** 2) * (x - mu)

class GaussianBackbone(nn.Module):
    """A backbone F that makes EDM's D exactly D* of per-class Gaussian data N(mu[y], S^2).

    It inverts the preconditioning: sigma = exp(4 c_noise), x = x_in / c_in, F = (D* - c_skip x) / c_out.
    With learn_sigma it appends C junk channels, which D must ignore.
    """

    def __init__(self, mu, channels=1, size=1, learn_sigma=False, s=S):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))   # (K + 1,) the null class last
        self.num_classes, self.in_channels, self.input_size = len(mu) - 1, channels, size
        self.learn_sigma, self.calls, self.s = learn_sigma, [], s

    def forward(self, x_in, c_noise, y):
        self.calls.append(y.clone())
        sigma = torch.exp(4 * c_noise.double()).view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = EDM().precond(sigma)
        x = x_in.double() / c_in
        F = (exact_D(x, sigma, self.mu[y].view(-1, 1, 1, 1), self.s) - c_skip * x) / c_out
        return torch.cat([F, torch.full_like(F, 7.0)], 1) if self.learn_sigma else F

class Oracle(nn.Module):
    """Knows the data: every class c is the single point target[c]; returns the exact epsilon.

    With it, any correct sampler must land on target[c] (up to the final noise level).
    """

    def __init__(self, target, learn_sigma=False, null_target=None, v=0.0):
        super().__init__()
        self.register_buffer("target", target)                     # (K, C, H, W)
        self.null = null_target if null_target is not None else target.mean(0)
        self.num_classes, self.in_channels, self.input_size = len(target), target.shape[1], target.shape[-1]
        self.learn_sigma, self.v = learn_sigma, v   # v: the constant variance output with learn_sigma
        self.acp = torch.tensor(np.cumprod(1 - linear_betas()), dtype=torch.float32)

    def forward(self, x, t, y):
        x0 = torch.where((y == self.num_classes).view(-1, 1, 1, 1), self.null.expand_as(x),
                         self.target[y.clamp(max=self.num_classes - 1)])
        a = self.acp[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.full_like(eps, self.v)], 1) if self.learn_sigma else eps

def targets():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 2, 4, 4, generator=g) * 1.6 - 0.8

class GaussianOracle(nn.Module):
    """Class c is N(mu[c], s^2) per pixel; returns the exact epsilon (the posterior mean of x0 is linear)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s
        self.num_classes, self.in_channels, self.input_size = len(mu), mu.shape[1], mu.shape[-1]
        self.acp = torch.tensor(np.cumprod(1 - linear_betas()), dtype=torch.float32)

    def forward(self, x, t, y):
        a = self.acp[t].view(-1, 1, 1, 1)
        m = self.mu[y]
        x0 = m + a.sqrt() * self.s ** 2 * (x - a.sqrt() * m) / (a * self.s ** 2 + 1 - a)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

class LabelledNet(nn.Module):
    """F = 0.1 x_in + (y + 1): the output depends on the label, so guidance is visible."""

    num_classes, in_channels, input_size = 3, 2, 4

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.calls = []

    def forward(self, x_in, c_noise, y):
        self.calls.append(y.clone())
        return self.scale * x_in + (y.float() + 1).view(-1, 1, 1, 1) + torch.sin(3 * x_in)

def tiny_dit():
    torch.manual_seed(0)
    m = DiT(DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                      num_classes=3, learn_sigma=True))
    with torch.no_grad():   # DiT zero-initialises its output; randomise so the outputs mean something
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()
