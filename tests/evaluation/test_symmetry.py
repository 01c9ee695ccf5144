"""flip: auto: a mirror-free classifier's held-out accuracy on mirrored training images decides flips."""
import json

import numpy as np
import pytest
import torch

from minimaxdd.cli import build_parser
from minimaxdd.data.dataset import Dataset
from minimaxdd.evaluation import symmetry
from minimaxdd.evaluation.symmetry import MIRROR_KEEP, mirror_test
from minimaxdd.training.config import resolve_flip
from minimaxdd.training.scratch import TrainConfig

# 8 x 8 glyphs, 1 = ink. Asymmetric: two shapes and their mirror images, each its own class (a mirrored
# image is another class's). Symmetric: four shapes that are their own mirror images.
ASYMMETRIC = ["11111100/10000000/10000000/10000000", "00111111/00000001/00000001/00000001",
              "10000000/10000000/10000000/11111100", "00000001/00000001/00000001/00111111"]
SYMMETRIC = ["11111111/00011000/00011000/00011000", "00011000/00011000/00011000/11111111",
             "10000001/10000001/11111111/10000001", "11111111/00000000/00000000/11111111"]


def glyphs(shapes, n_per_class=120, seed=0):
    """A dataset of the shapes (4 rows each, drawn in rows 2-5 of 8x8), each image shifted by up to one pixel
    and with grey noise: uint8 (N, 1, 8, 8)."""
    g = np.random.default_rng(seed)
    xs, ys = [], []
    for k, s in enumerate(shapes):
        base = np.zeros((8, 8))
        base[2:6] = np.array([[int(c) for c in row] for row in s.split("/")])
        for _ in range(n_per_class):
            img = np.roll(base, (g.integers(-1, 2), g.integers(-1, 2)), axis=(0, 1)) * 200 + g.uniform(0, 55, (8, 8))
            xs.append(img.astype(np.uint8)[None])
            ys.append(k)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    return Dataset("glyphs", x, y, x[:4], y[:4], [f"c{k}" for k in range(len(shapes))])


@pytest.fixture(autouse=True)
def short_budget(monkeypatch):
    monkeypatch.setattr(symmetry, "IMAGES_SEEN", 8000)     # about 20 epochs of these 432 images: seconds


def test_mirror_images_of_each_other_turn_flips_off():
    m = mirror_test(glyphs(ASYMMETRIC), use_cache=False)
    assert m.accuracy > 0.9                          # the classifier tells the glyphs apart ...
    assert m.mirrored_accuracy < 0.2                 # ... and reads each mirrored one as its twin
    assert m.keep < MIRROR_KEEP and not m.flip
    assert m.val_images == 48 and m.train_images == 432 and m.side == 8


def test_mirror_symmetric_glyphs_turn_flips_on():
    m = mirror_test(glyphs(SYMMETRIC), use_cache=False)
    assert m.accuracy > 0.9 and m.keep >= MIRROR_KEEP and m.flip
    # the symmetric "T" and its upside-down twin are told apart, so a quarter turn (reported only) costs much
    assert m.turned_accuracy < m.accuracy


def test_the_result_is_cached_and_the_test_split_is_not_read():
    ds = glyphs(SYMMETRIC)
    ds.x_test = torch.full_like(ds.x_test, 255)      # were the test images read, the result would not change: it
    first = mirror_test(ds)                          # never reads them, which the equal results below show
    again = mirror_test(ds)
    assert again.cached and not first.cached
    assert {**first.__dict__, "cached": True} == again.__dict__


def test_an_explicit_setting_wins_and_auto_is_decided(tmp_path, monkeypatch):
    calls = []
    real = symmetry.mirror_test
    monkeypatch.setattr("minimaxdd.training.config.mirror_test", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = glyphs(ASYMMETRIC)
    for given in (True, False):
        cfg, m = resolve_flip(TrainConfig(out=str(tmp_path), data="x", flip=given), ds, "cpu", say=lambda s: None)
        assert cfg.flip is given and m is None
    assert calls == []                                # no measurement when the user decided
    said = []
    cfg, m = resolve_flip(TrainConfig(out=str(tmp_path), data="x", flip="auto"), ds, "cpu", say=said.append)
    assert cfg.flip is False and m["flip"] is False and calls == [1]
    assert said and "flips off" in said[0] and "mirrored held-out accuracy" in said[0]
    with pytest.raises(ValueError, match="true, false or auto"):
        resolve_flip(TrainConfig(out=str(tmp_path), data="x", flip="sometimes"), ds, "cpu")


def test_the_flip_flag_takes_true_false_and_auto():
    p = build_parser()
    base = ["train", "--data", "digits", "--out", "x"]
    assert p.parse_args(base + ["--flip", "auto"]).flip == "auto"
    assert p.parse_args(base + ["--flip"]).flip is True
    assert p.parse_args(base + ["--no-flip"]).flip is False
    assert p.parse_args(base + ["--flip", "false"]).flip is False
    assert p.parse_args(base).flip is None                      # not given: the config's default
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--flip", "maybe"])


def test_distill_decides_flips_before_keying_the_base_and_reports_it(tmp_path):
    """A generic run (`flip: auto`) of mirror-twin glyphs trains its base without flips: the base stage's key
    and config hold the decided `false` (so a run whose data decide as its flag did keeps its key), its record
    and the report hold the measurement."""
    from minimaxdd.pipeline.base import stage_base
    from minimaxdd.pipeline.config import build_config
    from minimaxdd.pipeline.report import _flip_lines

    ds = glyphs(ASYMMETRIC)
    npz = tmp_path / "glyphs.npz"
    np.savez(npz, x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(), x_test=ds.x_test.numpy(),
             y_test=ds.y_test.numpy())
    train = {"model": "unet-xs", "formulation": "edm", "steps": 2, "batch": 8, "flip": "auto", "checkpoint_every": 2}
    cfg = build_config(None, {"data": f"npz:{npz}", "base": {"train": train}})
    rec = stage_base(tmp_path / "run", cfg, False, torch.device("cpu"))
    stage = json.loads((tmp_path / "run" / "base" / "stage.json").read_text())
    assert stage["config"]["flip"] is False and rec["flip_auto"]["flip"] is False
    explicit = build_config(None, {"data": f"npz:{npz}", "base": {"train": {**train, "flip": False}}})
    again = stage_base(tmp_path / "run", explicit, False, torch.device("cpu"))
    assert again["key"] == rec["key"]                 # the same training: skipped, not retrained
    assert "flips **off**" in "\n".join(_flip_lines(tmp_path / "run"))


def test_a_classifier_that_learned_nothing_leaves_flips_on():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)                  # labels unrelated to the images
    m = mirror_test(Dataset("noise", x, y, x[:4], y[:4], ["a", "b", "c", "d"]), use_cache=False)
    assert m.keep is None and m.flip and "too little learned" in m.describe()
