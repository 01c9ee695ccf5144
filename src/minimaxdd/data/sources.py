"""Datasets as whole uint8 tensors: one `Dataset` per spec string, from a registry of sources.

A spec is `NAME` or `NAME:ARG` (split on the first colon), e.g. `digits`,
`cifar10:/data/cifar-10-batches-py`, `npz:subset.npz`, `imagewoof:/data/imagenet`.
Every source returns train and test images as uint8 [N, C, H, W] with int64 labels;
`load_dataset` checks them (`_validate`) and resizes tensor sources to `size` if asked.
Image folders are decoded once and cached under `cache_dir()/datasets/` (`data.image_folders`).
"""
from __future__ import annotations

import gzip
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from minimaxdd.data import imagenet
from minimaxdd.data.dataset import CHANNELS, Dataset
from minimaxdd.data.image_folders import IMAGE_EXTENSIONS, load_folder, load_items
from minimaxdd.errors import DatasetError

# The ImageNet subsets default to 256 px, the resolution at which Minimax diffusion (Gu et al.,
# CVPR 2024; github.com/vimar-gu/MinimaxDiffusion) fine-tunes DiT and evaluates ImageWoof /
# ImageNette / ImageIDC. A plain `imagefolder:` keeps its images' own size instead.
DEFAULT_FOLDER_SIZE = 256
# scikit-learn digits has no official split; ours is a stratified 75/25 one (1347 / 450 images),
# fixed by the seed so every run tests on the same 450 images.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts it
# Label order of Fashion-MNIST (Xiao et al. 2017; github.com/zalandoresearch/fashion-mnist, README "Labels").
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ----------------------------------------------------------------------------- registry

Loader = Callable[..., Dataset]  # loader(arg: str | None, size: int | None, cache: bool = True)
DATASETS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: add a loader to DATASETS under `name` (the NAME of a `NAME[:ARG]` spec)."""
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn
    return deco


def dataset_names() -> list[str]:
    """The source names, in registration order (the CLI lists them)."""
    return list(DATASETS)


def load_dataset(spec: str, size: int | None = None, cache: bool = True) -> Dataset:
    """Load `NAME` or `NAME:ARG`; `size` resizes to size x size; `cache` caches decoded folders."""
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} in {spec!r}; known sources: {', '.join(DATASETS)} "
                           "(use NAME or NAME:ARG, e.g. cifar10:/data/cifar-10-batches-py)")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise DatasetError(f"size must be a positive number of pixels, got {size!r}")
    ds = DATASETS[name](arg or None, size, cache=cache)
    ds.name = spec
    _validate(ds)
    if size is not None and size != ds.size:
        ds.x_train, ds.x_test = _resize(ds.x_train, size), _resize(ds.x_test, size)
    return ds


def _validate(ds: Dataset) -> None:
    """Check dtypes, shapes and labels; every error says how to fix the source."""
    k = ds.num_classes
    if k < 2:
        raise DatasetError(f"{ds.name}: {k} class{'' if k == 1 else 'es'} {ds.class_names}; distillation and its "
                           "evaluation need at least 2 classes (with one, every classifier scores 100%); add the "
                           "images of another class")
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DatasetError(f"{ds.name}: {split} images are {x.dtype} {tuple(x.shape)}; "
                               "expected uint8 [N, C, H, W] (convert the images to 0-255 uint8)")
        if x.shape[2] != x.shape[3]:
            raise DatasetError(f"{ds.name}: {split} images are {x.shape[2]}x{x.shape[3]}; "
                               "images must be square (centre-crop them first)")
        if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
            raise DatasetError(f"{ds.name}: {split} labels are {y.dtype} {tuple(y.shape)} for {len(x)} images; "
                               "expected one int64 label per image")
        if len(y) == 0:
            raise DatasetError(f"{ds.name}: the {split} split is empty; add images to it")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise DatasetError(f"{ds.name}: {split} labels span {lo}..{hi} but there are {k} class names; "
                               f"fix the labels or class_names so every label is in 0..{k - 1}")
    twice = sorted({n for n in ds.class_names if ds.class_names.count(n) > 1})
    if twice:          # a set's images/<class>/ folders, and every report, tell classes apart by name
        raise DatasetError(f"{ds.name}: class names {twice} occur more than once; give each class its own name")
    if ds.channels not in CHANNELS:      # what would be written as PNGs, and what every network takes
        raise DatasetError(f"{ds.name}: the images have {ds.channels} channels; minimaxdd handles 1 (grey), 3 "
                           "(RGB) or 4 (RGBA): convert them (e.g. to RGB) and save the dataset again")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise DatasetError(f"{ds.name}: train images are {tuple(ds.x_train.shape[1:])} but test images are "
                           f"{tuple(ds.x_test.shape[1:])}; both splits need the same C, H, W")
    empty = torch.nonzero(torch.bincount(ds.y_train, minlength=k) == 0).flatten().tolist()
    if empty:
        named = ", ".join(f"{c} ({ds.class_names[c]!r})" for c in empty)
        raise DatasetError(f"{ds.name}: class {named} has no training images; "
                           "add images or remove the class from class_names")
    ds.x_train, ds.x_test = ds.x_train.contiguous(), ds.x_test.contiguous()


def _resize(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, antialiased bilinear, in chunks to bound memory."""
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8)
    return out


def _need(arg: str | None, name: str, what: str) -> str:
    if not arg:
        raise DatasetError(f"the {name} source needs {what}: use {name}:{what}")
    return arg


def _no_arg(arg: str | None, name: str) -> None:
    if arg:
        raise DatasetError(f"the {name} source takes no argument, got {name}:{arg}; use just {name}")


def _make(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
          class_names: list[str]) -> Dataset:
    def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    return Dataset(name, t(xtr, torch.uint8), t(ytr, torch.int64), t(xte, torch.uint8), t(yte, torch.int64),
                   [str(c) for c in class_names])


# ----------------------------------------------------------------------------- digits


@register("digits")
def load_digits(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, ships with sklearn), fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    _no_arg(arg, "digits")
    d = sk_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[:, None]  # values 0..16 -> 0..255; (N, 1, 8, 8)
    idx_tr, idx_te = train_test_split(np.arange(len(x)), test_size=DIGITS_TEST_FRACTION, stratify=d.target,
                                      random_state=DIGITS_SPLIT_SEED)
    return _make("digits", x[idx_tr], d.target[idx_tr], x[idx_te], d.target[idx_te], [str(i) for i in range(10)])


# ----------------------------------------------------------------------------- idx (MNIST-style)

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # 0x0803 / 0x0801: unsigned bytes, 3 / 1 dims (LeCun's idx format)
# The file names of LeCun's MNIST release (yann.lecun.com/exdb/mnist), which Fashion-MNIST reuses.
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file (plain or .gz): big-endian magic, one uint32 per dim, then uint8 data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        try:
            raw = f.read()
        except (OSError, EOFError) as e:
            raise DatasetError(f"cannot read {path}: {e}; download the file again") from e
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DatasetError(f"{path} has magic number {found}, expected {magic} for an idx "
                           f"{'image' if magic == IDX_IMAGES_MAGIC else 'label'} file; is it the right file?")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start, count = 4 + 4 * ndim, int(np.prod(dims))
    if len(raw) - start != count:
        raise DatasetError(f"{path} holds {len(raw) - start} bytes of data but its header says {dims} "
                           f"({count}); the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims).copy()  # writable, owns its memory


def _load_idx_dir(name: str, folder: Path, class_names: list[str], fix: str) -> Dataset:
    paths, missing = {}, []
    for key, stem in IDX_FILES.items():
        found = [folder / n for n in (stem, stem + ".gz") if (folder / n).is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(stem + "[.gz]")
    if missing:
        raise DatasetError(f"{name}: {folder} lacks {', '.join(missing)}; {fix}")
    a = {k: read_idx(p, IDX_IMAGES_MAGIC if k.startswith("x") else IDX_LABELS_MAGIC) for k, p in paths.items()}
    return _make(name, a["x_train"][:, None], a["y_train"], a["x_test"][:, None], a["y_test"], class_names)


@register("fashion-mnist")
def load_fashion_mnist(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017) idx files; default folder from Debian's dataset-fashion-mnist."""
    return _load_idx_dir("fashion-mnist", Path(arg or FASHION_MNIST_DIR), FASHION_MNIST_CLASSES,
                         "run `apt-get install dataset-fashion-mnist` or pass fashion-mnist:DIR "
                         "with the four idx files")


@register("mnist")
def load_mnist(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """MNIST idx files in DIR."""
    folder = Path(_need(arg, "mnist", "DIR"))
    return _load_idx_dir("mnist", folder, [str(i) for i in range(10)], "pass mnist:DIR with the four idx files")


# ----------------------------------------------------------------------------- CIFAR pickles

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run arbitrary code otherwise."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are allowed")


def _unpickle(path: Path) -> dict[str, object]:
    """Read one CIFAR batch file (pickled by Python 2); byte keys become str."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetError(f"cannot read {path}: {e}; use the original CIFAR python files "
                           "(cifar-10-python.tar.gz / cifar-100-python.tar.gz)") from e
    if not isinstance(d, dict):
        raise DatasetError(f"{path} holds a {type(d).__name__}, not a dict; is it a CIFAR python batch?")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar(name: str, arg: str | None, folder_name: str, train: list[str], test: str, meta: str,
           label_key: str, names_key: str) -> Dataset:
    root = Path(_need(arg, name, "DIR"))
    folder = root / folder_name if (root / folder_name).is_dir() else root
    files = [*train, test, meta]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"{name}: {folder} lacks {missing}; pass {name}:DIR with DIR the extracted "
                           f"{folder_name} folder (or its parent)")

    def split(parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(folder / p) for p in parts]
        for p, b in zip(parts, batches):
            if "data" not in b or label_key not in b:
                raise DatasetError(f"{folder / p} lacks 'data' or {label_key!r} (has {sorted(b)}); "
                                   f"is it a {name} batch?")
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        # rows of 3072 = R, G, B planes of 32x32 (Krizhevsky 2009; www.cs.toronto.edu/~kriz/cifar.html)
        return x.reshape(-1, 3, 32, 32), y

    xtr, ytr = split(train)
    xte, yte = split([test])
    names = _unpickle(folder / meta).get(names_key)
    if names is None:
        raise DatasetError(f"{folder / meta} lacks {names_key!r}; is it the {name} meta file?")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return _make(name, xtr, ytr, xte, yte, names)


@register("cifar10")
def load_cifar10(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """CIFAR-10 python batches (Krizhevsky, 2009)."""
    return _cifar("cifar10", arg, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                  "batches.meta", "labels", "label_names")


@register("cifar100")
def load_cifar100(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """CIFAR-100 python files, fine labels."""
    return _cifar("cifar100", arg, "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names")


# ----------------------------------------------------------------------------- npz

NPZ_KEYS = ["x_train", "y_train", "x_test", "y_test"]


def _npz_layout(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """(N, C, H, W), (N, H, W, C) or (N, H, W) -> (N, C, H, W), C in CHANNELS; any other layout is refused, saying
    what it looks like. (N, C, H, W) wins where both read, as (N, 3, 3, 3): C is the second axis when it is in CHANNELS;
    images are square, so where C is neither, the axis out of the square H = W pair is the channels'."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DatasetError(f"{path}: {key} has shape {x.shape}; save images as [N, C, H, W], [N, H, W, C] "
                           "or [N, H, W]")
    _, a, b, c = x.shape
    if a in CHANNELS:
        return x
    if c in CHANNELS and not (b == c != a):   # (N, 4, 3, 3) is four channels of square images, not 4x3 ones
        return x.transpose(0, 3, 1, 2)  # channels last
    last = a == b != c or (b != c and c < a)      # images are square: the odd axis out is the channels'
    k = c if last else a
    what = f"channels-last [N, H, W, C] images with {k} channels" if last else f"[N, C, H, W] images with {k} channels"
    raise DatasetError(f"{path}: {key} has shape {x.shape}: {what}; images need 1 (grey), 3 (RGB) or 4 (RGBA) "
                       "channels: convert them to one of those, and save them as [N, C, H, W] or [N, H, W, C]")


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """Any of (N, C, H, W), (N, H, W, C), (N, H, W); uint8 or float in [0, 1] -> uint8 (N, C, H, W)."""
    x = _npz_layout(path, key, x)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            nan = int(np.isnan(x).sum())
            held = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (int(bad.sum()) - nan, "infinite"))
                                if n)
            raise DatasetError(f"{path}: {key} ({x.dtype}) holds {held} value{'s' if bad.sum() > 1 else ''}; "
                               "replace them: images must be uint8 0-255 or float in [0, 1]")
        if not x.size or (x.min() >= 0 and x.max() <= 1):
            return _float_to_uint8(x)
    raise DatasetError(f"{path}: {key} is {x.dtype}"
                       + (f" with values in [{x.min()}, {x.max()}]" if x.size and x.dtype.kind in "fiu" else "")
                       + "; save images as uint8 0-255 or float in [0, 1]")


def _float_to_uint8(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Float intensities in [0, 1] -> uint8, v * 255 rounded (half to even), computed in float64 a chunk at a time:
    float16 (or float32) arithmetic would round v * 255 before it is rounded to an integer, and be off by one."""
    out = np.empty(x.shape, np.uint8)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = np.rint(x[i:i + chunk].astype(np.float64) * 255)
    return out


@register("npz")
def load_npz(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """A .npz with x_train, y_train, x_test, y_test and optional class_names."""
    path = Path(_need(arg, "npz", "PATH"))
    if not path.is_file():
        raise DatasetError(f"npz file {path} does not exist; pass npz:PATH to a .npz with {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"npz file {path} lacks keys {missing} (has {sorted(z.files)}); "
                                   f"save it with {', '.join(NPZ_KEYS)} (and optionally class_names)")
            a = {k: z[k] for k in z.files if k in NPZ_KEYS + ["class_names"]}
    except (ValueError, OSError) as e:
        raise DatasetError(f"cannot read npz file {path}: {e}; save it with numpy.savez and no object arrays "
                           "(class_names as np.array(names, dtype=str))") from e
    for k in ("y_train", "y_test"):
        if a[k].dtype.kind not in "iu":
            raise DatasetError(f"{path}: {k} is {a[k].dtype}; save labels as integers 0..K-1")
    xtr, xte = _npz_images(path, "x_train", a["x_train"]), _npz_images(path, "x_test", a["x_test"])
    if "class_names" in a:
        names = [str(n) for n in a["class_names"].reshape(-1)]
    else:
        k = int(max(a["y_train"].max(initial=0), a["y_test"].max(initial=0))) + 1
        if not len(a["y_train"]):
            raise DatasetError(f"npz:{path}: the train split is empty; add images to it")
        if k > len(a["y_train"]):      # some class has no training image; said before K names are made
            raise DatasetError(f"{path}: the labels reach {k - 1} but y_train holds {len(a['y_train'])} labels, so "
                               f"some of the classes 0..{k - 1} have no training images; number the classes "
                               "0..K-1 without gaps (or save class_names)")
        names = [str(i) for i in range(k)]
    return _make(f"npz:{path}", xtr, a["y_train"], xte, a["y_test"], names)


# ----------------------------------------------------------------------------- image folders


def _test_split(root: Path, name: str) -> str:
    for split in ("val", "test"):
        if (root / split).is_dir():
            return split
    raise DatasetError(f"{name}: {root} has no val/ or test/ folder; expected {root}/train/<class>/* "
                       f"and {root}/val/<class>/* (or test/)")


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@register("imagefolder")
def load_imagefolder(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """DIR/train/<class>/* and DIR/val/<class>/* (or test/); classes are the sorted train subfolders.

    Without --size the images keep their own size (the most common when they differ, said in a warning);
    one channel when every file is stored grey, else RGB. Non-square images are centre-cropped."""
    root = Path(_need(arg, "imagefolder", "DIR"))
    if not (root / "train").is_dir():
        raise DatasetError(f"imagefolder: {root}/train does not exist; expected {root}/train/<class>/* "
                           f"and {root}/val/<class>/* (or test/)")
    test = _test_split(root, "imagefolder")
    train_classes, test_classes = _subdirs(root / "train"), _subdirs(root / test)
    if not train_classes:
        raise DatasetError(f"imagefolder: {root}/train has no class folders; put images in {root}/train/<class>/")
    if train_classes != test_classes:
        raise DatasetError(f"imagefolder: class folders differ between {root}/train {train_classes} and "
                           f"{root}/{test} {test_classes}; both splits need the same class folders")
    return load_folder("imagefolder", root, test, train_classes, train_classes, size, cache, grey=True)


# ImageNet's validation set has exactly 50 images per class (Russakovsky et al., IJCV 2015);
# fast.ai's imagewoof2 / imagenette2 re-split train+val into ~9k train / ~4k val (~390 val per class).
IMAGENET_VAL_PER_CLASS = 50
# Files only fast.ai's releases carry (github.com/fastai/imagenette: the noisy-label CSVs of each release).
FASTAI_MARKERS = ("noisy_imagewoof.csv", "noisy_imagenette.csv")


def _looks_fastai(root: Path, wnids: list[str]) -> bool:
    if any((root / m).is_file() for m in FASTAI_MARKERS):
        return True
    if root.resolve().name.lower().startswith(("imagewoof2", "imagenette2")):
        return True
    return any(sum(1 for _ in (root / "val" / w).iterdir()) > IMAGENET_VAL_PER_CLASS for w in wnids)


def _imagenet_subset(name: str, arg: str | None, size: int | None, cache: bool) -> Dataset:
    wnids = imagenet.SUBSETS[name]
    root = Path(_need(arg, name, "DIR"))
    missing = [f"{s}/{w}" for s in ("train", "val") for w in wnids if not (root / s / w).is_dir()]
    if missing:
        raise DatasetError(f"{name}: {root} lacks the WordNet-id folders {missing}; expected an ImageNet-style "
                           f"layout {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG with the wnids "
                           f"{', '.join(wnids)}")
    if _looks_fastai(root, wnids):
        warnings.warn(f"{root} looks like fast.ai's {name}2 release: its train/val split (~9k train / ~4k val) "
                      f"differs from the ImageNet-derived split the paper used (~1300 train and 50 val images "
                      f"per class), so accuracies are not comparable to the paper's", stacklevel=3)
    return load_folder(name, root, "val", wnids, wnids, size or DEFAULT_FOLDER_SIZE, cache)


for _subset in imagenet.SUBSETS:
    def _subset_loader(arg: str | None, size: int | None, cache: bool = True, _name: str = _subset) -> Dataset:
        return _imagenet_subset(_name, arg, size, cache)
    _subset_loader.__doc__ = (f"The {len(imagenet.SUBSETS[_subset])} {_subset} WordNet ids from an ImageNet-style "
                              "folder (see minimaxdd.data.imagenet).")
    register(_subset)(_subset_loader)


# Tiny ImageNet (Stanford CS231n, 200 classes, 500 train / 50 val images each, 64 px), the
# challenge's second dataset: wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
# val/images/*.JPEG labelled by val/val_annotations.txt (file, wnid, box).
TINY_SIZE = 64


@register("tinyimagenet")
def load_tinyimagenet(arg: str | None, size: int | None, cache: bool = True) -> Dataset:
    """The extracted tiny-imagenet-200 folder; its val split is the test set (the test labels are not public)."""
    root = Path(_need(arg, "tinyimagenet", "DIR (the extracted tiny-imagenet-200 folder)"))
    need = [root / "wnids.txt", root / "train", root / "val" / "images", root / "val" / "val_annotations.txt"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise DatasetError(f"tinyimagenet: {', '.join(missing)} not found; expected the tiny-imagenet-200 layout "
                           "(wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)")
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            w, _, name = line.partition("\t")
            words[w] = name.split(",")[0].strip()
    train = []
    for w in wnids:
        folder = root / "train" / w / "images"
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
        if not files:
            raise DatasetError(f"tinyimagenet: {folder} has no images; re-extract tiny-imagenet-200")
        train += [(p, index[w]) for p in files]
    val = []
    for n, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DatasetError(f"tinyimagenet: line {n} of {root / 'val' / 'val_annotations.txt'} names no class of "
                               f"wnids.txt: {line[:80]!r}")
        val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    names = [words.get(w, w) for w in wnids]
    names = [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]  # class names must be unique
    return load_items("tinyimagenet", root, {"train": train, "val": val}, "val", wnids, names, size or TINY_SIZE,
                       cache)
