import json
from pathlib import Path

import pytest
import torch

from minimaxdd.diffusion.dit import DiT, DiTConfig
from minimaxdd.diffusion.networks import ARCHITECTURES, DENOISERS, build_denoiser, build_from_config
from minimaxdd.diffusion.uvit import UViT, UViTConfig
from minimaxdd.diffusion.weights import (
    infer_dit_config,
    load_diffusers_dit,
    load_official_dit,
    load_state_strict,
)
from minimaxdd.errors import UserError

KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "dit_xl2_256_keys.json").read_text())


def tiny_dit(**kw):
    cfg = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=5)
    cfg.update(kw)
    torch.manual_seed(0)
    m = DiT(DiTConfig(**cfg))
    # DiT zero-initialises adaLN and the output layer; randomise everything so comparisons mean something
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return m.eval()


def inputs(m, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m.in_channels, m.input_size, m.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, m.num_classes + 1, (n,), generator=g)
    return x, t, y


def test_dit_xl2_state_dict_matches_official_key_list():
    with torch.device("meta"):
        m = build_denoiser("dit-xl/2", 32, 4, 1000, learn_sigma=True)
    own = {k: list(v.shape) for k, v in m.state_dict().items() if "gamma" not in k.rsplit(".", 1)[-1]}
    want = {k: s for k, s in KEYS["keys"]}
    assert own == want
    params = sum(v.numel() for k, v in m.state_dict().items() if k != "pos_embed" and "gamma" not in k)
    assert params == KEYS["num_params"]
    # Difffit (the reference): four gammas in each of the first 14 blocks
    gammas = [k for k in m.state_dict() if "gamma" in k]
    assert len(gammas) == 14 * 4 and all(int(k.split(".")[1]) < 14 for k in gammas)


def test_official_format_loads_strictly(tmp_path):
    src = tiny_dit(difffit="none")
    path = tmp_path / "DiT-tiny.pt"
    torch.save(src.state_dict(), path)
    cfg = infer_dit_config(torch.load(path, weights_only=True), num_heads=2)
    shape = (cfg["hidden_size"], cfg["depth"], cfg["patch_size"], cfg["input_size"], cfg["num_classes"])
    assert shape == (32, 4, 2, 8, 5)
    with pytest.raises(UserError, match="head count"):
        load_official_dit(path)
    m = load_official_dit(path, num_heads=2).eval()
    x, t, y = inputs(m)
    with torch.no_grad():
        assert torch.allclose(m(x, t, y), src(x, t, y), atol=1e-6)   # gammas absent in the file = one
    # a training checkpoint with "ema" loads its EMA weights
    torch.save({"model": {}, "ema": src.state_dict(), "opt": {}}, tmp_path / "train.pt")
    assert torch.equal(load_official_dit(tmp_path / "train.pt", num_heads=2).pos_embed, src.pos_embed)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    m = tiny_dit()
    state = m.state_dict()
    state.pop("blocks.1.attn.qkv.weight")
    state["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing: blocks\.1\.attn\.qkv\.weight") as e:
        load_state_strict(tiny_dit(), state, "file")
    assert "blocks.0.extra.weight" in str(e.value)
    bad = tiny_dit().state_dict()
    bad["pos_embed"] = torch.zeros(1, 4, 32)
    with pytest.raises(UserError, match="shape mismatch: pos_embed"):
        load_state_strict(tiny_dit(), bad, "file")


def test_wrong_expected_size_is_an_error(tmp_path):
    torch.save(tiny_dit(difffit="none").state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match="not dit-s/2"):
        load_official_dit(tmp_path / "w.pt", expect="dit-s/2")


def test_difffit_gammas_at_one_equal_the_plain_model():
    plain = tiny_dit(difffit="none")
    for mode in ("half", "all"):
        ours = DiT(DiTConfig(**{**plain.config.__dict__, "difffit": mode})).eval()
        load_state_strict(ours, plain.state_dict(), "plain")
        x, t, y = inputs(plain)
        with torch.no_grad():
            assert torch.equal(ours(x, t, y), plain(x, t, y))
            ours.blocks[0].gamma1.fill_(0.5)
            assert not torch.allclose(ours(x, t, y), plain(x, t, y))
    assert DiT(DiTConfig(**{**plain.config.__dict__, "difffit": "half"})).blocks[2].gamma1 is None


def test_diffusers_folder_loads_and_matches_diffusers_forward(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                          num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=5)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
        # diffusers keeps a copy of the time/class embedder in every block; a converted DiT has them equal
        first = ref.transformer_blocks[0].norm1.emb
        for b in ref.transformer_blocks[1:]:
            b.norm1.emb.load_state_dict(first.state_dict())
    ref.eval()   # in training mode its label embedder drops labels at random
    ref.save_pretrained(tmp_path / "transformer")
    m = load_diffusers_dit(tmp_path).eval()
    assert m.config.learn_sigma and m.config.depth == 3 and m.num_classes == 5
    # diffusers' timestep embedding divides by half-1 (downscale_freq_shift=1); the official DiT by half.
    for b in ref.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 0
    x, t, y = inputs(m)
    y = y.clamp(max=4)
    with torch.no_grad():
        want = ref(x, timestep=t, class_labels=y).sample
        assert torch.allclose(m(x, t, y), want, atol=1e-4)   # diffusers' norm3 eps is 1e-5, DiT's 1e-6
    # per-block embedders that differ cannot be one DiT
    with torch.no_grad():
        ref.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight.add_(1)
    ref.save_pretrained(tmp_path / "transformer")
    with pytest.raises(UserError, match="embedder"):
        load_diffusers_dit(tmp_path)


def test_registry_and_uvit():
    assert {"dit-t/2", "dit-s/4", "dit-xl/2", "dit-b/8", "uvit-t", "uvit-s", "uvit-m"} <= set(DENOISERS)
    with pytest.raises(UserError, match="unknown model"):
        build_denoiser("dit-q/2", 32, 3, 10)
    with pytest.raises(UserError, match="does not divide"):
        build_denoiser("dit-t/8", 28, 1, 10)
    assert set(ARCHITECTURES) == {cfg["arch"] for cfg in DENOISERS.values()} == {"dit", "uvit", "unet"}
    with pytest.raises(UserError, match="unknown architecture 'convnext'.*dit, uvit or unet"):
        build_from_config({"arch": "convnext", "input_size": 8})
    torch.manual_seed(0)
    u = UViT(UViTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=4, num_heads=2, num_classes=3))
    assert len(u.in_blocks) == 2 and len(u.out_blocks) == 2
    x, t, y = inputs(u)
    out = u(x, t, y)
    assert out.shape == x.shape
    # rebuilt from its own config, the same weights give the same output
    v = build_from_config(u.config.to_dict())
    v.load_state_dict(u.state_dict())
    assert torch.equal(v(x, t, y), out)
    # the long skips carry information: zeroing the skip half of skip_linear changes the output
    with torch.no_grad():
        v.out_blocks[0].skip_linear.weight[:, 32:] = 0
    assert not torch.allclose(v(x, t, y), out)


def test_dit_learn_sigma_output_channels():
    m = tiny_dit(learn_sigma=True)
    x, t, y = inputs(m)
    assert m(x, t, y).shape == (3, 8, 8, 8)
    m = tiny_dit(learn_sigma=False, in_channels=1)
    x, t, y = inputs(m)
    assert m(x, t, y).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("tokens", [16, 256, 1024])
def test_attention_paths_compute_the_same_function(tokens):
    # The CPU matmul path (used where it is faster) and the fused kernel agree, values and gradients.
    import torch.nn.functional as F

    from minimaxdd.diffusion.dit import CPU_MATMUL_ATTENTION_TOKENS, attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, tokens, 16, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    gq, = torch.autograd.grad(out.square().sum(), q)
    rq, = torch.autograd.grad(ref.square().sum(), q)
    assert torch.allclose(gq, rq, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(attention(q, k, v), ref, atol=1e-5)
    assert CPU_MATMUL_ATTENTION_TOKENS["infer"] <= CPU_MATMUL_ATTENTION_TOKENS["train"]
