"""A set's own images/ folder evaluates against the dataset it was made from, even when two class names
sanitise to the same folder name (written as numbered folders); exact duplicate names are refused."""
from __future__ import annotations

import pytest
import torch

from minimaxdd.data.synthetic import SyntheticSet, conform, folder_names, load_synthetic, write_synthetic
from minimaxdd.errors import UserError


def test_numbered_folders_of_names_that_sanitise_alike_conform_to_the_real_names(tmp_path):
    names = ["a b", "a_b", "c"]
    images = torch.arange(3 * 4, dtype=torch.uint8).reshape(3, 1, 2, 2) * 20
    write_synthetic(tmp_path / "s", SyntheticSet(images, torch.tensor([2, 0, 1]), names), {})
    assert folder_names(names) == ["000_a_b", "001_a_b", "002_c"]
    s = conform(load_synthetic(tmp_path / "s" / "images"), names, channels=1, size=2)
    assert s.class_names == names
    for k in range(3):              # each image under its own class, pixels intact
        assert torch.equal(s.images[s.labels == k], images[torch.tensor([2, 0, 1]) == k])


def test_duplicate_class_names_are_refused():
    with pytest.raises(UserError, match=r"class names \['a'\] occur more than once; .*rename them"):
        SyntheticSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "a"])
