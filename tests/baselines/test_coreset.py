"""Coreset baselines: random, herding and k-center on hand-built features and on digits."""
from __future__ import annotations

import pytest
import torch

from minimaxdd.baselines.coreset import herding_order, kcenter_order, medoid_order, random_indices
from minimaxdd.baselines.registry import BASELINES, select
from minimaxdd.data.dataset import Dataset
from minimaxdd.data.synthetic import SyntheticSet
from minimaxdd.errors import UserError
from minimaxdd.evaluation import reference_classifier as reference


def test_random_indices_per_class_distinct_and_seeded(digits):
    y = digits.y_train
    idx = random_indices(y, 10, 5, seed=0)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    assert torch.equal(torch.bincount(y[idx], minlength=10), torch.full((10,), 5))
    assert torch.equal(idx, random_indices(y, 10, 5, seed=0))
    other = random_indices(y, 10, 5, seed=1)
    assert set(other.tolist()) != set(idx.tolist())
    assert torch.equal(torch.bincount(y[other], minlength=10), torch.full((10,), 5))


def test_herding_first_pick_is_nearest_the_mean():
    f = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.1, 0.9], [0.0, 4.0], [5.0, 5.0]])  # mean (2, 1.8)
    assert int(herding_order(f, 1)[0]) == 2


def test_herding_order_by_hand():
    # mean 5.25. t=1: |4 - 5.25| is smallest -> 4 (row 2). t=2: (4 + 7) / 2 = 5.5 beats (4 + 10) / 2
    # and (4 + 0) / 2 -> 7 (row 3). t=3: (11 + 0) / 3 = 3.67 beats (11 + 10) / 3 = 7 -> 0 (row 0).
    f = torch.tensor([[0.0], [10.0], [4.0], [7.0]])
    assert herding_order(f, 4).tolist() == [2, 3, 0, 1]
    assert herding_order(f, 2).tolist() == [2, 3]


def test_herding_balances_rather_than_ranks():
    # mean 0. Ranking by distance to the mean would take 0.1 then 0.12; herding takes 0.1 then
    # -0.15, whose running mean (-0.025) is nearer 0 than (0.1 + 0.12) / 2. Then 0.12 (running
    # mean 0.023), then -10.07 (-2.5 beats 10: 2.52), then 10.
    f = torch.tensor([[0.1], [0.12], [-0.15], [10.0], [-10.07]])
    assert herding_order(f, 5).tolist() == [0, 2, 1, 4, 3]


def test_kcenter_order_by_hand():
    # mean (2.3, -0.56): row 1 (1, 0) is nearest; the farthest from it is row 2 (10, 0) (81 vs 10);
    # then the point farthest from both chosen is row 3 (0, -3) (min distance^2 10). Left: row 0 at
    # squared distance 1 from row 1, row 4 (0.5, 0.2) at 0.29: row 0, then row 4.
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, -3.0], [0.5, 0.2]])
    assert kcenter_order(f, 3).tolist() == [1, 2, 3]
    assert kcenter_order(f, 5).tolist() == [1, 2, 3, 0, 4]


def test_medoids_pick_one_real_row_per_cluster_seeded_and_distinct():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    f = (centres[:, None] + 0.3 * torch.randn(3, 20, 2, generator=g)).reshape(60, 2)   # rows 20c..20c+19: cluster c
    cluster_of = torch.arange(60) // 20
    for seed in range(5):
        idx = medoid_order(f, 3, seed)
        assert sorted(cluster_of[idx].tolist()) == [0, 1, 2]            # one medoid per cluster, whatever the start
        for i in idx.tolist():                                           # each the member nearest its cluster's mean
            members = f[cluster_of == cluster_of[i]]
            assert torch.equal(f[i], members[(members - members.mean(0)).norm(dim=1).argmin()])
        assert torch.equal(idx, medoid_order(f, 3, seed))
    assert sorted(medoid_order(f[:5], 5, 0).tolist()) == [0, 1, 2, 3, 4]   # k = n: every row once, none repeated
    dup = torch.zeros(6, 2)                                              # identical rows: still k distinct indices
    assert len(set(medoid_order(dup, 4, 1).tolist())) == 4
    with pytest.raises(ValueError, match="k=7"):
        medoid_order(f[:6], 7, 0)


def _toy_dataset():
    x = torch.arange(7 * 4, dtype=torch.uint8).view(7, 1, 2, 2)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    return Dataset("toy", x, y, x.clone(), y.clone(), ["cat", "dog", "emu"])


def test_select_ipc_larger_than_a_class_names_it():
    ds = _toy_dataset()
    with pytest.raises(UserError, match="--ipc 3") as e:
        select(ds, "random", 3)
    msg = str(e.value)
    assert "dog (2)" in msg and "emu (2)" in msg and "cat" not in msg
    with pytest.raises(UserError, match="at least 1"):
        select(ds, "random", 0)
    with pytest.raises(UserError, match="unknown baseline 'mean'"):
        select(ds, "mean", 1)
    s = select(ds, "random", 2)
    assert isinstance(s, SyntheticSet) and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.class_names == ["cat", "dog", "emu"]


def test_baseline_registry_names_the_cli_choices():
    assert list(BASELINES) == ["random", "herding", "kcenter", "medoids", "dm"]
    ds = _toy_dataset()
    s = BASELINES["random"](ds, 2, 0, "cpu")
    t = select(ds, "random", 2, seed=0)
    assert torch.equal(s.images, t.images) and torch.equal(s.labels, t.labels)
    assert torch.equal(s.images, ds.x_train[random_indices(ds.y_train, 3, 2, seed=0)])


def _assert_real_images(s: SyntheticSet, ds: Dataset, ipc: int) -> None:
    assert torch.equal(torch.bincount(s.labels, minlength=ds.num_classes), torch.full((ds.num_classes,), ipc))
    flat = ds.x_train.flatten(1)
    for img, lab in zip(s.images, s.labels):
        rows = (flat == img.flatten()).all(1).nonzero().squeeze(1)
        assert len(rows) > 0 and (ds.y_train[rows] == lab).any()
    assert len({tuple(img.flatten().tolist()) for img in s.images}) == len(s.images)  # no repeats


def test_select_herding_and_kcenter_use_a_cached_reference(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path))
    herd = select(digits, "herding", 3, feature_epochs=2)
    assert herd.images.dtype == torch.uint8 and herd.images.shape == (30, 1, 8, 8)
    _assert_real_images(herd, digits, 3)
    cached = list((tmp_path / "reference").glob("*.pt"))
    assert len(cached) == 1

    def no_training(*a, **k):
        raise AssertionError("the reference classifier was retrained instead of loaded from the cache")

    monkeypatch.setattr(reference, "train_classifier", no_training)
    again = select(digits, "herding", 3, feature_epochs=2)
    assert torch.equal(again.images, herd.images) and torch.equal(again.labels, herd.labels)
    kc = select(digits, "kcenter", 3, feature_epochs=2)  # same reference, same cache entry
    _assert_real_images(kc, digits, 3)
    assert not torch.equal(kc.images, herd.images)
    assert list((tmp_path / "reference").glob("*.pt")) == cached
    # another schedule is another cache entry, so it must train
    with pytest.raises(AssertionError, match="retrained"):
        select(digits, "herding", 3, feature_epochs=3)
