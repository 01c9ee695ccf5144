"""The sampling guides (guidance interval, mode guidance, deviation term): each moves D only where it should, on
both formulations (EDM's D and the DDPM ancestral sampler's epsilon)."""
import math

import pytest
import torch
import torch.nn.functional as F
from oracles import LabelledNet, Oracle, targets

from minimaxdd.diffusion.denoisers import EDMDenoiser, Guided, VPDenoiser
from minimaxdd.diffusion.guides import Guides, class_modes, deviation_push, kmeans, nearest_by_cosine
from minimaxdd.diffusion.sampling import generate, image_seed


def _x(n=3, seed=6):
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_guidance_interval_is_no_guidance_outside_and_full_guidance_inside():
    y = torch.tensor([0, 2, 1])
    x = _x()
    g = Guides(cfg_lo=0.5, cfg_hi=2.0)
    with torch.no_grad():
        for sigma, inside in ((0.3, False), (0.5, False), (0.51, True), (2.0, True), (3.0, False)):
            got = Guided(EDMDenoiser(LabelledNet()), y, 3.0, guides=g)(x, sigma)
            want = Guided(EDMDenoiser(LabelledNet()), y, 3.0 if inside else 1.0)(x, sigma)
            assert torch.equal(got, want), sigma
        assert not torch.allclose(Guided(EDMDenoiser(LabelledNet()), y, 3.0)(x, 1.0),
                                  Guided(EDMDenoiser(LabelledNet()), y, 1.0)(x, 1.0))
    # the DDPM path (ancestral sampler): the same rule on the training step's sigma
    model = Oracle(targets(), learn_sigma=True, null_target=torch.zeros(2, 4, 4))
    den = VPDenoiser(model)
    for t in (100, 500, 900):
        tt = torch.full((3,), t)
        inside = 0.5 < den.sigmas[t] <= 2.0
        got = Guided(den, y, 3.0, guides=g).raw(x, tt)
        assert torch.equal(got, Guided(den, y, 3.0 if inside else 1.0).raw(x, tt)), t


def test_mode_guidance_pulls_D_above_its_stop_level_only():
    y = torch.tensor([0, 2, 1])
    x, modes = _x(), _x(seed=9)
    g = Guides(modes=modes, mode_strength=0.25, mode_stop=1.0)
    with torch.no_grad():
        for sigma in (0.5, 1.0, 1.5, 40.0):
            D = Guided(EDMDenoiser(LabelledNet()), y, 2.0)(x, sigma)
            got = Guided(EDMDenoiser(LabelledNet()), y, 2.0, guides=g)(x, sigma)
            want = D + 0.25 * (modes - D) if sigma > 1.0 else D
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # on the DDPM formulation's epsilon: the x0 estimate the ancestral sampler forms moves exactly as D does
    model = Oracle(targets(), learn_sigma=True, null_target=torch.zeros(2, 4, 4))
    den = VPDenoiser(model)
    for t in (50, 600):
        sigma = float(den.sigmas[t])
        tt = torch.full((3,), t)
        x_t = x / math.sqrt(1 + sigma ** 2)                     # the DDPM state of x
        out = Guided(den, y, 1.0, guides=Guides(modes=modes, mode_strength=0.25, mode_stop=1.0)).raw(x_t, tt)
        plain = Guided(den, y, 1.0).raw(x_t, tt)
        assert torch.equal(out[:, 2:], plain[:, 2:])             # the learned variance is untouched
        D, D_g = x - sigma * plain[:, :2], x - sigma * out[:, :2]
        want = D + 0.25 * (modes - D) if sigma > 1.0 else D
        torch.testing.assert_close(D_g, want, rtol=0, atol=1e-4 * max(1.0, sigma))
    assert sigma > 1.0 > float(den.sigmas[50])                   # both sides of the stop level were seen


def test_the_deviation_term_turns_D_away_from_its_nearest_earlier_sample():
    D = _x(2)
    far = -D                                                   # cosine -1
    near = D + 0.5 * _x(2, seed=3)                             # cosine near 1
    memory = torch.stack([torch.stack([far[i], near[i]]) for i in range(2)])       # (2, 2, C, H, W)
    assert torch.equal(nearest_by_cosine(D, memory), near)
    out = deviation_push(D, memory, 0.3)
    cos = lambda a, b: F.cosine_similarity(a.flatten(1), b.flatten(1))   # noqa: E731
    assert (cos(out, near) < cos(D, near) - 0.01).all()        # further from its nearest earlier sample
    torch.testing.assert_close(out.flatten(1).norm(dim=1), D.flatten(1).norm(dim=1), rtol=0.1, atol=0)
    torch.testing.assert_close(deviation_push(D, memory, 0.0), D)
    # only inside its window, only with a memory, on both formulations
    g = Guides(memory=memory, deviation=0.3, dev_lo=1.0, dev_hi=10.0)
    assert torch.equal(g.adjust(D, 0.5), D) and torch.equal(g.adjust(D, 20.0), D)
    torch.testing.assert_close(g.adjust(D, 5.0), out)
    empty = Guides(memory=torch.zeros(2, 0, 2, 4, 4), deviation=0.3, dev_lo=1.0, dev_hi=10.0)
    assert torch.equal(empty.adjust(D, 5.0), D)
    den = VPDenoiser(Oracle(targets()))
    t = 700
    sigma = float(den.sigmas[t])
    y = torch.tensor([0, 1])
    x_t = D / math.sqrt(1 + sigma ** 2)
    eps = Guided(den, y, guides=Guides(memory=memory, deviation=0.3, dev_lo=1.0, dev_hi=None)).raw(x_t, torch.full((2,), t))
    D0 = D - sigma * Guided(den, y).raw(x_t, torch.full((2,), t))
    torch.testing.assert_close(D - sigma * eps, deviation_push(D0, memory, 0.3), rtol=0, atol=1e-3)


def test_guides_at_neutral_values_change_no_sample_on_any_sampler():
    model = Oracle(targets(), learn_sigma=True)
    y = torch.tensor([0, 1, 2, 2])
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    neutral = Guides(cfg_lo=0.0, cfg_hi=None, modes=_x(4), mode_strength=0.0, memory=_x(4).unsqueeze(1), deviation=0.0)
    for sampler in ("ddpm", "heun", "dpm-solver"):
        a = generate(model, y, seeds, sampler=sampler, steps=5, cfg_scale=2.0, batch_size=3)
        b = generate(model, y, seeds, sampler=sampler, steps=5, cfg_scale=2.0, batch_size=3, guides=neutral)
        assert torch.equal(a, b), sampler


def test_full_mode_guidance_lands_every_sampler_on_the_modes():
    # lambda 1 with no stop: D is the mode at every level, so every sampler ends on it, batches sliced right
    model = Oracle(targets(), learn_sigma=True)
    y = torch.tensor([0, 1, 2, 2, 0])
    modes = _x(5).clamp(-1, 1)
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    g = Guides(modes=modes, mode_strength=1.0, mode_stop=0.0)
    for sampler in ("ddpm", "euler", "heun"):
        out = generate(model, y, seeds, sampler=sampler, steps=6, batch_size=2, guides=g)
        assert (out - modes).abs().max() < 1e-3, sampler


def test_kmeans_modes_are_deterministic_and_per_class():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(30, 1, 2, 2, generator=g) - 3, torch.randn(20, 1, 2, 2, generator=g) + 3])
    labels = torch.tensor([0] * 25 + [1] * 25)
    a = class_modes(x, labels, [0, 1], 2, seed=4)
    assert torch.equal(a[1], class_modes(x, labels, [1], 2, seed=4)[1])      # independent of the other classes
    assert a[0].shape == (2, 1, 2, 2)
    two = kmeans(x.flatten(1), 2, torch.Generator().manual_seed(0))
    assert sorted(two.mean(1).sign().tolist()) == [-1.0, 1.0]                # the two blobs
    with pytest.raises(ValueError, match="fewer than the 30 modes"):
        class_modes(x, labels, [0], 30, seed=0)


def test_modes_found_in_features_are_cluster_means_in_the_models_space():
    # pixels say nothing about the hidden groups; the features do: each mode is its feature cluster's pixel mean
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 1, 3, 3, generator=g)
    group = torch.arange(40) % 2                                                # 20 and 20, alternating
    feats = torch.stack([group.float() * 10, torch.zeros(40)], 1) + 0.01 * torch.randn(40, 2, generator=g)
    labels = torch.zeros(40, dtype=torch.long)
    modes = class_modes(x, labels, [0], 2, seed=0, feats=feats)[0]
    want = {tuple(x[group == k].mean(0).flatten().tolist()) for k in (0, 1)}
    assert {tuple(m.flatten().tolist()) for m in modes} == want
    assert not torch.allclose(modes, class_modes(x, labels, [0], 2, seed=0)[0])  # not the pixel k-means


def test_medoid_modes_are_the_member_images_nearest_each_centre_in_the_space_clustered():
    g = torch.Generator().manual_seed(3)
    # two blobs in pixels; each medoid mode is one of the class's own images, the one nearest its blob's centre
    x = torch.cat([torch.randn(12, 1, 2, 2, generator=g) - 3, torch.randn(12, 1, 2, 2, generator=g) + 3])
    labels = torch.zeros(24, dtype=torch.long)
    centres = class_modes(x, labels, [0], 2, seed=5)[0]
    medoids = class_modes(x, labels, [0], 2, seed=5, medoid=True)[0]
    rows = x.flatten(1)
    for c, m in zip(centres.flatten(1), medoids.flatten(1)):
        blob = rows[(rows.mean(1) > 0) == (c.mean() > 0)]                    # the centre's own blob
        assert torch.equal(m, blob[torch.cdist(c[None], blob).argmin()])    # a real image, nearest its centre
    assert not torch.allclose(medoids, centres)
    # clustered in features: the medoid is the member nearest the feature centre, whatever its pixels
    group = torch.arange(24) % 2
    feats = torch.stack([group.float() * 10, torch.zeros(24)], 1) + 0.01 * torch.randn(24, 2, generator=g)
    feats[4] = torch.tensor([0.0, 0.0])                                        # group 0's exact centre, near enough
    fm = class_modes(x, labels, [0], 2, seed=0, feats=feats, medoid=True)[0].flatten(1)
    assert any(torch.equal(m, rows[4]) for m in fm)
    assert all(any(torch.equal(m, r) for r in rows[group == k]) for m, k in zip(fm, (0, 1))) or \
        all(any(torch.equal(m, r) for r in rows[group == k]) for m, k in zip(fm, (1, 0)))
