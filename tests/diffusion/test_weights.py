"""The Minimax authors' fine-tuned checkpoints load (their pickled options allow-listed, their attention gammas
renamed), and a file that is not plain data is refused with what it should hold and how to re-save it."""
import argparse
import collections

import pytest
import torch

from minimaxdd.diffusion.dit import DiT, DiTConfig
from minimaxdd.diffusion.weights import authors_to_ours, load_official_dit
from minimaxdd.errors import UserError


def tiny_difffit_dit():
    torch.manual_seed(0)
    m = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2,
                      num_classes=5, difffit="half"))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)          # gammas away from one, so a lost gamma would show
    return m.eval()


def authors_layout(state):
    """Our state dict under the names of the authors' DiT (vimar-gu/MinimaxDiffusion models.py)."""
    out = {}
    for k, v in state.items():
        k = k.replace("attn.gamma_qkv", "attn.gamma1").replace("attn.gamma_proj", "attn.gamma2")
        out[k] = v
    return out


def test_the_authors_full_checkpoint_loads_with_their_gamma_names(tmp_path):
    src = tiny_difffit_dit()
    theirs = authors_layout(src.state_dict())
    assert "blocks.0.attn.gamma1" in theirs and "blocks.0.gamma1" in theirs     # both kinds of gamma
    args = argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=1000, epochs=8, global_batch_size=8,
                              lambda_pos=0.002, lambda_neg=0.008, memory_size=64, ckpt=None, vae="ema")
    opt = torch.optim.AdamW(src.parameters(), lr=1e-3)
    torch.save({"model": theirs, "ema": theirs, "opt": opt.state_dict(), "args": args}, tmp_path / "0012000.pt")
    m = load_official_dit(tmp_path / "0012000.pt", num_heads=2).eval()
    assert m.config.difffit == "half"
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 500]), torch.tensor([1, 5])
    with torch.no_grad():
        assert torch.equal(m(x, t, y), src(x, t, y))


def test_the_gamma_map_touches_only_the_attention_gammas():
    state = {"blocks.3.attn.gamma1": 1, "blocks.3.attn.gamma2": 2, "blocks.3.gamma1": 3, "blocks.13.gamma2": 4,
             "blocks.0.attn.qkv.weight": 5}
    assert authors_to_ours(state) == {"blocks.3.attn.gamma_qkv": 1, "blocks.3.attn.gamma_proj": 2,
                                      "blocks.3.gamma1": 3, "blocks.13.gamma2": 4, "blocks.0.attn.qkv.weight": 5}


Opts = collections.namedtuple("Opts", "lr")            # any class outside the allow-list


def test_pickled_objects_are_refused_with_what_the_file_should_hold(tmp_path):
    torch.save({"ema": tiny_difffit_dit().state_dict(), "args": Opts(1e-3)}, tmp_path / "odd.pt")
    with pytest.raises(UserError) as e:
        load_official_dit(tmp_path / "odd.pt", num_heads=2)
    msg = str(e.value)
    assert "weights_only=False" not in msg                   # never the advice to run pickled code
    assert "state dict" in msg and "'ema'" in msg and "torch.serialization.safe_globals" in msg
    assert "Opts" in msg and "torch.save(ckpt['ema']" in msg
