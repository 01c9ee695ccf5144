"""Batched augmentation: shapes, seeding, and each op checked against what it claims to do."""
from __future__ import annotations

import pytest
import torch

from minimaxdd.data import augment
from minimaxdd.data.augment import AUGMENTATIONS, DSA_OPS, DSAParams
from minimaxdd.runtime import generator

ALL_OPS = {**DSA_OPS, "random_resized_crop": augment.random_resized_crop, "rrc_flip": augment.rrc_flip,
           "dsa": augment.dsa, "colour_jitter": augment.colour_jitter, "lighting": augment.lighting,
           "idc": augment.idc}


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
    assert AUGMENTATIONS == {"dsa": augment.dsa, "dsa_noflip": augment.dsa_noflip, "rrc_flip": augment.rrc_flip,
                             "idc": augment.idc, "none": augment.no_augmentation, "flip": augment.flip_only,
                             "rded_patch2": augment.rded_patch2}
    # the mirror test's classifier: every DSA op but the mirror (evaluation.symmetry)
    assert augment.DSA_NO_FLIP == ("color", "crop", "cutout", "scale", "rotate")
    x = _batch()
    g = generator(0)
    assert AUGMENTATIONS["none"](x, g) is x and torch.equal(g.get_state(), generator(0).get_state())  # no draw
    # the colour ops need the batch's normalisation; the others take the batch as it is
    stats = (torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3]))
    assert augment.for_protocol("dsa", stats) is augment.dsa
    assert torch.equal(augment.for_protocol("idc", stats)(x, generator(1)), augment.idc(x, generator(1), stats))


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


# ----------------------------------------------------------------------------- IDC's colour augmentation


def _pixels(n=32, side=6, seed=0):
    return torch.rand(n, 3, side, side, generator=generator(seed), dtype=torch.float64)


def test_colour_jitter_blends_each_image_towards_its_targets():
    x = _pixels()
    out = augment.colour_jitter(x, generator(0))
    assert out.shape == x.shape and torch.equal(out, augment.colour_jitter(x, generator(0)))
    # a grey image (all channels equal) stays grey: every target of a grey image is grey
    grey = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    g_out = augment.colour_jitter(grey, generator(0))
    assert torch.allclose(g_out[:, 0], g_out[:, 1]) and torch.allclose(g_out[:, 1], g_out[:, 2])
    # strength 0 changes nothing
    torch.testing.assert_close(augment.colour_jitter(x, generator(0), strength=0.0), x)


def test_colour_jitter_by_hand_for_one_image():
    # redo the draws and apply IDC's three lerps in the drawn order, image by image
    x = _pixels(n=5)
    g = generator(3)
    alpha = (torch.rand(15, generator=g).view(3, 5) * 2 - 1) * 0.4
    order = torch.rand(5, 3, generator=g).argsort(dim=1)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    want = []
    for i in range(5):
        img = x[i].clone()
        for op in order[i].tolist():
            grey = (img * w[:, None, None]).sum(0, keepdim=True)            # (1, H, W)
            target = [torch.zeros_like(img), grey.mean().expand_as(img), grey.expand_as(img)][op]
            img = img.lerp(target, float(alpha[op, i]))
        want.append(img)
    torch.testing.assert_close(augment.colour_jitter(x, generator(3)), torch.stack(want))


def test_lighting_adds_one_pca_colour_shift_per_image():
    x = _pixels(n=4)
    out = augment.lighting(x, generator(5))
    shift = out - x                                                          # (N, 3, H, W)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))      # constant over pixels
    a = torch.randn(4, 3, generator=generator(5)) * 0.1
    vec = torch.tensor(augment.PCA_EIGVEC, dtype=torch.float64)
    val = torch.tensor(augment.PCA_EIGVAL, dtype=torch.float64)
    torch.testing.assert_close(shift[:, :, 0, 0], (a.double() * val) @ vec.T)
    # the eigenvectors are orthonormal (they are the PCA's): the shift's size is that of a * eigval
    torch.testing.assert_close(vec.T @ vec, torch.eye(3, dtype=torch.float64), atol=2e-4, rtol=0)
    grey = torch.rand(4, 1, 6, 6, generator=generator(0))
    assert torch.equal(augment.lighting(grey, generator(5)), grey)        # RGB only


def test_idc_works_on_normalised_batches_as_on_pixels():
    # IDC jitters pixels in [0, 1] before normalising; given the normalisation, our op on a normalised batch
    # is that op on pixels, normalised
    x = _pixels(n=8, side=8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    norm = (x - mean.double()[None, :, None, None]) / std.double()[None, :, None, None]
    on_pixels = augment.idc(x, generator(2))
    on_norm = augment.idc(norm, generator(2), stats=(mean, std))
    torch.testing.assert_close(on_norm, (on_pixels - mean.double()[None, :, None, None]) / std.double()[None, :, None, None])
    assert not torch.allclose(on_pixels, augment.rrc_flip(x, generator(2)))   # the colour ops did something
