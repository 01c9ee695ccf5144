import math

import numpy as np
import pytest
import torch
from oracles import MU, GaussianBackbone, GaussianOracle, Oracle, S, exact_D, targets, tiny_dit

from minimaxdd.diffusion.edm import SIGMA_MAX, SIGMA_MIN
from minimaxdd.diffusion.sampling import SAMPLERS, PerImageNoise, denoise_from, generate, image_seed
from minimaxdd.diffusion.solvers import dpm_solver, karras_sigmas

DDPM_SAMPLERS = sorted(s for s in SAMPLERS if "ddpm" in SAMPLERS[s].formulations)


def generate_edm(*args, **kw):
    return generate(*args, formulation="edm", **kw)

@pytest.mark.parametrize("sampler", DDPM_SAMPLERS)
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_samplers_land_on_the_data(sampler, learn_sigma):
    tg = targets()
    model = Oracle(tg, learn_sigma)
    y = torch.tensor([0, 1, 2, 2])
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    out = generate(model, y, seeds, sampler=sampler, steps=20, batch_size=3)
    # DDPM's last step adds no noise; DPM-Solver stops at t=0 (sigma 0.01)
    assert (out - tg[y]).abs().max() < 0.05, (out - tg[y]).abs().max()

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

def test_spacing_is_for_dpm_solvers_only():
    tg = targets()
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="does not apply to ddpm"):
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
    from minimaxdd.diffusion.sampling import sampling_network

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

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generate_edm_is_batch_and_class_invariant(precision):
    m = tiny_dit()
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
                     SIGMA_MAX * z, karras_sigmas(20, SIGMA_MIN, SIGMA_MAX))
    assert torch.allclose(raw, ref, atol=1e-4)
    clipped = generate_edm(m, labels, seeds, sampler="dpm-solver", steps=20, clip=True)
    assert torch.equal(clipped, raw.clamp(-1, 1)) and clipped.abs().max() <= 1
    with pytest.raises(ValueError, match="heun"):
        generate_edm(m, labels, seeds, sampler="ddpm")

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


# ---- the paper's sampler, bit for bit


@torch.no_grad()
def _dit_pattern_ddpm(model, y, seeds, steps, scale, guided):
    """DDPM sampling as the paper's code runs it (DiT sample.py and diffusion/gaussian_diffusion.py, respaced as
    its respace.py does), written out here on its own: the schedule in float64 numpy, each coefficient looked
    up at t and cast to float32, the learned-range variance, `forward_with_cfg` guiding the first `guided`
    channels, then mean + exp(0.5 log var) noise with the noise masked at t = 0. Noise comes from the same
    per-image streams `generate` uses."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp_full = np.cumprod(1.0 - betas)
    stride = 999 / (steps - 1)
    use = sorted({int(round(i * stride)) for i in range(steps)})                      # space_timesteps(1000, [steps])
    last, new_betas = 1.0, []
    for t in use:
        new_betas.append(1 - acp_full[t] / last)
        last = acp_full[t]
    b = np.array(new_betas)
    acp = np.cumprod(1.0 - b)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = b * (1.0 - acp_prev) / (1.0 - acp)
    arr = {"recip": np.sqrt(1.0 / acp), "recipm1": np.sqrt(1.0 / acp - 1), "logb": np.log(b),
           "post_lv": np.log(np.append(post_var[1], post_var[1:])),
           "c1": b * np.sqrt(acp_prev) / (1.0 - acp), "c2": (1.0 - acp_prev) * np.sqrt(1.0 - b) / (1.0 - acp)}
    ext = lambda k, t: torch.from_numpy(arr[k])[t].float().view(-1, 1, 1, 1)        # noqa: E731
    noise = PerImageNoise(seeds, (model.in_channels, model.input_size, model.input_size), "cpu")
    x = noise()
    C, null = x.shape[1], torch.full_like(y, model.num_classes)
    for i in reversed(range(steps)):
        t = torch.full((len(x),), i)
        out = model(torch.cat([x, x]), torch.tensor(use)[torch.cat([t, t])], torch.cat([y, null])).float()
        eps, rest = out[:, :guided], out[:, guided:]
        cond_eps, uncond_eps = eps.chunk(2)
        out = torch.cat([uncond_eps + scale * (cond_eps - uncond_eps), rest[:len(x)]], dim=1)
        model_out, var_values = out[:, :C], out[:, C:]
        frac = (var_values + 1) / 2
        log_var = frac * ext("logb", t) + (1 - frac) * ext("post_lv", t)
        x0 = ext("recip", t) * x - ext("recipm1", t) * model_out
        mean = ext("c1", t) * x0 + ext("c2", t) * x
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        x = mean + nonzero * torch.exp(0.5 * log_var) * noise()
    return x


def test_ddpm_sampler_is_the_papers_bit_for_bit():
    m = tiny_dit()          # learned variance, 2 latent channels
    y = torch.tensor([0, 1, 2, 1])
    seeds = [image_seed(4, int(c), i) for i, c in enumerate(y)]
    for steps, scale, guided in [(50, 4.0, 1), (50, 1.5, 2), (7, 4.0, 2)]:
        ours = generate(m, y, seeds, sampler="ddpm", steps=steps, cfg_scale=scale, cfg_channels=guided, batch_size=4)
        theirs = _dit_pattern_ddpm(m, y, seeds, steps, scale, guided)
        assert torch.equal(ours, theirs), (steps, scale, (ours - theirs).abs().max())


# ---- one sampler family for both formulations


# (sampler, steps, bound on |std / data std - 1|): measured +8.1% / +7.4% (heun 18, ddpm / edm), -2.5% / -2.2%
# (euler 100), +6.4% / +6.6% (dpm-solver 20), -0.2% / -0.4% (sde-dpm-solver 60); the mean is off by under 0.01.
@pytest.mark.parametrize("sampler,steps,tol", [("heun", 18, 0.1), ("euler", 100, 0.04), ("dpm-solver", 20, 0.08),
                                               ("sde-dpm-solver", 60, 0.03)])
def test_each_sampler_serves_both_formulations(sampler, steps, tol):
    """The same name runs the same solver on a DDPM model (through the VP denoiser, on the Karras grid rounded to
    its training levels) and on an EDM model: both land on Gaussian data's mean and std, with the same
    discretisation error. (On a DDPM model's own time-uniform steps these step counts fall short of the std:
    `test_dpm_solvers_match_the_spread_of_gaussian_data`.)"""
    mu = torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    y = torch.tensor([0, 1] * 200)
    seeds = [image_seed(1, int(c), i) for i, c in enumerate(y)]
    ddpm = generate(GaussianOracle(mu, 0.3), y, seeds, sampler=sampler, steps=steps, spacing="karras", batch_size=400)
    edm = generate(GaussianBackbone(torch.tensor([-0.5, 0.5, 0.0]), channels=1, size=4, s=0.3), y, seeds,
                   formulation="edm", sampler=sampler, steps=steps, batch_size=400)
    for out in (ddpm, edm):
        assert abs(out[y == 0].mean().item() + 0.5) < 0.02
        assert abs(out[y == 1].std().item() / 0.3 - 1) < tol
    assert abs(ddpm[y == 1].std().item() / edm[y == 1].std().item() - 1) < 0.015


def test_sampler_and_spacing_choices_are_checked_per_formulation():
    m = GaussianBackbone(torch.tensor([0.0, 0.0]))
    y = torch.tensor([0])
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match="does not apply to models of the edm formulation"):
            generate(m, y, [1], formulation="edm", sampler=sampler)
    with pytest.raises(ValueError, match="logsnr"):
        generate(m, y, [1], formulation="edm", sampler="heun", spacing="logsnr")
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        generate(m, y, [1], formulation="edm", sampler="rk4")
    # an edm model's "time" grid is EDM's own: the same bytes as "karras"
    a = generate(m, y, [1], formulation="edm", sampler="heun", steps=5)
    assert torch.equal(a, generate(m, y, [1], formulation="edm", sampler="heun", steps=5, spacing="karras"))
