import torch
from oracles import LabelledNet, Oracle, targets

from minimaxdd.diffusion.denoisers import EDMDenoiser, Guided, VPDenoiser, cfg_mix
from minimaxdd.diffusion.edm import EDM


def test_guidance_formula_and_channel_quirk():
    tg = targets()
    model = Oracle(tg, learn_sigma=True, null_target=torch.zeros(2, 4, 4))
    x = torch.randn(2, 2, 4, 4)
    t = torch.tensor([300, 300])
    y = torch.tensor([0, 1])
    cond = model(x, t, y)
    unc = model(x, t, torch.full_like(y, 3))
    out = Guided(VPDenoiser(model), y, 4.0, None).raw(x, t)
    assert torch.allclose(out[:, :2], unc[:, :2] + 4 * (cond[:, :2] - unc[:, :2]), atol=1e-5)
    assert torch.equal(out[:, 2:], cond[:, 2:])   # variance channels from the conditional half
    out1 = Guided(VPDenoiser(model), y, 4.0, 1).raw(x, t)   # guide only the first channel (DiT's 3-of-4 quirk)
    assert torch.allclose(out1[:, :1], out[:, :1]) and torch.allclose(out1[:, 1:2], cond[:, 1:2])
    assert torch.equal(Guided(VPDenoiser(model), y, 1.0).raw(x, t), cond)

def test_guidance_scale_one_calls_the_conditional_half_only():
    m = LabelledNet()
    y = torch.tensor([0, 2])
    x = torch.randn(2, 2, 4, 4)
    D = Guided(EDMDenoiser(m), y, 1.0)(x, 1.5)
    assert len(m.calls) == 1 and torch.equal(m.calls[0], y)
    assert torch.allclose(D, EDM().denoise(m, x, 1.5, y))

def test_guidance_mixes_the_denoiser_outputs():
    m = LabelledNet()
    y = torch.tensor([0, 2, 1])
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        D = Guided(EDMDenoiser(m), y, 2.0)(x, 0.7)
        assert len(m.calls) == 1 and torch.equal(m.calls[0], torch.tensor([0, 2, 1, 3, 3, 3]))  # one batched call
        D_c = EDM().denoise(m, x, 0.7, y)
        D_u = EDM().denoise(m, x, 0.7, torch.full_like(y, m.num_classes))
    assert not torch.allclose(D_c, D_u)
    assert torch.allclose(D, 2 * D_c - D_u, atol=1e-6, rtol=0)


def test_cfg_mix_guides_the_first_channels_and_keeps_the_rest_conditional():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, 5, 3, 3, generator=g)
    out = cfg_mix(cond, uncond, 3.0, channels=3, guided=2)
    assert out.shape == cond.shape
    assert torch.equal(out[:, :2], uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]))
    assert torch.equal(out[:, 2:], cond[:, 2:])                  # unguided channel and the variance: conditional
    torch.testing.assert_close(cfg_mix(cond, uncond, 1.0, 5), cond)


def test_vp_denoiser_is_the_ddpm_x0_estimate_in_edm_scaling():
    """At a training step's level, D(x; sigma) = x - sigma eps(alpha x, t) is the DDPM x0 estimate of the state
    alpha x: the same network call, the same answer."""
    tg = targets()
    model = Oracle(tg, learn_sigma=True)
    den = VPDenoiser(model)
    d = den.diffusion
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2])
    for t in (0, 17, 500, 999):
        sigma = float(den.sigmas[t])
        assert den.step(sigma) == t and den.round_sigma(sigma * 1.0001) == sigma
        alpha = float(d.np["sqrt_acp"][t])
        tt = torch.full((3,), t)
        ref = d.predict_x0(alpha * x, tt, model(alpha * x, tt, y)[:, :2])
        torch.testing.assert_close(den(x, sigma, y), ref, rtol=1e-4, atol=1e-4 * max(1.0, sigma))
    # the oracle's eps is exact, so D is the class's point from any level (float32 limits the highest)
    assert (den(tg[y] + 3.0 * x, float(den.sigmas[400]), y) - tg[y]).abs().max() < 1e-4
    assert den.round_sigma(0.0) == 0.0 and den.sigma_range() == (float(den.sigmas[0]), float(den.sigmas[-1]))


def test_guiding_d_is_guiding_epsilon():
    """Guidance on D (the samplers') and on epsilon (the paper's code) agree, channel quirk included; a DDPM model
    clips D every step when asked (DiT's clip_denoised), an EDM model never does (it clamps the result only)."""
    model = Oracle(targets(), learn_sigma=True, null_target=torch.zeros(2, 4, 4))
    den = VPDenoiser(model)
    y = torch.tensor([0, 2])
    x = 2 * torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    t = 300
    sigma, alpha = float(den.sigmas[t]), float(den.diffusion.np["sqrt_acp"][t])
    for guided in (None, 1):
        g = Guided(den, y, 4.0, guided)
        eps = g.raw(alpha * x, torch.full((2,), t))[:, :2]
        torch.testing.assert_close(g(x, sigma), x - sigma * eps, rtol=1e-5, atol=1e-5)
    clipped = Guided(den, y, 4.0, clip=True)(x, sigma)
    assert clipped.abs().max() <= 1 and torch.equal(clipped, Guided(den, y, 4.0)(x, sigma).clamp(-1, 1))
    edm = Guided(EDMDenoiser(LabelledNet()), y, 2.0, clip=True)
    assert not edm.clip and edm(x, 0.7).abs().max() > 1
    try:
        edm.raw(x, torch.full((2,), t))
    except TypeError as e:
        assert "DDPM" in str(e)
    else:
        raise AssertionError("an EDM model has no raw epsilon output")
