import json

import pytest
import torch
import torch.nn as nn

from minimaxdd.diffusion.networks import (
    DENOISERS,
    build_denoiser,
    build_from_config,
    denoiser_config,
    difffit_parameters,
)
from minimaxdd.diffusion.unet import AttnBlock, ResBlock, UNet, UNetConfig, level_resolutions


def tiny(randomise=True, **kw):
    cfg = dict(input_size=8, in_channels=1, num_classes=4, channels=(8, 16), blocks=1, heads=2, embed_dim=16)
    cfg.update(kw)
    torch.manual_seed(0)
    m = UNet(UNetConfig(**cfg))
    if randomise:   # zero-initialised branches and output would make most comparisons trivial
        with torch.no_grad():
            for n, p in m.named_parameters():
                if not n.endswith("gamma"):
                    p.normal_(0, 0.2)
    return m.eval()


def inputs(m, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m.in_channels, m.input_size, m.input_size, generator=g)
    t = torch.randn(n, generator=g)                      # EDM-like c_noise
    y = torch.randint(0, m.num_classes + 1, (n,), generator=g)
    return x, t, y


@pytest.mark.parametrize("size,levels", [(8, (8, 4, 4)), (16, (16, 8, 4)), (28, (28, 14, 7)), (32, (32, 16, 8))])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_and_resolutions(size, levels, channels):
    m = tiny(input_size=size, in_channels=channels, channels=(8, 16, 16))
    assert m.resolutions == levels == level_resolutions(size, 3)
    x, t, y = inputs(m, n=2)
    with torch.no_grad():
        assert m(x, t, y).shape == (2, channels, size, size)


def test_odd_and_small_sizes_keep_their_resolution():
    assert level_resolutions(30, 3) == (30, 15, 15)
    assert level_resolutions(7, 3) == (7, 7, 7)
    m = tiny(input_size=30, channels=(8, 16, 16))
    with torch.no_grad():
        assert m(*inputs(m, n=1)).shape == (1, 1, 30, 30)


def test_null_class_and_ddpm_timesteps_accepted():
    m = tiny()
    x, _, _ = inputs(m, n=2)
    null = torch.full((2,), m.num_classes)
    with torch.no_grad():
        a = m(x, torch.tensor([0.0, 999.0]), null)
        b = m(x, torch.tensor([0.0, 999.0]), torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    with pytest.raises(IndexError):
        m(x, torch.zeros(2), torch.full((2,), m.num_classes + 1))


def test_learn_sigma_doubles_output_channels():
    m = tiny(in_channels=3, learn_sigma=True)
    assert m.out_channels == 6
    with torch.no_grad():
        assert m(*inputs(m, n=2)).shape == (2, 6, 8, 8)


def test_fresh_model_outputs_exact_zeros_and_gammas_are_one():
    m = tiny(randomise=False)
    gammas = [p for n, p in m.named_parameters() if n.endswith("gamma")]
    assert gammas and all(torch.equal(g, torch.ones(1)) for g in gammas)
    out = m(*inputs(m))
    assert torch.equal(out, torch.zeros_like(out))
    # the zero-initialised output conv still receives a gradient, so training can start
    (out - 1).square().mean().backward()
    assert m.conv_out.weight.grad.abs().sum() > 0


def test_zero_gammas_remove_every_residual_branch():
    m = tiny(channels=(8, 16, 16), attn_levels=(1, 2))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("gamma"):
                p.zero_()
    seen = {"res": 0, "attn": 0}

    def check(mod, args, out):
        x = args[0]
        if isinstance(mod, ResBlock):
            seen["res"] += 1
            assert torch.equal(out, mod.skip(x))
        else:
            seen["attn"] += 1
            assert torch.equal(out, x)

    for mod in m.modules():
        if isinstance(mod, (ResBlock, AttnBlock)):
            mod.register_forward_hook(check)
    with torch.no_grad():
        m(*inputs(m))
    n_res = sum(isinstance(x, ResBlock) for x in m.modules())
    n_attn = sum(isinstance(x, AttnBlock) for x in m.modules())
    assert seen == {"res": n_res, "attn": n_attn} and n_attn == 2 * 1 + 2 * 2 + 1   # levels 1, 2 and the middle


def test_difffit_set_is_biases_norms_class_table_and_gammas():
    m = tiny(channels=(8, 16, 16))
    norms = {f"{mn}.{pn}" for mn, mod in m.named_modules() if isinstance(mod, nn.GroupNorm)
             for pn, _ in mod.named_parameters()}
    expected = {n for n, _ in m.named_parameters()
                if n.endswith(".bias") or n in norms or n.endswith(".gamma") or n == "label_emb.weight"}
    got = {n for n, p in m.named_parameters() if any(p is q for q in difffit_parameters(m))}
    assert got == expected
    assert "label_emb.weight" in got and "norm_out.weight" in got and "conv_out.bias" in got
    assert all(n in norms or n == "label_emb.weight" for n in got if n.endswith(".weight"))   # no conv/linear weight


def test_config_round_trips_through_the_registry():
    m = tiny(channels=(8, 16, 16), attn_levels=(-1, 1), dropout=0.1)
    d = json.loads(json.dumps(m.config.to_dict()))
    assert d["arch"] == "unet" and d["channels"] == [8, 16, 16] and d["attn_levels"] == [1, 2]
    m2 = build_from_config(d).eval()
    m2.load_state_dict(m.state_dict(), strict=True)
    assert m2.config == m.config
    x, t, y = inputs(m)
    with torch.no_grad():
        assert torch.equal(m(x, t, y), m2(x, t, y))
    with pytest.raises(ValueError, match="unknown U-Net config keys"):
        build_from_config({**d, "patch_size": 2})


def test_registry_entries_build_for_the_data_shape():
    assert {"unet-s", "unet-m", "unet-l"} <= set(DENOISERS)
    cfg = denoiser_config("unet-s", 28, 1, 10)
    assert cfg["channels"] == [32, 64, 64] and cfg["blocks"] == 2
    with torch.device("meta"):
        m = build_denoiser("unet-s", 28, 1, 10)
    assert isinstance(m, UNet) and (m.input_size, m.in_channels, m.num_classes) == (28, 1, 10)
    assert m.config.to_dict() == {**cfg, "attn_levels": [2], "dropout": 0.0, "learn_sigma": False}
    assert sum(p.numel() for p in m.parameters()) == 1_744_312
    xs = denoiser_config("unet-xs", 8, 1, 10)           # the digits demo's: half the widths, one attention head
    assert xs["channels"] == [16, 32, 32] and xs["heads"] == 1 and xs["embed_dim"] == 64
    assert build_denoiser("unet-xs", 8, 1, 10)(torch.zeros(2, 1, 8, 8), torch.zeros(2),
                                               torch.zeros(2, dtype=torch.long)).shape == (2, 1, 8, 8)


def test_channels_last_matches_contiguous():
    m = tiny(in_channels=3, input_size=16, channels=(8, 16, 16))
    x, t, y = inputs(m)
    with torch.no_grad():
        ref = m(x, t, y)
        out_x = m(x.contiguous(memory_format=torch.channels_last), t, y)
        m.to(memory_format=torch.channels_last)
        out_m = m(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out_x, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_m, ref, atol=1e-5, rtol=1e-5)


def test_bf16_model_and_autocast_run():
    m = tiny()
    x, t, y = inputs(m)
    with torch.no_grad():
        ref = m(x, t, y)
        with torch.autocast("cpu", torch.bfloat16):
            auto = m(x, t, y)
        m16 = m.to(torch.bfloat16)     # as `samplers.sampling_network` runs it
        cast = m16(x.bfloat16(), t, y)
    assert cast.dtype == torch.bfloat16
    for out in (auto, cast):
        torch.testing.assert_close(out.float(), ref, atol=0.1 * ref.abs().max().item(), rtol=0.05)


def test_trains_on_a_fixed_batch_without_denormals():
    m = tiny(randomise=False, channels=(8, 16), dropout=0.0).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    t = torch.randn(16, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    target = torch.randn(16, 1, 8, 8, generator=g)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (m(x, t, y) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(target.square().mean().item())   # zero output at init
    assert losses[-1] < 0.25 * losses[0]   # measured: 1.01 -> 0.12
    smallest = torch.finfo(torch.float32).tiny
    tensors = [p for p in m.parameters()] + [p.grad for p in m.parameters()]
    tensors += [v for s in opt.state.values() for v in s.values() if v.ndim]
    assert not any(((v != 0) & (v.abs() < smallest)).any() for v in tensors)   # no subnormal floats


def test_invalid_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="heads"):
        UNetConfig(channels=(8, 12), heads=8)
    with pytest.raises(ValueError, match="attn_levels"):
        UNetConfig(channels=(8, 16), attn_levels=(5,))


@pytest.mark.slow
def test_compiled_matches_eager():
    m = tiny(in_channels=3, input_size=16, channels=(8, 16, 16))
    x, t, y = inputs(m)
    with torch.no_grad():
        ref = m(x, t, y)
        out = torch.compile(m)(x, t, y)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
