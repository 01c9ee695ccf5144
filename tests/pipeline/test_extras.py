"""The optional rows' helpers (pipeline.extras) and their config checks; the stage end to end is in test_distill."""
import pytest
import torch

from minimaxdd.baselines.coreset import herding_order
from minimaxdd.data.synthetic import SyntheticSet
from minimaxdd.errors import UserError
from minimaxdd.pipeline.config import build_config
from minimaxdd.pipeline.extras import extra_methods, keep_per_class
from minimaxdd.pipeline.sampling import per_class_prefix


def _pool(per_class=6, classes=3):
    y = torch.arange(classes).repeat_interleave(per_class)                       # class-major, as sets are written
    x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return SyntheticSet(x, y, [f"c{i}" for i in range(classes)])


def test_prefix_keeps_the_first_images_of_each_class():
    s = per_class_prefix(_pool(), 2)
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.images[:, 0, 0, 0].tolist() == [0, 1, 6, 7, 12, 13]


def test_keep_by_herding_and_at_random_stay_within_each_class():
    pool = _pool()
    feats = torch.nn.functional.normalize(torch.randn(len(pool.labels), 5, generator=torch.Generator().manual_seed(1)),
                                          dim=1)
    herd = keep_per_class(pool, 3, feats, seed=0)
    for c in range(3):
        idx = (pool.labels == c).nonzero().squeeze(1)
        want = pool.images[idx[herding_order(feats[idx], 3)]]
        assert torch.equal(herd.images[herd.labels == c], want)                 # herding within the class's pool
    rnd = keep_per_class(pool, 3, None, seed=0)
    assert rnd.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    ids = rnd.images[:, 0, 0, 0]
    assert all(6 * c <= int(i) < 6 * (c + 1) for i, c in zip(ids, rnd.labels)) and len(set(ids.tolist())) == 9
    assert torch.equal(rnd.images, keep_per_class(pool, 3, None, seed=0).images)   # seeded
    assert not torch.equal(rnd.images, keep_per_class(pool, 3, None, seed=1).images)


def test_extra_rows_are_named_with_their_controls():
    cfg = build_config(None, {"data": "digits", "extras": {"pool": 5, "prototypes": 2.0}})
    assert extra_methods(cfg) == ["minimax-pool5-herding", "minimax-pool5-random", "medoids-sigma2", "medoids"]
    assert extra_methods(build_config(None, {"data": "digits"})) == []


@pytest.mark.parametrize("extras, phases, match", [
    ({"pool": 1}, 1, "extras.pool must be 0"),
    ({"pool": -2}, 1, "extras.pool must be 0"),
    ({"prototypes": 0}, 1, "positive number"),
    ({"pool": 3}, 2, "one-model run"),
])
def test_bad_extras_are_refused_with_the_fix(extras, phases, match):
    with pytest.raises(UserError, match=match):
        build_config(None, {"data": "digits", "phases": phases, "extras": extras})
