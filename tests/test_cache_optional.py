"""The cache folder is optional: a cache file that cannot be written (a full disk, a cache folder that is a file) is
a warning naming MINIMAXDD_CACHE, not --out, and the command goes on with what it computed; one that cannot be read
is computed again, with a warning. Each writer of the cache is checked: decoded folders (tests/test_bad_inputs.py),
the reference classifier, the mirror test, the precision measurement and the sha256 memo."""
from __future__ import annotations

import errno
import hashlib

import pytest
import torch

from minimaxdd import files
from minimaxdd import precision as P
from minimaxdd.data.dataset import Dataset
from minimaxdd.diffusion.checkpoints import file_sha256
from minimaxdd.evaluation import symmetry
from minimaxdd.evaluation.reference_classifier import teacher_classifier
from minimaxdd.files import read_cache, save_atomic, writing_cache

NOT_WRITTEN = r"cannot write the cache file .*; going on without caching it\. .*set MINIMAXDD_CACHE to a writable folder"
NOT_READ = r"ignoring the unreadable cache file .*; computing it again\. Delete the file, or set MINIMAXDD_CACHE"


@pytest.fixture
def cache_is_a_file(tmp_path, monkeypatch):
    """MINIMAXDD_CACHE names a file: nothing can be written under it (as a read-only folder would, even for root)."""
    (tmp_path / "cache-file").write_text("a file, not a folder")
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path / "cache-file"))
    return tmp_path / "cache-file"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_read_cache_gives_the_value_none_for_no_file_and_warns_of_a_damaged_one(tmp_path):
    save_atomic({"a": torch.arange(3)}, tmp_path / "good.pt")
    (tmp_path / "bad.pt").write_bytes(b"\0not a torch file")

    def load(p):
        return torch.load(p, weights_only=True)

    assert torch.equal(read_cache(tmp_path / "good.pt", load)["a"], torch.arange(3))
    assert read_cache(tmp_path / "none.pt", load) is None
    assert read_cache(tmp_path / "good.pt" / "below-a-file.pt", load) is None
    with pytest.warns(UserWarning, match=NOT_READ):
        assert read_cache(tmp_path / "bad.pt", load) is None


def test_a_full_disk_in_the_cache_is_a_warning_naming_the_knob_and_leaves_nothing(tmp_path, monkeypatch):
    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.warns(UserWarning, match=r"x\.pt: the disk is full \(no space left on device\); going on") as said:
        with writing_cache(tmp_path / "x.pt"):
            save_atomic({"a": 1}, tmp_path / "x.pt")
    assert "MINIMAXDD_CACHE" in str(said[0].message) and "--out" not in str(said[0].message)
    assert list(tmp_path.iterdir()) == []                 # no temporary file left


def test_what_is_not_a_failed_write_is_not_swallowed(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        with writing_cache(tmp_path / "x.pt"):
            raise ValueError("a bug")
    with pytest.raises(KeyboardInterrupt):
        with writing_cache(tmp_path / "x.pt"):
            raise KeyboardInterrupt


def test_the_sha256_memo(tmp_path, cache_is_a_file, monkeypatch):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"some weights")
    digest = hashlib.sha256(b"some weights").hexdigest()
    with pytest.warns(UserWarning, match=NOT_WRITTEN):
        assert file_sha256(f) == digest
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path / "cache2"))
    assert file_sha256(f) == digest                       # memoised
    (memo,) = (tmp_path / "cache2" / "sha256").iterdir()
    memo.write_text("{not json")
    with pytest.warns(UserWarning, match=NOT_READ):
        assert file_sha256(f) == digest
    assert file_sha256(f) == digest and memo.read_text().startswith("{\n")     # written again


def tiny(n_per_class: int = 24) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(n_per_class)
    x = (torch.rand(len(y), 1, 8, 8, generator=g) * 60 + y[:, None, None, None] * 60).to(torch.uint8)
    return Dataset("tiny", x, y, x[:8], y[:8], ["a", "b", "c", "d"])


def test_the_reference_classifier_without_a_writable_cache_and_with_a_damaged_file(cache_is_a_file, cache,
                                                                                   monkeypatch):
    ds = tiny()
    monkeypatch.setenv("MINIMAXDD_CACHE", str(cache_is_a_file))
    with pytest.warns(UserWarning, match=NOT_WRITTEN):
        first = teacher_classifier(ds, "convnet3", epochs=1, precision="fp32")
    monkeypatch.setenv("MINIMAXDD_CACHE", str(cache))
    teacher_classifier(ds, "convnet3", epochs=1, precision="fp32")
    (saved,) = (cache / "reference").iterdir()
    saved.write_bytes(saved.read_bytes()[:100])           # truncated
    with pytest.warns(UserWarning, match=NOT_READ):
        again = teacher_classifier(ds, "convnet3", epochs=1, precision="fp32")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_the_mirror_test_without_a_writable_cache_and_with_a_damaged_file(cache_is_a_file, cache, monkeypatch):
    monkeypatch.setattr(symmetry, "IMAGES_SEEN", 400)
    ds = tiny()
    monkeypatch.setenv("MINIMAXDD_CACHE", str(cache_is_a_file))
    with pytest.warns(UserWarning, match=NOT_WRITTEN):
        first = symmetry.mirror_test(ds, precision="fp32")
    monkeypatch.setenv("MINIMAXDD_CACHE", str(cache))
    symmetry.mirror_test(ds, precision="fp32")
    (saved,) = (cache / "symmetry").iterdir()
    saved.write_text('{"accuracy": ')
    with pytest.warns(UserWarning, match=NOT_READ):
        again = symmetry.mirror_test(ds, precision="fp32")
    assert not again.cached and again.flip == first.flip and again.accuracy == first.accuracy


def test_the_precision_measurement_without_a_writable_cache(cache_is_a_file, monkeypatch):
    monkeypatch.setattr(P, "_decided", {})
    monkeypatch.setattr(P, "measure_cpu", lambda reps=5: {"fp32_ms": 2.0, "bf16_ms": 24.0, "ratio": 12.0})
    with pytest.warns(UserWarning, match=NOT_WRITTEN + r" with free space"):
        assert P.cpu_choice()["choice"] == "fp32"
    assert files.cache_dir() == cache_is_a_file
