"""Dataset sources on tiny hand-built files: idx, CIFAR pickles, npz, image folders, ImageNet subsets."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxdd.data import image_folders
from minimaxdd.data import imagenet as classes
from minimaxdd.data import sources as data
from minimaxdd.data.dataset import Dataset
from minimaxdd.data.sources import DatasetError, dataset_names, load_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_NPZ = SHARED / "data" / "cifar10-500pc.npz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIMAXDD_QUIET", "1")


# ----------------------------------------------------------------------------- registry, digits

def test_unknown_source_lists_known_names():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'") as e:
        load_dataset("nope:/x")
    for name in ("digits", "cifar10", "npz", "imagewoof"):
        assert name in str(e.value)
    assert set(dataset_names()) == set(data.DATASETS)


def test_digits_shapes_split_and_determinism():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1347, 1, 8, 8) and ds.x_test.shape == (450, 1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10 and ds.channels == 1 and ds.size == 8
    assert ds.class_names == [str(i) for i in range(10)]
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0  # 16 -> 255
    # stratified: every class has ~25% of its images in test
    tr, te = torch.bincount(ds.y_train, minlength=10), torch.bincount(ds.y_test, minlength=10)
    assert ((te.float() - 0.25 * (tr + te).float()).abs() <= 1).all()
    again = load_dataset("digits")
    assert again.fingerprint() == ds.fingerprint() and len(ds.fingerprint()) == 16
    assert torch.equal(again.y_test, ds.y_test)


def test_digits_resize_and_bad_arg():
    ds = load_dataset("digits", size=16)
    assert ds.x_train.shape == (1347, 1, 16, 16) and ds.x_test.shape[2:] == (16, 16)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.is_contiguous()
    assert ds.fingerprint() != load_dataset("digits").fingerprint()
    with pytest.raises(DatasetError, match="takes no argument"):
        load_dataset("digits:foo")
    with pytest.raises(DatasetError, match="positive"):
        load_dataset("digits", size=0)


# ----------------------------------------------------------------------------- idx

def write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(raw)


def make_idx_dir(folder: Path, n_train=20, n_test=10, gz=(True, False, True, False)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for (key, stem), z in zip(data.IDX_FILES.items(), gz):
        magic = data.IDX_IMAGES_MAGIC if key.startswith("x") else data.IDX_LABELS_MAGIC
        write_idx(folder / (stem + (".gz" if z else "")), arrays[key], magic)
    return arrays


def test_mnist_idx_plain_and_gz(tmp_path):
    arrays = make_idx_dir(tmp_path / "m")
    ds = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["x_train"])
    assert np.array_equal(ds.y_test.numpy(), arrays["y_test"])
    assert ds.name == f"mnist:{tmp_path / 'm'}"
    fm = load_dataset(f"fashion-mnist:{tmp_path / 'm'}")
    assert fm.class_names[0] == "T-shirt/top" and fm.class_names[-1] == "Ankle boot"


def test_idx_bad_magic_and_missing_files(tmp_path):
    make_idx_dir(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.zeros(20), data.IDX_IMAGES_MAGIC)
    with pytest.raises(DatasetError, match="magic number 2051, expected 2049"):
        load_dataset(f"mnist:{tmp_path / 'm'}")
    (tmp_path / "m" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte") as e:
        load_dataset(f"fashion-mnist:{tmp_path / 'm'}")
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    with pytest.raises(DatasetError, match="mnist:DIR"):
        load_dataset("mnist")


def test_idx_truncated(tmp_path):
    make_idx_dir(tmp_path / "m")
    p = tmp_path / "m" / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(f"mnist:{tmp_path / 'm'}")


@pytest.mark.skipif(not Path(data.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_default_path():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.class_names[9] == "Ankle boot"


# ----------------------------------------------------------------------------- CIFAR pickles

class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 byte string (BINSTRING), as in the real CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def make_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        first = x if first is None else first
        labels = [(i * per_batch + k) % 10 for k in range(per_batch)]
        py2_pickle({b"batch_label": b"fake", b"labels": labels, b"data": x, b"filenames": [b"a.png"] * per_batch},
                   folder / name)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    py2_pickle({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    return first


def test_cifar10_py2_pickles_folder_or_parent(tmp_path):
    first = make_cifar10(tmp_path)
    for arg in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset(f"cifar10:{arg}")
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
        assert ds.class_names[0] == "airplane" and ds.num_classes == 10
        assert ds.y_train.tolist() == [k % 10 for k in range(20)]
        assert np.array_equal(ds.x_train[:4].reshape(4, -1).numpy(), first)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 200), ("test", 10)):
        py2_pickle({b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                    b"fine_labels": [k % 100 for k in range(n)], b"coarse_labels": [k % 20 for k in range(n)]},
                   folder / name)
    py2_pickle({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, folder / "meta")
    ds = load_dataset(f"cifar100:{tmp_path}", size=16)
    assert ds.num_classes == 100 and ds.class_names[99] == "c99"
    assert ds.x_train.shape == (200, 3, 16, 16) and ds.y_test.tolist() == list(range(10))


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    py2_pickle({b"data": Evil(marker), b"labels": [0]}, tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetError, match=r"refused global (posix|os|nt)\.system") as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert "data_batch_3" in str(e.value)
    assert not marker.exists()


def test_cifar_missing_files(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset(f"cifar10:{tmp_path}")


# ----------------------------------------------------------------------------- npz

def save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_missing_keys(tmp_path):
    spec = save_npz(tmp_path / "a.npz", x_train=np.zeros((2, 1, 4, 4), np.uint8), y_train=np.zeros(2, np.int64),
                    x_test=np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"lacks keys \['y_test'\]") as e:
        load_dataset(spec)
    assert "'x_train'" in str(e.value) and "save it with" in str(e.value)


def test_npz_channels_last_float_and_default_names(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 5, 5, 3)).astype(np.uint8)  # NHWC
    y = np.array([0, 1, 2, 0, 1, 2])
    spec = save_npz(tmp_path / "b.npz", x_train=x, y_train=y, x_test=x[:2].astype(np.float32) / 255, y_test=y[:2])
    ds = load_dataset(spec)
    assert ds.x_train.shape == (6, 3, 5, 5) and ds.class_names == ["0", "1", "2"]
    assert np.array_equal(ds.x_train.numpy(), x.transpose(0, 3, 1, 2))
    assert torch.equal(ds.x_test, ds.x_train[:2])  # float [0, 1] round-trips to the same uint8
    grey = save_npz(tmp_path / "g.npz", x_train=x[..., 0], y_train=y, x_test=x[:2, ..., 0], y_test=y[:2],
                    class_names=np.array(["a", "b", "c"]))
    g = load_dataset(grey)
    assert g.x_train.shape == (6, 1, 5, 5) and g.class_names == ["a", "b", "c"]


def test_npz_bad_dtype_labels_and_empty_class(tmp_path):
    x = np.zeros((4, 1, 4, 4), np.uint8)
    y = np.array([0, 1, 0, 1])
    bad = save_npz(tmp_path / "f.npz", x_train=x.astype(np.float32) * 0 + 2.0, y_train=y, x_test=x, y_test=y)
    with pytest.raises(DatasetError, match="float in \\[0, 1\\]"):
        load_dataset(bad)
    out = save_npz(tmp_path / "r.npz", x_train=x, y_train=np.array([0, 1, 5, 1]), x_test=x, y_test=y,
                   class_names=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match=r"train labels span 0\.\.5 but there are 2 class names") as e:
        load_dataset(out)
    assert "fix the labels or class_names" in str(e.value)
    empty = save_npz(tmp_path / "e.npz", x_train=x, y_train=np.array([0, 2, 0, 2]), x_test=x, y_test=y)
    with pytest.raises(DatasetError, match=r"class 1 \('1'\) has no training images"):
        load_dataset(empty)
    shapes = save_npz(tmp_path / "s.npz", x_train=x, y_train=y, x_test=np.zeros((4, 1, 6, 6), np.uint8), y_test=y)
    with pytest.raises(DatasetError, match="same C, H, W"):
        load_dataset(shapes)


@pytest.mark.skipif(not REAL_NPZ.is_file(), reason=f"{REAL_NPZ} not present")
def test_real_cifar10_subset_npz():
    ds = load_dataset(f"npz:{REAL_NPZ}")
    assert ds.x_train.shape == (5085, 3, 32, 32) and ds.x_test.shape == (1017, 3, 32, 32)
    assert ds.class_names[:2] == ["airplane", "automobile"] and ds.class_names[-1] == "truck"
    assert torch.bincount(ds.y_train).tolist() == [517, 524, 490, 493, 537, 475, 503, 516, 529, 501]
    assert torch.bincount(ds.y_test).tolist() == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]


# ----------------------------------------------------------------------------- image folders

def png(path: Path, value: int, wh=(12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", wh, (value, value, value)).save(path)


def make_folder(root: Path, class_dirs: list[str], per_class: int = 2, splits=("train", "val")) -> None:
    for s in splits:
        for c, name in enumerate(class_dirs):
            for i in range(per_class):
                png(root / s / name / f"{i}.png", 10 * c + i)


def test_imagefolder_decode_crop_and_labels(tmp_path):
    make_folder(tmp_path / "f", ["cat", "ant", "bee"], splits=("train", "test"))
    # a 12x8 gradient: shorter side is already 8, so the crop keeps columns 2..9
    grad = np.tile((np.arange(12) * 20).astype(np.uint8), (8, 1))
    Image.fromarray(np.stack([grad] * 3, -1)).save(tmp_path / "f" / "train" / "ant" / "0.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}", size=8)
    assert ds.class_names == ["ant", "bee", "cat"]  # sorted folder names
    assert ds.x_train.shape == (6, 3, 8, 8) and ds.x_test.shape == (6, 3, 8, 8)
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.x_train[0, 0, 0].tolist() == list(range(40, 200, 20))
    assert int(ds.x_train[4, 1, 3, 3]) == 0 and int(ds.x_train[3, 2, 0, 0]) == 21  # cat/0 is 0, bee/1 is 21


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "f"
    make_folder(root, ["a", "b"])
    (root / "train" / "b" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot decode image .*b/1\.png"):
        load_dataset(f"imagefolder:{root}", size=8)
    (root / "train" / "b" / "1.png").unlink()
    (root / "train" / "b" / "0.png").unlink()
    with pytest.raises(DatasetError, match=r"class folder .*train/b has no images"):
        load_dataset(f"imagefolder:{root}", size=8)
    (root / "train" / "c").mkdir()
    with pytest.raises(DatasetError, match=r"class folders differ") as e:
        load_dataset(f"imagefolder:{root}", size=8)
    assert "['a', 'b', 'c']" in str(e.value) and "['a', 'b']" in str(e.value)
    with pytest.raises(DatasetError, match="val/ or test/"):
        make_folder(tmp_path / "g", ["a"], splits=("train",))
        load_dataset(f"imagefolder:{tmp_path / 'g'}", size=8)


def test_imagefolder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = tmp_path / "f"
    make_folder(root, ["a", "b"])
    first = load_dataset(f"imagefolder:{root}", size=8)
    assert len(list((tmp_path / "cache" / "datasets").glob("*.pt"))) == 1

    def boom(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(image_folders, "decode_image", boom)
    again = load_dataset(f"imagefolder:{root}", size=8)
    assert torch.equal(again.x_train, first.x_train) and again.class_names == first.class_names
    with pytest.raises(AssertionError):  # another size is another cache entry
        load_dataset(f"imagefolder:{root}", size=6)
    with pytest.raises(AssertionError):  # so is a changed file
        png(root / "val" / "a" / "2.png", 99)
        load_dataset(f"imagefolder:{root}", size=8)
    with pytest.raises(AssertionError):  # and cache=False always decodes
        (root / "val" / "a" / "2.png").unlink()
        load_dataset(f"imagefolder:{root}", size=8, cache=False)


def _folder(root: Path, files: dict[str, list[tuple[str, tuple[int, int]]]], value: int = 90) -> None:
    """root/{train,val}/<class>/<i>.png, each class a list of (Pillow mode, (w, h))."""
    for s in ("train", "val"):
        for c, images in files.items():
            for i, (mode, wh) in enumerate(images):
                path = root / s / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new(mode, wh, value if mode == "L" else (value, value, value)).save(path)


def test_imagefolder_keeps_its_own_size_and_one_channel_when_stored_grey(tmp_path):
    _folder(tmp_path / "g", {"a": [("L", (28, 28))] * 2, "b": [("L", (28, 28))] * 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # nothing to say: one size, no upscaling
        g = load_dataset(f"imagefolder:{tmp_path / 'g'}")
    assert g.x_train.shape == (4, 1, 28, 28) and int(g.x_train[0, 0, 5, 5]) == 90
    # files stored RGB stay RGB, equal channels or not (the file's mode decides: FOLDER_GREY_MODES);
    # non-square ones are centre-cropped to their shorter side, not resampled
    _folder(tmp_path / "c", {"a": [("RGB", (12, 8))] * 2, "b": [("L", (12, 8))] * 2})
    c = load_dataset(f"imagefolder:{tmp_path / 'c'}")
    assert c.x_train.shape == (4, 3, 8, 8) and c.x_train.unique().tolist() == [90]


def test_imagefolder_of_mixed_sizes_takes_the_most_common_and_says_so(tmp_path):
    root = tmp_path / "m"
    _folder(root, {"a": [("RGB", (32, 32)), ("RGB", (32, 32)), ("RGB", (16, 20))],
                   "b": [("RGB", (32, 32)), ("RGB", (64, 48)), ("RGB", (32, 40))]})
    with pytest.warns(UserWarning) as told:
        ds = load_dataset(f"imagefolder:{root}")
    assert ds.x_train.shape == (6, 3, 32, 32)
    said = [str(w.message) for w in told]
    assert any("come in 3 sizes (shorter side 32 px: 8, 16 px: 2, 48 px: 2); all are resized to 32 px, the most "
               "common (pass --size to choose another)" in m for m in said), said
    assert any("2 of 12 images are smaller than 32 px (the smallest 16 px) and are upscaled" in m for m in said)
    with pytest.warns(UserWarning) as told_again:                   # a cache hit says it again
        again = load_dataset(f"imagefolder:{root}")
    assert torch.equal(again.x_train, ds.x_train) and [str(w.message) for w in told_again] == said
    with pytest.warns(UserWarning, match=r"12 of 12 images are smaller than 80 px \(the smallest 16 px\)"):
        assert load_dataset(f"imagefolder:{root}", size=80).x_train.shape == (6, 3, 80, 80)


def test_imagenet_subsets_keep_256_px_and_rgb(tmp_path):
    root = tmp_path / "imagenet"
    _folder(root, {w: [("L", (300, 300))] for w in classes.IMAGENETTE})
    ds = load_dataset(f"imagenette:{root}")
    assert ds.x_train.shape == (10, 3, 256, 256)


def test_one_class_is_refused_at_load_time(tmp_path):
    _folder(tmp_path / "one", {"cat": [("L", (8, 8))] * 3})
    with pytest.raises(DatasetError, match=r"1 class \['cat'\]; distillation and its evaluation need at least 2 "
                                           r"classes \(with one, every classifier scores 100%\)"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
    x = np.zeros((3, 1, 4, 4), np.uint8)
    spec = save_npz(tmp_path / "one.npz", x_train=x, y_train=np.zeros(3, np.int64), x_test=x,
                    y_test=np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match=r"1 class \['0'\]"):
        load_dataset(spec)


# ----------------------------------------------------------------------------- ImageNet subsets

def test_class_lists():
    for name, wnids in classes.SUBSETS.items():
        n = 100 if name == "imagenet100" else 10
        assert len(wnids) == n and len(set(wnids)) == n
        assert all(classes.WNID.fullmatch(w) for w in wnids)
    assert classes.IMAGENET100[:10] == classes.IMAGEIDC       # IDC's ImageNet-10 is its first 10 classes
    assert classes.IMAGENET100[20] == "n02086910" and classes.IMAGENET100[-1] == "n02090622"
    assert not set(classes.IMAGEWOOF) & set(classes.IMAGENETTE)
    assert classes.readable("n02099601") == "golden retriever" and classes.readable("n0") == "n0"


def test_imagewoof_layout_and_fastai_warning(tmp_path):
    root = tmp_path / "imagenet"
    make_folder(root, list(reversed(classes.IMAGEWOOF)) + ["n01440764"], per_class=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ImageNet-derived layout must not warn
        ds = load_dataset(f"imagewoof:{root}", size=8)
    assert ds.class_names == classes.IMAGEWOOF and ds.x_train.shape == (20, 3, 8, 8)
    # label order is the list order, not folder order; the extra class folder is not read
    assert ds.y_train.tolist() == [i // 2 for i in range(20)]
    assert int(ds.x_train[0, 0, 0, 0]) == 10 * 9  # IMAGEWOOF[0] was written as folder index 9

    (root / "noisy_imagewoof.csv").write_text("path,noisy_labels_0\n")
    with pytest.warns(UserWarning, match="fast.ai.*not comparable"):
        load_dataset(f"imagewoof:{root}", size=8)


def test_fastai_detection_by_name_and_val_size(tmp_path):
    woof = tmp_path / "imagewoof2-160"
    make_folder(woof, classes.IMAGEWOOF, per_class=1, splits=("train",))
    for w in classes.IMAGEWOOF:
        (woof / "val" / w).mkdir(parents=True)
    assert data._looks_fastai(woof, classes.IMAGEWOOF)
    plain = tmp_path / "imagenet"
    for w in classes.IMAGEWOOF:
        (plain / "val" / w).mkdir(parents=True)
    assert not data._looks_fastai(plain, classes.IMAGEWOOF)
    for i in range(data.IMAGENET_VAL_PER_CLASS + 1):  # more val images than ImageNet has per class
        (plain / "val" / classes.IMAGEWOOF[3] / f"{i}.JPEG").touch()
    assert data._looks_fastai(plain, classes.IMAGEWOOF)


def test_damaged_cache_file_is_rebuilt(tmp_path):
    make_folder(tmp_path / "f", ["a", "b"])
    first = load_dataset(f"imagefolder:{tmp_path / 'f'}", size=8)
    [cached] = (tmp_path / "cache" / "datasets").glob("*.pt")
    cached.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again = load_dataset(f"imagefolder:{tmp_path / 'f'}", size=8)
    assert torch.equal(again.x_test, first.x_test)
    assert torch.load(cached, weights_only=True)["x_train"].shape == (4, 3, 8, 8)  # rewritten


def test_imagenet_subset_missing_wnids(tmp_path):
    root = tmp_path / "imagenet"
    make_folder(root, classes.IMAGENETTE[:8])
    with pytest.raises(DatasetError, match="lacks the WordNet-id folders") as e:
        load_dataset(f"imagenette:{root}", size=8)
    assert f"train/{classes.IMAGENETTE[9]}" in str(e.value) and "val/<wnid>" in str(e.value)
    assert f"train/{classes.IMAGENETTE[0]}'" not in str(e.value)


def test_dataset_repr_is_short():
    ds = Dataset("t", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]),
                 torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([1]), ["a", "b"])
    assert repr(ds) == "Dataset('t', train=(2, 1, 4, 4), test=(1, 1, 4, 4), classes=2)"
    data._validate(ds)
    assert ds.num_classes == 2 and ds.size == 4 and ds.channels == 1


def make_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 3) -> None:
    """A tiny-imagenet-200-shaped folder: each class's train images share a colour; val labels from the txt."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), (40 * k, 0, 0)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        name = f"val_{k}.JPEG"
        Image.new("RGB", (64, 64), (40 * k, 0, 0)).save(root / "val" / "images" / name)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines[::-1]) + "\n")


def test_tinyimagenet_layout_labels_and_names(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    make_tiny_imagenet(root)
    ds = load_dataset(f"tinyimagenet:{root}")
    assert ds.x_train.shape == (9, 3, 64, 64) and ds.x_test.shape == (3, 3, 64, 64)
    assert ds.class_names == ["goldfish", "European fire salamander", "n01641577"]   # words.txt, else the wnid
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # val labels come from val_annotations.txt (written in reverse order), not from the file order
    assert ds.y_test.tolist() == [2, 1, 0]
    # each image's colour is its class (to JPEG precision)
    assert (ds.x_test[:, 0, 0, 0].float() / 40).round().tolist() == [2, 1, 0]
    assert load_dataset(f"tinyimagenet:{root}", size=32).x_train.shape[-1] == 32


def test_tinyimagenet_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="wnids.txt"):
        load_dataset(f"tinyimagenet:{tmp_path}")
    root = tmp_path / "t"
    make_tiny_imagenet(root)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="line 4 .* names no class"):
        load_dataset(f"tinyimagenet:{root}")


def test_imagenet_indices_from_a_full_train_folder(tmp_path):
    """With all 1000 ImageNet class folders present, a WordNet id's index is its position in their sorted list."""
    from minimaxdd.errors import UserError

    ids = sorted({f"n{i * 9973 % 10**8:08d}" for i in range(1, 999)} | {"n02086910", "n02090622"})[:1000]
    assert len(ids) == 1000
    for w in ids:
        (tmp_path / "train" / w).mkdir(parents=True)
    got = classes.imagenet_indices(["n02090622", "n02086910"], folder=tmp_path / "train")
    assert got == [ids.index("n02090622"), ids.index("n02086910")]
    assert classes.train_folder(f"imagenet100:{tmp_path}") == tmp_path / "train"
    assert classes.train_folder("cifar10:/x") is None
    (tmp_path / "train" / ids[0]).rmdir()          # 999 folders: not the whole of ImageNet, so no index is read
    with pytest.raises(UserError, match="all 1000 class folders"):
        classes.imagenet_indices(["n02090622"], folder=tmp_path / "train")


def test_subset_classes_relabels_in_the_given_order():
    from minimaxdd.data.sources import DatasetError

    ds = load_dataset("digits")
    sub = ds.subset_classes([7, 2])
    assert sub.class_names == [ds.class_names[7], ds.class_names[2]]
    assert torch.equal(sub.x_train[sub.y_train == 0], ds.x_train[ds.y_train == 7])
    assert torch.equal(sub.x_test[sub.y_test == 1], ds.x_test[ds.y_test == 2])
    for bad in ([], [3, 3], [10]):
        with pytest.raises(DatasetError):
            ds.subset_classes(bad)
