"""The synthetic-set format: atomic writes, round trips through data.pt and PNG folders, conform()."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from minimaxdd.data.synthetic import (
    SyntheticSet,
    conform,
    load_synthetic,
    write_synthetic,
)
from minimaxdd.errors import UserError
from minimaxdd.runtime import generator

MANIFEST = {"producer": "test", "seed": 3, "config": {"ipc": 12}}


def _set(channels: int, per_class: int = 12, names=("cat", "dog"), size: int = 8) -> SyntheticSet:
    k = len(names)
    n = per_class * k
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator(channels))
    labels = torch.arange(n) % k  # classes interleaved, so the folder order differs from the tensor order
    return SyntheticSet(images, labels, list(names))


def _by_class(s: SyntheticSet) -> tuple[torch.Tensor, torch.Tensor]:
    """The set in ImageFolder order: by label, and in order of appearance within a label."""
    order = torch.argsort(s.labels, stable=True)
    return s.images[order], s.labels[order]


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_data_pt_and_png_folder(tmp_path, channels):
    s = _set(channels)
    out = write_synthetic(tmp_path / "set", s, MANIFEST)
    assert out == tmp_path / "set"
    back = load_synthetic(out)
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.class_names == s.class_names
    # the same through the .pt file itself
    assert torch.equal(load_synthetic(out / "data.pt").images, s.images)
    # the PNGs, read as an ImageFolder (12 per class: 10.png sorts after 9.png)
    assert sorted(p.name for p in (out / "images" / "cat").iterdir()) == sorted(f"{i}.png" for i in range(12))
    folder = load_synthetic(out / "images")
    x, y = _by_class(s)
    assert folder.images.shape == s.images.shape and folder.images.dtype == torch.uint8
    assert torch.equal(folder.images, x) and torch.equal(folder.labels, y)
    assert folder.class_names == ["cat", "dog"]
    # a dir with images/ but no data.pt is read through its PNGs
    (out / "data.pt").unlink()
    assert torch.equal(load_synthetic(out).images, x)


def test_manifest_is_written(tmp_path):
    out = write_synthetic(tmp_path / "set", _set(1), MANIFEST)
    assert json.loads((out / "manifest.json").read_text()) == MANIFEST
    d = torch.load(out / "data.pt", weights_only=True)
    assert set(d) == {"images", "labels", "class_names"} and d["labels"].dtype == torch.int64


def test_existing_out_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        write_synthetic(out, _set(1), MANIFEST)
    assert _listing(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    write_synthetic(out, _set(3), MANIFEST, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert load_synthetic(out).images.shape[1] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp or .old dirs left


def _failing_save(*a, **k):
    raise OSError("disk full")


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic(tmp_path / "set", _set(1), MANIFEST)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_overwrite_keeps_the_old_set(tmp_path, monkeypatch):
    old = _set(1)
    out = write_synthetic(tmp_path / "set", old, MANIFEST)
    before = _listing(out)
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError):
        write_synthetic(out, _set(3), MANIFEST, overwrite=True)
    monkeypatch.undo()
    assert _listing(out) == before and torch.equal(load_synthetic(out).images, old.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_class_names_are_sanitised_into_folders(tmp_path):
    s = _set(1, per_class=2, names=("T-shirt/top", "Trouser"))
    out = write_synthetic(tmp_path / "set", s, MANIFEST)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["T-shirt_top", "Trouser"]
    folder = load_synthetic(out / "images")
    # conform accepts the sanitised folder names and gives back the real ones
    c = conform(folder, ["T-shirt/top", "Trouser"], 1, 8)
    assert c.class_names == ["T-shirt/top", "Trouser"] and torch.equal(c.labels, folder.labels)


# ----------------------------------------------------------------------------- conform


def test_conform_class_mismatch_names_both_lists():
    s = _set(1, per_class=1, names=("cat", "dog"))
    with pytest.raises(UserError) as e:
        conform(s, ["cat", "cow"], 1, 8)
    msg = str(e.value)
    assert "['cat', 'dog']" in msg and "['cat', 'cow']" in msg
    with pytest.raises(UserError):
        conform(s, ["cat", "dog", "emu"], 1, 8)


def test_conform_channel_mismatch_raises():
    with pytest.raises(UserError, match="1 channels and the real ones 3"):
        conform(_set(1, per_class=1), ["cat", "dog"], 3, 8)


def test_conform_resizes_with_a_warning():
    s = _set(3, per_class=2, size=16)
    s.images[0] = 100  # a constant image stays constant under (antialiased) bilinear resizing
    with pytest.warns(UserWarning, match="16x16.*8x8"):
        c = conform(s, ["cat", "dog"], 3, 8)
    assert c.images.shape == (4, 3, 8, 8) and c.images.dtype == torch.uint8
    assert (c.images[0] == 100).all() and torch.equal(c.labels, s.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same size: no warning, images untouched
        assert torch.equal(conform(s, ["cat", "dog"], 3, 16).images, s.images)


def test_conform_relabels_an_imagefolder_by_class_name(tmp_path):
    s = _set(1, per_class=2, names=("dog", "cat"))  # label order is not alphabetical
    out = write_synthetic(tmp_path / "set", s, MANIFEST)
    c = conform(load_synthetic(out / "images"), ["dog", "cat"], 1, 8)
    assert c.class_names == ["dog", "cat"]
    for img, lab in zip(c.images, c.labels):  # each image keeps its own class
        src = (s.images == img).flatten(1).all(1).nonzero().squeeze(1)
        assert (s.labels[src] == lab).all()


# ----------------------------------------------------------------------------- other inputs


def test_npz_channels_last(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "s.npz", images=x, labels=y, class_names=np.array(["a", "b", "c"]))
    s = load_synthetic(tmp_path / "s.npz")
    assert torch.equal(s.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert s.labels.tolist() == y.tolist() and s.class_names == ["a", "b", "c"]
    # x_train / y_train keys, grey (N, H, W), no class names
    np.savez(tmp_path / "g.npz", x_train=x[..., 0], y_train=y)
    g = load_synthetic(tmp_path / "g.npz")
    assert g.images.shape == (6, 1, 8, 8) and g.class_names == ["0", "1", "2"]
    np.savez(tmp_path / "bad.npz", pictures=x)
    with pytest.raises(UserError, match="needs keys images and labels"):
        load_synthetic(tmp_path / "bad.npz")


def test_pt_file_uint8_and_float(tmp_path):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.save({"images": x, "labels": torch.tensor([0, 1, 0, 1]), "class_names": ["a", "b"]}, tmp_path / "u.pt")
    s = load_synthetic(tmp_path / "u.pt")
    assert torch.equal(s.images, x) and s.class_names == ["a", "b"]
    torch.save({"images": x.float() / 255, "labels": torch.tensor([0, 1, 0, 1])}, tmp_path / "f.pt")
    f = load_synthetic(tmp_path / "f.pt")
    assert torch.equal(f.images, x) and f.class_names == ["0", "1"]
    torch.save({"images": x.float(), "labels": torch.tensor([0, 1, 0, 1])}, tmp_path / "big.pt")
    with pytest.raises(UserError, match="uint8"):
        load_synthetic(tmp_path / "big.pt")
    torch.save({"images": x, "labels": torch.tensor([0, 1, 0, 5]), "class_names": ["a", "b"]}, tmp_path / "l.pt")
    with pytest.raises(UserError, match="labels span 0..5"):
        load_synthetic(tmp_path / "l.pt")


UNPICKLED: list[str] = []


def _record(msg: str) -> str:
    UNPICKLED.append(msg)
    return msg


class _Payload:
    """An object whose unpickling runs code (here: records a call)."""

    def __reduce__(self):
        return (_record, ("code ran while loading",))


def test_pt_with_pickled_objects_is_refused(tmp_path):
    UNPICKLED.clear()
    torch.save({"images": _Payload(), "labels": torch.zeros(1)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot read"):
        load_synthetic(tmp_path / "evil.pt")
    assert UNPICKLED == []  # weights_only: nothing was executed
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="must hold a dict"):
        load_synthetic(tmp_path / "list.pt")


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_synthetic(tmp_path / "nope")
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(UserError, match="neither"):
        load_synthetic(tmp_path / "s.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_synthetic(tmp_path / "empty")


@pytest.mark.parametrize("kind", ["corrupt", "object"])
def test_unreadable_npz_is_a_user_error(tmp_path, kind):
    path = tmp_path / "s.npz"
    if kind == "corrupt":
        path.write_bytes(b"not a zip file")
    else:
        np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1))
    with pytest.raises(UserError):
        load_synthetic(path)
