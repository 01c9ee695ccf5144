import math

import pytest
import torch
import torch.nn as nn
from oracles import MU, GaussianBackbone, S, exact_D

from minimaxdd.diffusion.edm import EDM, P_MEAN, P_STD, RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN


def test_constants_are_edms():
    assert (SIGMA_DATA, P_MEAN, P_STD, SIGMA_MIN, SIGMA_MAX, RHO) == (0.5, -1.2, 1.2, 0.002, 80.0, 7.0)

@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 2.0, 80.0])
def test_preconditioning_identities(sigma):
    edm = EDM()
    s = torch.tensor(sigma, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.precond(s)
    sd = SIGMA_DATA
    assert math.isclose(c_in ** 2 * (sigma ** 2 + sd ** 2), 1, rel_tol=1e-12)          # unit-variance input
    assert math.isclose(edm.loss_weight(s) * c_out ** 2, 1, rel_tol=1e-12)            # unit-weight F loss
    assert math.isclose(c_skip + (c_out / sd) ** 2, 1, rel_tol=1e-12)
    assert math.isclose(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2), rel_tol=1e-12)
    assert math.isclose(c_noise, math.log(sigma) / 4, rel_tol=1e-12)

def test_denoise_feeds_the_network_c_in_x_and_log_sigma_over_4():
    seen = {}

    def zero_net(x_in, c_noise, y):
        seen.update(x_in=x_in, c_noise=c_noise, y=y)
        return torch.zeros_like(x_in)

    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 1.0, 30.0])
    y = torch.tensor([0, 2, 5])
    D = EDM().denoise(zero_net, x, sigma, y)
    c_skip, _, c_in, _ = EDM().precond(sigma)
    assert torch.allclose(seen["x_in"], c_in.view(-1, 1, 1, 1) * x)
    assert seen["c_noise"].shape == (3,) and seen["c_noise"].dtype == torch.float32
    assert torch.allclose(seen["c_noise"], sigma.log() / 4)
    assert torch.equal(seen["y"], y)
    assert torch.allclose(D, c_skip.view(-1, 1, 1, 1) * x)                               # F = 0: D = c_skip x
    assert D.dtype == torch.float32

def test_denoise_uses_the_first_channels_of_a_learned_variance_network():
    x = torch.randn(4, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    plain, learned = GaussianBackbone([0.1, 0.2]), GaussianBackbone([0.1, 0.2], learn_sigma=True)
    y, sigma = torch.tensor([0, 1, 0, 1]), torch.tensor([0.1, 0.5, 2.0, 10.0])
    a, b = EDM().denoise(plain, x, sigma, y), EDM().denoise(learned, x, sigma, y)
    assert torch.equal(a, b)
    mu = torch.tensor([0.1, 0.2, 0.1, 0.2], dtype=torch.float64).view(-1, 1, 1, 1)   # each label's data mean
    assert torch.allclose(a.double(), exact_D(x.double(), sigma.double().view(-1, 1, 1, 1), mu), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        EDM().denoise(lambda x_in, c, y: torch.zeros(4, 3, 1, 1), x, sigma, y)

def test_draw_level_is_lognormal_from_one_randn_call():
    n = 100_000
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sigma = EDM().draw_level(n, g)
    z = torch.randn(n, generator=ref)
    assert sigma.shape == (n,) and torch.allclose(sigma.log(), P_MEAN + P_STD * z, atol=1e-5)
    assert torch.equal(g.get_state(), ref.get_state())                                  # exactly one draw of n
    assert abs(sigma.log().mean().item() - P_MEAN) < 0.02 * abs(P_MEAN)
    assert abs(sigma.log().std().item() - P_STD) < 0.02 * P_STD

@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_training_loss_of_the_exact_denoiser_has_its_closed_form(sigma):
    n = 20_000
    g = torch.Generator().manual_seed(4)
    x0 = MU + S * torch.randn(n, 1, 2, 2, generator=g)
    noise = torch.randn(n, 1, 2, 2, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    sig = torch.full((n,), sigma)
    edm = EDM()
    terms = edm.training_losses(GaussianBackbone([MU, 0.0]), x0, sig, y, noise)
    assert set(terms) == {"loss", "mse", "x0_hat", "sigma"} and terms["loss"].shape == (n,)
    assert terms["x0_hat"].shape == x0.shape
    post_var = S ** 2 * sigma ** 2 / (S ** 2 + sigma ** 2)                               # E (D* - x0)^2 per pixel
    weight = float(edm.loss_weight(torch.tensor(sigma)))
    assert abs(terms["mse"].mean().item() / post_var - 1) < 0.02
    assert abs(terms["loss"].mean().item() / (weight * post_var) - 1) < 0.02
    # A denoiser of the wrong data mean loses more; at small sigma every denoiser is nearly D = x, hence the margin.
    wrong = edm.training_losses(GaussianBackbone([MU + 0.2, 0.0]), x0, sig, y, noise)
    assert wrong["loss"].mean() > (1.05 if sigma >= 0.5 else 1.0) * terms["loss"].mean()

def test_training_loss_passes_gradients_through_x0_hat():
    lin = nn.Conv2d(2, 2, 1)
    x0 = torch.randn(3, 2, 4, 4)
    terms = EDM().training_losses(lambda x, c, y: lin(x), x0, torch.tensor([0.1, 1.0, 5.0]),
                                  torch.zeros(3, dtype=torch.long), torch.randn_like(x0))
    (terms["loss"].mean() + terms["x0_hat"].square().mean()).backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
