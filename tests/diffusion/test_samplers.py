import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from minimaxdd.diffusion.samplers import (
    SAMPLERS,
    PerImageNoise,
    dpm_time_points,
    generate,
    guided_fn,
    image_seed,
)
from minimaxdd.diffusion.schedule import Diffusion, linear_betas


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


def test_respacing_keeps_the_cumulative_alphas():
    full = Diffusion()
    d = Diffusion.respaced(50)
    assert len(d.timestep_map) == 50 and d.timestep_map[0] == 0 and d.timestep_map[-1] == 999
    assert np.allclose(d.np["alphas_cumprod"], full.np["alphas_cumprod"][d.timestep_map])
    assert np.allclose(Diffusion.respaced(1000).np["betas"], full.np["betas"])
    with pytest.raises(ValueError):
        Diffusion.respaced(0)


def test_forward_process_and_inverse():
    d = Diffusion()
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(xt, t, noise), x0, atol=1e-3)
    assert torch.allclose(d.predict_eps(xt, t, x0), noise, atol=1e-3)
    # at t = 999 the signal is almost gone: sqrt(alpha_bar) ~ 0.0064
    assert math.isclose(float(d.np["sqrt_acp"][999]), 0.0064, abs_tol=5e-4)


def _vb_by_hand(d: Diffusion, t: torch.Tensor, v: float) -> torch.Tensor:
    """The VB term (bits per dimension) when the predicted mean is the true posterior mean.

    The log-variance is frac * log(beta_t) + (1 - frac) * log(posterior var), frac = (v + 1) / 2. For t > 0
    the term is KL(q || p) between Gaussians with equal means; for t = 0 it is -log2 of the mass of a
    2/255-wide bin centred on the mean, with DiT's tanh approximation of the normal CDF.
    """
    frac = (v + 1) / 2
    out = []
    for step in t.tolist():
        lv_q = d.np["post_logvar"][step]
        lv_p = frac * d.np["log_betas"][step] + (1 - frac) * lv_q
        if step > 0:
            out.append(0.5 * (-1 + lv_p - lv_q + math.exp(lv_q - lv_p)) / math.log(2))
        else:
            z = (1 / 255) / math.exp(0.5 * lv_p)
            cdf = lambda u: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
            out.append(-math.log(cdf(z) - cdf(-z)) / math.log(2))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_training_losses(learn_sigma):
    d = Diffusion()
    tg = targets()
    model = Oracle(tg, learn_sigma, v=0.6)
    y = torch.tensor([0, 1, 2, 0])
    t = torch.tensor([0, 3, 400, 999])
    noise = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    terms = d.training_losses(model, tg[y], t, y, noise)
    assert torch.allclose(terms["mse"], torch.zeros(4), atol=1e-4)   # the oracle predicts epsilon exactly
    assert torch.allclose(terms["x0_hat"], tg[y], atol=1e-2)
    if learn_sigma:
        # the targets lie inside (-0.999, 0.999), so t = 0 is an inner bin; float32 limits t = 400 and 999
        torch.testing.assert_close(terms["vb"], _vb_by_hand(d, t, 0.6), rtol=1e-3, atol=1e-6)
        assert terms["vb"][1] > 1e-3   # a variance away from the posterior's costs something
        assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    else:
        assert "vb" not in terms and torch.equal(terms["loss"], terms["mse"])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_samplers_land_on_the_data(sampler, learn_sigma):
    tg = targets()
    model = Oracle(tg, learn_sigma)
    y = torch.tensor([0, 1, 2, 2])
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    out = generate(model, y, seeds, sampler=sampler, steps=20, batch_size=3)
    # DDPM's last step adds no noise; DPM-Solver stops at t=0 (sigma 0.01)
    assert (out - tg[y]).abs().max() < 0.05, (out - tg[y]).abs().max()


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


def _gaussian_std(sampler, steps, spacing="time"):
    mu = torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    y = torch.tensor([0, 1] * 200)
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    out = generate(GaussianOracle(mu, 0.3), y, seeds, sampler=sampler, steps=steps, batch_size=400, spacing=spacing)
    assert torch.allclose(out[y == 0].mean(), torch.tensor(-0.5), atol=0.03)
    return float(torch.stack([out[y == c].std() for c in (0, 1)]).mean())


@pytest.mark.parametrize("sampler", ["dpm-solver", "sde-dpm-solver"])
def test_dpm_solvers_match_the_spread_of_gaussian_data(sampler):
    # Exact score, so the only error is the solver's: with log-SNR spacing 10 steps already give the
    # data's std (0.3); time-uniform 20 steps fall short but must not overshoot (a second-order last
    # step, r = prev_h / h small, gave 0.39 for the ODE solver and 0.47 for the SDE one).
    assert abs(_gaussian_std(sampler, 10, "logsnr") - 0.3) < 0.015
    assert 0.22 < _gaussian_std(sampler, 20, "time") < 0.31
    assert abs(_gaussian_std(sampler, 50, "time") - 0.3) < 0.015


def test_dpm_time_points():
    for spacing in ("time", "logsnr"):
        ts = dpm_time_points(20, spacing)
        assert len(ts) == 21 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    # log-SNR points crowd near t = 0, where lambda moves fast; at 500 steps some round together
    lsnr = dpm_time_points(20, "logsnr")
    assert lsnr[-2] < dpm_time_points(20, "time")[-2] / 4
    many = dpm_time_points(500, "logsnr")
    assert len(many) < 501 and np.all(np.diff(many) < 0) and many[-1] == 0
    with pytest.raises(ValueError, match="spacing"):
        dpm_time_points(20, "karras")


def test_spacing_is_for_dpm_solvers_only():
    tg = targets()
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="applies to dpm-solver"):
        generate(Oracle(tg), y, [1, 2], sampler="ddpm", steps=5, spacing="logsnr")
    # 500 log-SNR steps merge some points yet still land on the data
    out = generate(Oracle(tg), y, [1, 2], sampler="dpm-solver", steps=500, spacing="logsnr")
    assert (out - tg[y]).abs().max() < 0.05


def test_per_image_noise_is_batch_independent():
    tg = targets()
    model = Oracle(tg)
    y = torch.tensor([0, 0, 1, 2, 1])
    seeds = [image_seed(7, int(c), i) for i, c in enumerate(y)]
    a = PerImageNoise(seeds, (2, 4, 4), "cpu")()
    b = torch.cat([PerImageNoise(seeds[:2], (2, 4, 4), "cpu")(), PerImageNoise(seeds[2:], (2, 4, 4), "cpu")()])
    assert torch.equal(a, b)
    full = generate(model, y, seeds, sampler="ddpm", steps=5, batch_size=5)
    one = generate(model, y, seeds, sampler="ddpm", steps=5, batch_size=1)
    assert torch.allclose(full, one, atol=1e-5)
    assert image_seed(0, 1, 2) != image_seed(0, 2, 1) and image_seed(0, 1, 2) != image_seed(1, 1, 2)


def test_guidance_formula_and_channel_quirk():
    tg = targets()
    model = Oracle(tg, learn_sigma=True, null_target=torch.zeros(2, 4, 4))
    x = torch.randn(2, 2, 4, 4)
    t = torch.tensor([300, 300])
    y = torch.tensor([0, 1])
    cond = model(x, t, y)
    unc = model(x, t, torch.full_like(y, 3))
    out = guided_fn(model, y, 4.0, None, "fp32")(x, t)
    assert torch.allclose(out[:, :2], unc[:, :2] + 4 * (cond[:, :2] - unc[:, :2]), atol=1e-5)
    assert torch.equal(out[:, 2:], cond[:, 2:])   # variance channels from the conditional half
    out1 = guided_fn(model, y, 4.0, 1, "fp32")(x, t)   # guide only the first channel (DiT's 3-of-4 quirk)
    assert torch.allclose(out1[:, :1], out[:, :1]) and torch.allclose(out1[:, 1:2], cond[:, 1:2])
    assert torch.equal(guided_fn(model, y, 1.0, None, "fp32")(x, t), cond)


def test_bf16_sampling_stays_close_to_fp32():
    from minimaxdd.diffusion.dit import DiT, DiTConfig

    torch.manual_seed(0)
    m = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2, num_classes=3))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    y = torch.tensor([0, 1, 2])
    seeds = [image_seed(0, int(c), 0) for c in y]
    a = generate(m, y, seeds, sampler="ddim", steps=10, cfg_scale=2.0)
    b = generate(m, y, seeds, sampler="ddim", steps=10, cfg_scale=2.0, precision="bf16")
    assert a.dtype == b.dtype == torch.float32
    assert (a - b).abs().mean() < 0.05 * a.abs().mean() and not torch.equal(a, b)
    assert next(m.parameters()).dtype == torch.float32   # the caller's model is untouched


@pytest.mark.slow   # torch.compile: ~10 s on a 2-core CPU
def test_compiled_sampling_matches_eager_and_compiles_once():
    # The compiled network (frozen weights, matmul attention, padded last batch) computes what the
    # eager one does; a network built once by `sampling_network` serves later calls without
    # recompiling; and a second model is not served the first one's frozen weights.
    from torch._dynamo.utils import counters

    from minimaxdd.diffusion.dit import DiT, DiTConfig
    from minimaxdd.diffusion.samplers import sampling_network

    def model(seed):
        torch.manual_seed(seed)
        m = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=2,
                          num_classes=3, learn_sigma=True))
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.05)
        return m

    m = model(0)
    y = torch.tensor([0, 1, 2, 0, 1])
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    kw = dict(sampler="ddpm", steps=4, cfg_scale=2.0, batch_size=2)
    eager = generate(m, y, seeds, **kw)
    torch._dynamo.reset()
    counters.clear()
    compiled = generate(m, y, seeds, compile=True, **kw)     # batches of 2, 2, 1 padded to 2
    assert counters["stats"]["unique_graphs"] == 1          # one graph: the padding kept one shape
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
    counters.clear()
    net = sampling_network(m, "fp32", compile=True)
    a = generate(m, y[:3], seeds[:3], compile=True, network=net, **kw)
    b = generate(m, y[3:], seeds[3:], compile=True, network=net, **kw)
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(torch.cat([a, b]), eager, rtol=1e-4, atol=1e-4)
    other = model(1)
    e2 = generate(other, y, seeds, **kw)
    assert (e2 - eager).abs().max() > 0.1
    torch.testing.assert_close(generate(other, y, seeds, compile=True, **kw), e2, rtol=1e-4, atol=1e-4)


def test_codec_registry_and_pixel_round_trip():
    from minimaxdd.diffusion.codecs import CODECS, PixelCodec, build_codec
    from minimaxdd.errors import UserError

    assert set(CODECS) == {"pixel", "vae"}
    codec = build_codec("pixel", 3, 8)
    assert isinstance(codec, PixelCodec) and codec.spec == "pixel" and codec.latent_size == 8
    x = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8).expand(4, 3, 8, 8).contiguous()
    z = codec.encode(x)
    assert z.min() == -1 and z.max() == 1 and torch.equal(codec.decode(z), x)   # every grey level survives
    assert torch.equal(codec.decode(torch.full((1, 3, 8, 8), 5.0)), torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    with pytest.raises(UserError, match="unknown codec 'jpeg'"):
        build_codec("jpeg", 3, 8)
    with pytest.raises(UserError, match="takes no argument"):
        build_codec("pixel:x", 3, 8)
    with pytest.raises(UserError, match="vae:DIR"):
        build_codec("vae", 3, 8)
