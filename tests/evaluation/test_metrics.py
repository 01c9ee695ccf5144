"""Diagnostics with known answers: a set against itself, real vs noise, a collapsed set."""
import json

import numpy as np
import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.evaluation import metrics


def blobs(n_per, k=3, d=8, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 5
    x = torch.cat([centres[c] + spread * torch.randn(n_per, d, generator=g) for c in range(k)])
    y = torch.arange(k).repeat_interleave(n_per)
    return x, y


def test_set_against_itself():
    x, _ = blobs(40)
    m = metrics.compare(x, x)
    assert m["mmd"] == pytest.approx(0, abs=1e-9)
    assert m["fid"] == pytest.approx(0, abs=1e-6)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["coverage"] == 1.0
    assert m["representativeness"] == pytest.approx(1.0)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    # two large samples from N(0, I) and N(mu, 4I): FD = |mu|^2 + d (1 + 4 - 2*2) = |mu|^2 + d
    g = torch.Generator().manual_seed(1)
    d = 4
    x = torch.randn(20000, d, generator=g)
    y = 2 * torch.randn(20000, d, generator=g) + torch.tensor([1.0, 0, 0, 0])
    assert metrics.frechet_distance(x, y) == pytest.approx(1.0 + d, rel=0.05)


def test_mmd_by_hand():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    s = 1.0   # the median non-zero real distance
    k = lambda a, b: np.exp(-((a - b) ** 2) / (2 * s * s))
    want = (k(0, 0) + k(0, 1) + k(1, 0) + k(1, 1)) / 4 + 1 - 2 * (k(0, 3) + k(1, 3)) / 2
    assert metrics.mmd2(x, y) == pytest.approx(want)


def test_precision_recall_density_coverage_by_hand():
    # real: 0, 1, 2, 10 on a line; k = 1 radii: 1, 1, 1, 8
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    y = torch.tensor([[0.5], [30.0]])
    p, r = metrics.precision_recall(x, y, k=1)
    assert p == 0.5                  # 0.5 is inside; 30 is not (10's ball reaches 18)
    # synthetic k=1 radius: both are 29.5 from each other, so every real point is inside
    assert r == 1.0
    d, c = metrics.density_coverage(x, y, k=1)
    assert d == pytest.approx(2 / 2)  # 0.5 lies in the balls of 0 and 1 (and 2? |2-0.5|=1.5 > 1: no)
    assert c == pytest.approx(2 / 4)


def test_collapsed_set_is_less_diverse_and_covers_less():
    x, y = blobs(100)
    g = torch.Generator().manual_seed(3)
    pick = torch.cat([(y == c).nonzero().squeeze(1)[torch.randperm(100, generator=g)[:10]] for c in range(3)])
    good = metrics.set_metrics(x, y, x[pick], y[pick], 3)
    first = torch.cat([(y == c).nonzero()[0] for c in range(3)])
    col_idx = first.repeat_interleave(10)
    bad = metrics.set_metrics(x, y, x[col_idx], y[col_idx], 3)
    assert bad["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert good["diversity"] > 0.01
    assert good["coverage"] > bad["coverage"]
    assert good["representativeness"] > bad["representativeness"]
    assert len(good["per_class"]) == 3


@pytest.mark.slow   # trains the 50-epoch reference classifier on digits: ~20 s on a 2-core CPU
def test_real_subset_beats_noise_on_digits(tmp_path):
    from minimaxdd.baselines.registry import select
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
    from minimaxdd.files import manifest

    ds = load_dataset("digits")
    real = select(ds, "random", 10, seed=0)
    write_synthetic(tmp_path / "real", real, manifest({}, 0, 0))
    g = torch.Generator().manual_seed(0)
    noise = SyntheticSet(torch.randint(0, 256, real.images.shape, generator=g, dtype=torch.uint8), real.labels,
                         real.class_names)
    write_synthetic(tmp_path / "noise", noise, manifest({}, 0, 0))
    out = tmp_path / "m.json"
    assert main(["metrics", str(tmp_path / "real"), str(tmp_path / "noise"), "--real", "digits", "--out", str(out),
                 "--device", "cpu"]) == 0
    m = json.loads(out.read_text())
    r, n = m["sets"]["real"], m["sets"]["noise"]
    assert "reference classifier" in m["features"]
    assert r["fid"] < n["fid"] and r["mmd"] < n["mmd"]
    assert r["precision"] > n["precision"] and r["coverage"] > n["coverage"]
    # the single-set form puts the keys at the top level
    out1 = tmp_path / "m1.json"
    assert main(["metrics", str(tmp_path / "real"), "--real", "digits", "--out", str(out1), "--device", "cpu"]) == 0
    m1 = json.loads(out1.read_text())
    assert m1["features"] == m["features"] and m1["sets"]["real"] == r
    for k in metrics.KEYS:   # the same numbers as the two-set run gave for this set (same cached features)
        assert m1[k] == pytest.approx(r[k], rel=1e-12, abs=1e-12), k


def test_blocked_distances_match_one_block(monkeypatch):
    # the k-NN, kernel and ball counts are computed in row blocks to bound memory: same numbers
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 6, generator=g), torch.randn(13, 6, generator=g) + 0.3
    whole = metrics.compare(x, y)
    monkeypatch.setattr(metrics, "CHUNK", 7)
    blocked = metrics.compare(x, y)
    assert blocked == pytest.approx(whole, rel=1e-12)
    assert 0 < whole["precision"] < 1 and 0 < whole["coverage"] < 1   # not degenerate
