"""Non-leaking augmentation: each transform exact on the pixel grid, its labels, the U-Net's label input, and a
training run that uses it (the CLI refuses it where it cannot apply)."""
import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.augment import AUGMENT_DIM, apply_augment, draw_augment
from minimaxdd.diffusion.networks import build_denoiser, difffit_parameters


def _none(n):
    z = torch.zeros(n, dtype=torch.bool)
    return {"xflip": z.clone(), "yflip": z.clone(), "k": torch.zeros(n, dtype=torch.long),
            "tx": torch.zeros(n), "ty": torch.zeros(n)}


def _images(n=3, side=8):
    return torch.randn(n, 2, side, side, generator=torch.Generator().manual_seed(0))


def test_each_transform_is_exact_and_labelled():
    x = _images()
    out, lab = apply_augment(x, _none(3))
    assert torch.equal(out, x) and torch.equal(lab, torch.zeros(3, AUGMENT_DIM))
    a = _none(3)
    a["xflip"][0], a["yflip"][1], a["k"][2] = True, True, 1
    out, lab = apply_augment(x, a)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1].flip(-2))
    assert torch.equal(out[2], torch.rot90(x[2], 1, dims=(-2, -1)))
    assert lab.tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, -1, 1, 0, 0]]
    a = _none(3)
    a["k"][:] = torch.tensor([0, 2, 3])
    _, lab = apply_augment(x, a)
    assert lab[:, 2:4].tolist() == [[0, 0], [-2, 0], [-1, -1]]                 # cos - 1, sin of 0, 180, 270 deg
    a = _none(3)
    a["tx"][0], a["ty"][1] = 1 / 8, -1 / 8                                     # one pixel right; one pixel up
    out, lab = apply_augment(x, a)
    assert torch.equal(out[0][..., 1:], x[0][..., :-1]) and torch.equal(out[0][..., 0], x[0][..., 1])  # reflected
    assert torch.equal(out[1][..., :-1, :], x[1][..., 1:, :]) and torch.equal(out[1][..., -1, :], x[1][..., -2, :])
    assert torch.equal(out[2], x[2]) and lab[0, 4] == 1 / 8 and lab[1, 5] == -1 / 8
    with pytest.raises(ValueError, match="square"):
        apply_augment(torch.zeros(1, 1, 8, 6), _none(1))


def test_draws_apply_with_probability_p_and_take_the_same_stream_at_any_p():
    states = []
    for p in (0.0, 0.3, 1.0):
        g = torch.Generator().manual_seed(1)
        a = draw_augment(4000, p, g)
        states.append(torch.randn(1, generator=g).item())                      # the draw after it
        applied = torch.stack([a["k"] > 0, a["tx"] != 0], 1).float().mean(0)  # quarter turns, shifts
        assert torch.allclose(applied, torch.full((2,), p), atol=0.03)
        assert abs(a["xflip"].float().mean().item() - p / 2) < 0.03          # a flip applied half the time
        assert a["tx"].abs().max() <= 0.125 and a["ty"].abs().max() <= 0.125
    assert states[0] == states[1] == states[2]


def test_unet_embeds_the_labels_and_zero_labels_change_nothing():
    torch.manual_seed(0)
    net = build_denoiser("unet-s", 8, 1, 3, augment_dim=AUGMENT_DIM).eval()
    with torch.no_grad():
        for p in net.parameters():                                             # as after some training (the
            p.normal_(0, 0.1)                                                  # output conv starts at zero)
        x, c, y = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 1])
        plain = net(x, c, y)
        assert torch.equal(net(x, c, y, augment_labels=torch.zeros(2, AUGMENT_DIM)), plain)
        assert not torch.allclose(net(x, c, y, augment_labels=torch.ones(2, AUGMENT_DIM)), plain)
    assert all(p is not net.augment_emb.weight for p in difffit_parameters(net))   # not in Difffit's set
    with pytest.raises(ValueError, match="without augment_dim"):
        build_denoiser("unet-s", 8, 1, 3)(x, c, y, augment_labels=torch.zeros(2, AUGMENT_DIM))


@pytest.mark.slow      # two tiny training runs, about 10 s
def test_training_with_augmentation_and_its_refusals(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", "digits", "--batch", "16", "--steps", "3", "--checkpoint-every", "3", "--device", "cpu",
              "--formulation", "edm"]
    assert main(["train", *common, "--model", "unet-s", "--augment", "0.5", "--out", str(out)]) == 0
    model, meta = ckpt.load(ckpt.resolve(out), "ema", "cpu")
    assert meta.model["augment_dim"] == AUGMENT_DIM and model.augment_emb is not None
    assert main(["sample", str(out), "--ipc", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["train", *common, "--model", "dit-n/2", "--augment", "0.5", "--out", str(tmp_path / "d")]) == 2
    assert "augment needs a U-Net model" in capsys.readouterr().err
    assert main(["train", *common, "--model", "unet-s", "--augment", "1.5", "--out", str(tmp_path / "e")]) == 2
    assert "augment (--augment) must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
