"""Batched augmentation: shapes, seeding, and each op checked against what it claims to do."""
from __future__ import annotations

import pytest
import torch

from minimaxdd.data import augment
from minimaxdd.data.augment import AUGMENTATIONS, DSA_OPS, DSAParams
from minimaxdd.runtime import generator

ALL_OPS = {**DSA_OPS, "random_resized_crop": augment.random_resized_crop, "rrc_flip": augment.rrc_flip,
           "dsa": augment.dsa}


def _batch(n=16, c=3, h=16, w=16, dtype=torch.float32, seed=0):
    return torch.randn(n, c, h, w, generator=generator(seed)).to(dtype)


def _ramp(n, c, h, w):
    """Every value distinct and > 0 (0 is the fill of crop and cutout)."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float64).view(n, c, h, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_shape_dtype_and_seeding(name, dtype):
    op = ALL_OPS[name]
    x = _batch(dtype=dtype)
    a = op(x, generator(1))
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, op(x, generator(1)))  # same seed, same bytes
    assert not torch.equal(a, op(x, generator(2)))
    assert not torch.equal(a, x)


def test_ops_do_not_modify_their_input():
    x = _batch()
    before = x.clone()
    for op in ALL_OPS.values():
        op(x, generator(0))
    assert torch.equal(x, before)


def test_flip_probability_one_and_zero():
    x = _batch()
    assert torch.equal(augment.flip(x, generator(0), DSAParams(flip=1.0)), x.flip(3))
    assert torch.equal(augment.flip(x, generator(0), DSAParams(flip=0.0)), x)
    # the default p=0.5 flips some images and keeps others
    out = augment.flip(x, generator(0))
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_augmentation_registry():
    # the names an evaluation protocol's `augment` field may take, and what they run
    assert AUGMENTATIONS == {"dsa": augment.dsa, "rrc_flip": augment.rrc_flip, "none": augment.no_augmentation}
    x = _batch()
    g = generator(0)
    assert AUGMENTATIONS["none"](x, g) is x and torch.equal(g.get_state(), generator(0).get_state())  # no draw


def test_dsa_applies_one_op_of_the_strategy():
    x = _batch()
    out = augment.dsa(x, generator(0), strategy=("flip",), p=DSAParams(flip=1.0))
    assert torch.equal(out, x.flip(3))


def test_crop_is_an_integer_translation_with_zero_fill():
    # non-square, so swapped height/width ranges would show
    n, c, h, w = 64, 2, 8, 24
    p = DSAParams()
    my, mx = int(h * p.crop_pad + 0.5), int(w * p.crop_pad + 0.5)  # 1, 3
    x = _ramp(n, c, h, w)
    out = augment.crop(x, generator(0), p)
    pos = {float(v): (i, j) for ci in range(c) for img in x for i, row in enumerate(img[ci])
           for j, v in enumerate(row)}  # value -> (row, col); values are unique
    shifts = set()
    for k in range(n):
        offsets = set()
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    v = float(out[k, ci, i, j])
                    if v != 0:
                        si, sj = pos[v]
                        assert x[k, ci, si, sj] == v  # from this image and channel
                        offsets.add((i - si, j - sj))
        assert len(offsets) == 1, f"image {k} is not one translation: {offsets}"
        dy, dx = offsets.pop()
        assert abs(dy) <= my and abs(dx) <= mx
        # exactly the pixels whose source falls outside the image are zero
        assert int((out[k] != 0).sum()) == c * (h - abs(dy)) * (w - abs(dx))
        shifts.add((dy, dx))
    assert len(shifts) > 1 and max(abs(dx) for _, dx in shifts) == mx


@pytest.mark.parametrize("side", [16, 9])
def test_cutout_zeroes_one_square(side):
    n, c = 64, 3
    x = _ramp(n, c, side, side)
    out = augment.cutout(x, generator(0))
    cut = int(side * 0.5 + 0.5)
    full = 0
    for k in range(n):
        hole = out[k] == 0
        assert torch.equal(hole[0], hole[1]) and torch.equal(hole[0], hole[2])  # same hole in every channel
        hole = hole[0]
        assert torch.equal(out[k][:, ~hole], x[k][:, ~hole])  # the rest unchanged
        rows, cols = hole.any(1).nonzero().squeeze(1), hole.any(0).nonzero().squeeze(1)
        assert len(rows) > 0
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert hole[r0:r1, c0:c1].all() and int(hole.sum()) == (r1 - r0) * (c1 - c0)  # a rectangle
        assert r1 - r0 <= cut and c1 - c0 <= cut
        inside = r0 > 0 and c0 > 0 and r1 < side and c1 < side
        if inside:
            assert int(hole.sum()) == cut * cut
            full += 1
    assert full > 0


def test_random_resized_crop_full_box_is_identity():
    x = _batch(dtype=torch.float64)
    out = augment.random_resized_crop(x, generator(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_random_resized_crop_interpolates_within_each_image():
    x = _batch()
    out = augment.random_resized_crop(x, generator(0))
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))  # bilinear + border padding: convex combinations
    assert (out.amin(dim=(1, 2, 3)) >= lo - 1e-5).all() and (out.amax(dim=(1, 2, 3)) <= hi + 1e-5).all()


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lam_is_the_kept_area(seed):
    n, h, w = 8, 12, 10
    x = (torch.arange(n, dtype=torch.float32) + 1)[:, None, None, None].expand(n, 3, h, w).contiguous()
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    before = x.clone()
    out, ya, yb, lam = augment.cutmix(x, y, generator(seed))
    assert torch.equal(x, before)
    assert torch.equal(ya, y)
    assert sorted(yb.tolist()) == sorted(y.tolist())
    diff = (out != x).any(1)  # (n, h, w)
    moved = [k for k in range(n) if diff[k].any()]
    assert moved  # these seeds all draw a non-empty box and a non-identity permutation
    box = diff[moved[0]]
    for k in moved:
        assert torch.equal(diff[k], box)  # one box for the whole batch
        src = int(out[k, 0][box][0]) - 1  # the image whose constant was pasted
        assert (out[k][:, box] == src + 1).all()
        assert yb[k] == y[src]
    assert lam == pytest.approx(1 - int(box.sum()) / (h * w))
    assert 0.0 <= lam <= 1.0


def test_cutmix_is_seeded():
    x, y = _batch(n=8), torch.arange(8)
    a = augment.cutmix(x, y, generator(3))
    b = augment.cutmix(x, y, generator(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[3] == b[3]


@pytest.mark.parametrize("name", sorted(DSA_OPS))
def test_gradients_flow_through_dsa_ops(name):
    x = _batch(n=4).requires_grad_(True)
    weights = torch.randn(x.shape, generator=generator(9))
    (DSA_OPS[name](x, generator(0)) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
