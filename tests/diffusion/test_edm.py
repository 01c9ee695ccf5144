import math

import pytest
import torch
import torch.nn as nn

from minimaxdd.diffusion.dit import DiT, DiTConfig
from minimaxdd.diffusion.edm import (
    EDM,
    EDM_DEFAULT_STEPS,
    EDM_SAMPLERS,
    P_MEAN,
    P_STD,
    RHO,
    SIGMA_DATA,
    SIGMA_MAX,
    SIGMA_MIN,
    denoise_from,
    dpm_solver,
    euler,
    generate_edm,
    guided_denoiser,
    heun,
    network_calls,
    sigma_steps,
)
from minimaxdd.diffusion.samplers import PerImageNoise, image_seed

MU, S = 0.3, 0.4     # the Gaussian data N(MU, S^2) of the oracle tests


def exact_D(x, sigma, mu=MU, s=S):
    """The exact denoiser of N(mu, s^2) data: E[x0 | x0 + sigma n = x]."""
    return mu + s ** 2 / (s ** 2 + sigma ** 2) * (x - mu)


class GaussianBackbone(nn.Module):
    """A backbone F that makes EDM's D exactly D* of per-class Gaussian data N(mu[y], S^2).

    It inverts the preconditioning: sigma = exp(4 c_noise), x = x_in / c_in, F = (D* - c_skip x) / c_out.
    With learn_sigma it appends C junk channels, which D must ignore.
    """

    def __init__(self, mu, channels=1, size=1, learn_sigma=False):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))   # (K + 1,) the null class last
        self.num_classes, self.in_channels, self.input_size = len(mu) - 1, channels, size
        self.learn_sigma, self.calls = learn_sigma, []

    def forward(self, x_in, c_noise, y):
        self.calls.append(y.clone())
        sigma = torch.exp(4 * c_noise.double()).view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = EDM().precond(sigma)
        x = x_in.double() / c_in
        F = (exact_D(x, sigma, self.mu[y].view(-1, 1, 1, 1)) - c_skip * x) / c_out
        return torch.cat([F, torch.full_like(F, 7.0)], 1) if self.learn_sigma else F


# ---- preconditioning and loss


def test_constants_are_edms():
    assert (SIGMA_DATA, P_MEAN, P_STD, SIGMA_MIN, SIGMA_MAX, RHO) == (0.5, -1.2, 1.2, 0.002, 80.0, 7.0)
    assert EDM_DEFAULT_STEPS["heun"] == 18 and network_calls("heun", 18) == 35
    assert set(EDM_SAMPLERS) == set(EDM_DEFAULT_STEPS) == {"heun", "euler", "dpm-solver"}


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
    assert set(terms) == {"loss", "mse", "x0_hat"} and terms["loss"].shape == (n,)
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


# ---- samplers


def test_sigma_steps_follow_eq5():
    sig = sigma_steps(18)
    assert sig.shape == (19,) and sig[-1] == 0
    assert math.isclose(sig[0], SIGMA_MAX, rel_tol=1e-12) and math.isclose(sig[-2], SIGMA_MIN, rel_tol=1e-12)
    assert bool((sig[1:] < sig[:-1]).all())
    i = torch.arange(18, dtype=torch.float64)
    closed = (SIGMA_MAX ** (1 / RHO) + i / 17 * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    assert torch.allclose(sig[:-1], closed, rtol=1e-12)
    assert torch.equal(sigma_steps(1), torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        sigma_steps(0)


def _oracle_run(sampler, steps, n=20_000, dtype=torch.float32):
    """Samples of N(MU, S^2) by `sampler` with the exact D*, and the exact ODE solution from the same noise."""
    z = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(5)).to(dtype)
    sig = sigma_steps(steps)
    calls = []

    def fn(x, sigma):
        calls.append(sigma)
        return exact_D(x, sigma)

    out = sampler(fn, float(sig[0]) * z, sig)
    # the probability-flow ODE of Gaussian data: x(sigma) - mu scales with sqrt(s^2 + sigma^2)
    exact = MU + (SIGMA_MAX * z - MU) * S / math.sqrt(S ** 2 + SIGMA_MAX ** 2)
    return out, exact, len(calls)


def test_heun_is_algorithm_1_on_the_gaussian_ode():
    """On Gaussian data the ODE is linear, dx/dsigma = a(sigma) (x - mu) with a = sigma / (s^2 + sigma^2), so
    Heun's output is mu + K (x_T - mu), K the product of its per-step factors, worked out here by hand."""
    sig = [float(v) for v in sigma_steps(18)]
    a = lambda t: t / (S ** 2 + t ** 2)                                                  # noqa: E731
    K = 1.0
    for t, t_next in zip(sig[:-1], sig[1:]):
        h = t_next - t
        euler_factor = 1 + h * a(t)
        K *= 1 + h / 2 * (a(t) + a(t_next) * euler_factor) if t_next > 0 else euler_factor
    z = torch.randn(1000, 1, 1, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = heun(lambda x, s: exact_D(x, s), SIGMA_MAX * z, sigma_steps(18))
    assert torch.allclose(out, MU + K * (SIGMA_MAX * z - MU), rtol=1e-10, atol=1e-12)
    # its discretisation error: the rho = 7 grid halves sigma per step where sigma ~ s, and Heun overshoots there
    assert 1.04 < K / (S / math.hypot(S, SIGMA_MAX)) < 1.07


# (sampler, steps, bound on |std / exact std - 1|): the bounds sit above the measured truncation errors of each
# grid on N(0.3, 0.4^2) (heun 18: +5.9%, heun 35: +1.4%, euler 100: -2.9%, dpm-solver 20: +5.2%, dpm-solver 35: +1.5%).
ORACLE_CASES = [("heun", 18, 0.07), ("heun", 35, 0.02), ("euler", 100, 0.035), ("dpm-solver", 20, 0.06),
                ("dpm-solver", 35, 0.02)]


@pytest.mark.parametrize("name,steps,tol", ORACLE_CASES)
def test_samplers_map_noise_to_the_gaussian_data(name, steps, tol):
    out, exact, calls = _oracle_run(EDM_SAMPLERS[name], steps)
    assert calls == network_calls(name, steps)
    assert abs(out.mean().item() - exact.mean().item()) < 0.005 * S       # the mean is the ODE's fixed point
    assert abs(out.std().item() / exact.std().item() - 1) < tol
    # against the data itself, with the sampling error of 20000 draws (about 0.7% in mean and std)
    assert abs(out.mean().item() - MU) < 0.03 * S
    assert abs(out.std().item() / S - 1) < tol + 0.01


def test_heun_beats_euler_at_the_same_steps():
    h, exact, _ = _oracle_run(heun, 18)
    e, _, _ = _oracle_run(euler, 18)
    assert (h - exact).abs().max() < 0.5 * (e - exact).abs().max()
    assert abs(h.std().item() - S) < abs(e.std().item() - S)


def test_on_step_counts_steps():
    for sampler in (heun, euler, dpm_solver):
        ticks = []
        sampler(lambda x, s: exact_D(x, s), torch.ones(2, 1, 1, 1), sigma_steps(5), lambda: ticks.append(1))
        assert len(ticks) == 5


# ---- guidance and generation


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


def test_guidance_scale_one_calls_the_conditional_half_only():
    m = LabelledNet()
    y = torch.tensor([0, 2])
    x = torch.randn(2, 2, 4, 4)
    D = guided_denoiser(m, y, 1.0)(x, 1.5)
    assert len(m.calls) == 1 and torch.equal(m.calls[0], y)
    assert torch.allclose(D, EDM().denoise(m, x, 1.5, y))


def test_guidance_mixes_the_denoiser_outputs():
    m = LabelledNet()
    y = torch.tensor([0, 2, 1])
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        D = guided_denoiser(m, y, 2.0)(x, 0.7)
        assert len(m.calls) == 1 and torch.equal(m.calls[0], torch.tensor([0, 2, 1, 3, 3, 3]))  # one batched call
        D_c = EDM().denoise(m, x, 0.7, y)
        D_u = EDM().denoise(m, x, 0.7, torch.full_like(y, m.num_classes))
    assert not torch.allclose(D_c, D_u)
    assert torch.allclose(D, 2 * D_c - D_u, atol=1e-6, rtol=0)


def _tiny_dit():
    torch.manual_seed(0)
    m = DiT(DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                      num_classes=3, learn_sigma=True))
    with torch.no_grad():   # DiT zero-initialises its output; randomise so the outputs mean something
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generate_edm_is_batch_and_class_invariant(precision):
    m = _tiny_dit()
    labels = torch.tensor([0, 1, 2, 0, 1])
    seeds = [image_seed(7, int(c), i) for i, c in enumerate(labels)]
    kw = dict(steps=3, cfg_scale=1.5, precision=precision)
    full = generate_edm(m, labels, seeds, batch_size=5, **kw)
    assert full.shape == (5, 2, 4, 4) and full.dtype == torch.float32 and torch.isfinite(full).all()
    pieces = generate_edm(m, labels, seeds, batch_size=2, **kw)
    only = generate_edm(m, labels[[1, 4]], [seeds[1], seeds[4]], batch_size=1, **kw)   # class 1 only
    # x starts at sigma_max * noise (~80), where float32 steps are ~1e-5, and a batch of one takes other
    # matmul kernels: differences of a few 1e-5 on outputs of ~9 remain (a batch-dependent noise would give ~1)
    assert torch.allclose(full, pieces, atol=1e-4, rtol=0)
    assert torch.allclose(full[[1, 4]], only, atol=1e-4, rtol=0)
    assert not torch.allclose(full[0], full[3])                                          # different seeds


def test_generate_edm_matches_the_sampler_and_clips():
    m = GaussianBackbone([3.0, -3.0, 0.0], channels=1, size=2)
    labels = torch.tensor([0, 1])
    seeds = [image_seed(0, 0, 0), image_seed(0, 1, 1)]
    raw = generate_edm(m, labels, seeds, sampler="dpm-solver", steps=20)
    assert raw.shape == (2, 1, 2, 2)
    assert raw[0].mean() > 1.5 and raw[1].mean() < -1.5                                  # the classes' data
    z = torch.stack([torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(s)) for s in seeds])
    ref = dpm_solver(lambda x, s: exact_D(x, s, torch.tensor([3.0, -3.0]).view(-1, 1, 1, 1)),
                     SIGMA_MAX * z, sigma_steps(20))
    assert torch.allclose(raw, ref, atol=1e-4)
    clipped = generate_edm(m, labels, seeds, sampler="dpm-solver", steps=20, clip=True)
    assert torch.equal(clipped, raw.clamp(-1, 1)) and clipped.abs().max() <= 1
    with pytest.raises(ValueError, match="heun"):
        generate_edm(m, labels, seeds, sampler="ddpm")


# ---- starting from given images (SDEdit / prototypes)


def test_denoise_from_solves_the_ode_from_the_noised_images():
    """Gaussian data per class: from x0 + sigma n the probability-flow ODE gives mu + (x0 + sigma n - mu) *
    S / sqrt(S^2 + sigma^2) exactly; Heun on the tail of EDM's grid must land there, per image."""
    model = GaussianBackbone(torch.tensor([MU, -0.2, 0.0]))
    x0 = torch.linspace(-1, 1, 40).view(40, 1, 1, 1)
    y = torch.tensor([0, 1] * 20)
    seeds = [image_seed(3, int(c), i) for i, c in enumerate(y)]
    noise = PerImageNoise(seeds, (1, 1, 1), "cpu")()                     # the noise each image must get
    mu = model.mu[y].float().view(-1, 1, 1, 1)
    for sigma in (0.5, 2.0, 10.0):
        out = denoise_from(model, x0, y, sigma, seeds, steps=256)   # converges as the grid refines (64: 4e-3)
        exact = mu + (x0 + sigma * noise - mu) * S / math.sqrt(S ** 2 + sigma ** 2)
        assert (out - exact).abs().max() < 1e-3, sigma
    # a small sigma leaves the images nearly as they were; a batch size does not change any image
    near = denoise_from(model, x0, y, 0.003, seeds, steps=18)
    assert (near - x0).abs().max() < 0.01
    assert torch.equal(denoise_from(model, x0, y, 2.0, seeds, steps=18, batch_size=7),
                       denoise_from(model, x0, y, 2.0, seeds, steps=18, batch_size=64))
    with pytest.raises(ValueError, match="sigma must be positive"):
        denoise_from(model, x0, y, 0.0, seeds)
    with pytest.raises(ValueError, match="differ in length"):
        denoise_from(model, x0, y[:3], 1.0, seeds)
