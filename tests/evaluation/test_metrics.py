"""Diagnostics with known answers: a set against itself, real vs noise, a collapsed set."""
import json
import math
from pathlib import Path

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


def test_coverage_no_self_takes_away_only_a_real_points_own_copy():
    # real 0, 1, 2, 10 (k = 1 radii 1, 1, 1, 8); the set: a copy of real 2, and 9.5 (no copy)
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    y = torch.tensor([[2.0], [9.5]])
    assert metrics.density_coverage(x, y, k=1)[1] == pytest.approx(3 / 4)        # 2 covers 1 and itself; 9.5 covers 10
    copy_of = torch.tensor([2, -1])
    assert metrics.coverage_no_self(x, y, copy_of, k=1) == pytest.approx(2 / 4)  # 2 still covers 1, not itself
    assert metrics.coverage_no_self(x, y, torch.tensor([-1, -1]), k=1) == pytest.approx(3 / 4)
    # on a class's subsample (Real.index), the copy is found by the real image's own index
    sub = metrics.Real(x[[1, 2]], torch.tensor([1, 2]))
    assert metrics.coverage_no_self(sub, y[:1], copy_of[:1], k=1) == pytest.approx(1 / 2)


def test_copies_of_finds_exact_images_only():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=g)
    near = real[7].clone()
    near[0, 0, 0] ^= 1                                                             # one bit off: not a copy
    images = torch.stack([real[3], near, real[49], torch.zeros(1, 4, 4, dtype=torch.uint8)])
    assert metrics.copies_of(images, real).tolist() == [3, -1, 49, -1]
    assert metrics.copies_of(images.float(), real).tolist() == [-1] * 4            # another dtype: no copies


def test_a_real_subset_loses_its_self_credit_and_a_generated_set_keeps_its_coverage():
    x, y = blobs(100)
    g = torch.Generator().manual_seed(3)
    pick = torch.cat([(y == c).nonzero().squeeze(1)[torch.randperm(100, generator=g)[:10]] for c in range(3)])
    subset = metrics.set_metrics(x, y, x[pick], y[pick], 3, copy_of=pick)
    assert subset["coverage_no_self"] < subset["coverage"]
    moved = x[pick] + 1e-3                                                         # near the same images, no copies
    gen = metrics.set_metrics(x, y, moved, y[pick], 3, copy_of=torch.full((30,), -1))
    assert gen["coverage_no_self"] == gen["coverage"]
    assert all(m["coverage_no_self"] <= m["coverage"] for m in subset["per_class"])
    assert "coverage_no_self" not in metrics.set_metrics(x, y, x[pick], y[pick], 3)   # unknown copies: absent


def test_collapsed_set_is_less_diverse_and_covers_less():
    x, y = blobs(100)
    g = torch.Generator().manual_seed(3)
    pick = torch.cat([(y == c).nonzero().squeeze(1)[torch.randperm(100, generator=g)[:10]] for c in range(3)])
    good = metrics.set_metrics(x, y, x[pick], y[pick], 3)
    first = torch.cat([(y == c).nonzero()[0] for c in range(3)])
    col_idx = first.repeat_interleave(10)
    bad = metrics.set_metrics(x, y, x[col_idx], y[col_idx], 3)
    assert bad["spread"] == pytest.approx(0.0, abs=1e-9)
    assert good["spread"] > 0.01
    assert good["coverage"] > bad["coverage"]
    assert good["representativeness"] > bad["representativeness"]
    assert len(good["per_class"]) == 3


def test_sets_measured_against_shared_real_sides_get_the_same_numbers_and_one_real_pass(monkeypatch):
    x, y = blobs(100)
    g = torch.Generator().manual_seed(5)
    picks = [torch.randperm(300, generator=g)[:30] for _ in range(3)]
    alone = [metrics.set_metrics(x, y, x[p] + 0.1, y[p], 3, seed=2, max_real=60) for p in picks]
    passes = []
    real_knn = metrics._knn_radius
    monkeypatch.setattr(metrics, "_knn_radius", lambda a, k: passes.append(len(a)) or real_knn(a, k))
    sides = metrics.real_sides(x, y, 3, seed=2, max_real=60)
    shared = [metrics.set_metrics(x, y, x[p] + 0.1, y[p], 3, seed=2, max_real=60, sides=sides) for p in picks]
    assert shared == alone                                   # every number, every class, bit for bit
    # the real radii (k = 3 and 5, three classes of 60 and the 180 pooled) once, then only the sets' own radii
    assert sorted(n for n in passes if n >= 60) == [60] * 6 + [180] * 2
    assert all(n <= 30 for n in passes if n < 60)           # the rest: the sets' own radii (30 pooled, per class)


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


# ----------------------------------------------------------------------------- full size (issue 19)


def test_frechet_in_sample_space_equals_feature_space(monkeypatch):
    # D > min(n, m): the Gram route; it must give what the D x D covariances give (up to the rounding of
    # the D x D route's near-zero eigenvalues, whose square roots add ~1e-8 each)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(30, 50, generator=g), 1.5 * torch.randn(12, 50, generator=g) + 0.2
    a, b = metrics._centred(x.double()), metrics._centred(y.double())
    ex, vx = torch.linalg.eigh(a.T @ a)
    rx = (vx * ex.clamp(min=0).sqrt()) @ vx.T
    want = float(torch.linalg.eigvalsh(rx @ (b.T @ b) @ rx).clamp(min=0).sqrt().sum())
    assert metrics._trace_sqrt_product(a, b) == pytest.approx(want, rel=1e-6)
    assert metrics._trace_sqrt_product(b, a) == pytest.approx(want, rel=1e-6)
    monkeypatch.setattr(metrics, "CHUNK", 7)                        # blocks of rows: same sum
    assert metrics._trace_sqrt_product(a, b) == pytest.approx(want, rel=1e-6)


def test_frechet_of_unpooled_256px_features_needs_no_d_by_d_matrix():
    # ConvNet-3's unpooled map at 256 px has 131,072 values: a covariance would be 128 GiB in fp64; in
    # sample space it is a 10 x 10 matrix
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 131072, generator=g), torch.randn(6, 131072, generator=g)
    fd = metrics.frechet_distance(x, y)
    assert 0 < fd < float("inf")
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6 * fd)


def test_embedding_is_bounded_at_256px():
    from minimaxdd.evaluation.classifiers import EMBED_SIDE, build_model
    net = build_model("convnet3", 3, 10, 256).eval()
    with torch.no_grad():
        e = net.embedding(torch.randn(2, 3, 256, 256))
    assert e.shape == (2, 128 * EMBED_SIDE ** 2)                       # 2048, not 128 x 32 x 32
    small = build_model("convnet3", 3, 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(small.embedding(x), small.features(x))      # 32 px: the 4x4 map as it was


def _imagefolder(root, size, classes=("a", "b"), per=4, seed=0):
    from PIL import Image
    g = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per):
                Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_metrics_at_256px_with_a_tiny_feature_network(tmp_path, monkeypatch):
    from minimaxdd.baselines.registry import select
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.data.synthetic import write_synthetic
    from minimaxdd.evaluation.classifiers import ConvNet
    from minimaxdd.files import manifest

    root = _imagefolder(tmp_path / "data", 256)
    spec = f"imagefolder:{root}"
    ds = load_dataset(spec, size=256)
    write_synthetic(tmp_path / "rnd", select(ds, "random", 2, seed=1), manifest({}, 0, 0))
    # the reference ConvNet-3 at 128 wide would be slow on a CPU: same architecture, 8 wide, untrained
    monkeypatch.setattr(metrics, "reference_classifier",
                        lambda ds, cfg, device: ConvNet(ds.channels, ds.num_classes, ds.size, width=8).eval())
    m = metrics.run_metrics([str(tmp_path / "rnd")], spec, out=str(tmp_path / "m.json"), device="cpu",
                            tsne=str(tmp_path / "t.png"))
    assert all(math.isfinite(m[k]) for k in ("mmd", "fid", "precision", "recall"))
    assert "average-pooled to at most 4x4" in m["features"]
    assert (tmp_path / "t.png").stat().st_size > 0


def test_metrics_checks_every_input_before_training_the_reference(tmp_path, monkeypatch, digits):
    from minimaxdd.baselines.registry import select
    from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
    from minimaxdd.errors import UserError
    from minimaxdd.files import manifest

    def no_training(*a, **k):
        raise AssertionError("the reference classifier was trained before the inputs were checked")
    monkeypatch.setattr(metrics, "reference_classifier", no_training)
    good = tmp_path / "good"
    write_synthetic(good, select(digits, "random", 1, seed=0), manifest({}, 0, 0))
    wrong = tmp_path / "wrong"
    s = select(digits, "random", 1, seed=0)
    write_synthetic(wrong, SyntheticSet(s.images, s.labels, [f"c{i}" for i in range(10)]), manifest({}, 0, 0))
    (tmp_path / "other").mkdir()
    cases = [([str(good), str(tmp_path / "nope")], {}, "do not exist"),
             ([str(good), str(wrong)], {}, "class"),                                 # classes differ
             ([str(good)], {"features": "torchscript:/nope.pt"}, "not found"),
             ([str(good)], {"features": "inception"}, "--features must be"),
             ([str(good)], {"tsne": str(tmp_path / "t.gif")}, "--tsne"),
             ([str(good)], {"out": str(tmp_path / "other")}, "is a directory"),
             ([str(good), str(tmp_path / "x" / ".." / "good")], {}, "given twice"),   # one folder, two spellings
             ([], {}, "at least one")]
    for sets, kw, needle in cases:
        with pytest.raises(UserError, match=needle):
            metrics.run_metrics(sets, "digits", device="cpu", **kw)


def test_results_written_before_the_rename_still_show_their_spread():
    # a committed run's metrics.json calls `spread` by its old name, `diversity`
    old = json.loads((Path(__file__).parents[2] / "benchmarks/results/distill-digits-unet/metrics.json").read_text())
    name, entry = next(iter(old["sets"].items()))
    assert "spread" not in entry and metrics.metric(entry, "spread") == entry["diversity"]
    row = next(line for line in metrics.format_metrics(old).splitlines() if line.startswith(f"| {name} |"))
    assert row.split("|")[-2].strip() == f"{entry['diversity']:.4f}"
    assert metrics.metric({"spread": 0.5, "diversity": 0.1}, "spread") == 0.5      # the new name wins


def test_sets_in_folders_of_one_name_are_named_by_the_path_that_tells_them_apart(tmp_path):
    a, b = tmp_path / "plain" / "sample" / "ipc10", tmp_path / "modes" / "sample" / "ipc10"
    assert metrics.set_names([str(a), str(b)]) == ["plain/sample/ipc10", "modes/sample/ipc10"]
    assert metrics.set_names([str(a), str(tmp_path / "random-ipc10")]) == ["ipc10", "random-ipc10"]
    assert metrics.set_names([str(a)]) == ["ipc10"]


def test_two_runs_ipc10_sets_are_measured_side_by_side(tmp_path, monkeypatch, digits):
    from minimaxdd.baselines.registry import select
    from minimaxdd.data.synthetic import write_synthetic
    from minimaxdd.evaluation.classifiers import ConvNet
    from minimaxdd.files import manifest

    paths = [tmp_path / run / "sample" / "ipc10" for run in ("plain", "modes")]
    for seed, p in enumerate(paths):
        write_synthetic(p, select(digits, "random", 2, seed=seed), manifest({}, 0, 0))
    monkeypatch.setattr(metrics, "reference_classifier",      # untrained and narrow: the naming is under test
                        lambda ds, cfg, device: ConvNet(ds.channels, ds.num_classes, ds.size, width=8).eval())
    m = metrics.run_metrics([str(p) for p in paths], "digits", device="cpu")
    assert {n: e["path"] for n, e in m["sets"].items()} == {"plain/sample/ipc10": str(paths[0]),
                                                            "modes/sample/ipc10": str(paths[1])}
    assert m["sets"]["plain/sample/ipc10"]["mmd"] != m["sets"]["modes/sample/ipc10"]["mmd"]
