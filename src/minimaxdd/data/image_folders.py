"""Image folders as whole uint8 tensors: every file decoded once (resized on its shorter side, centre-cropped)
and the result cached under `cache_dir()/datasets/`, keyed by the files' names, sizes and dates, so a changed
folder is decoded again. `sources` finds the files of each layout (imagefolder, the ImageNet subsets, Tiny
ImageNet); this module decodes and caches them."""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from minimaxdd.data.dataset import Dataset
from minimaxdd.errors import DatasetError
from minimaxdd.files import cache_dir, save_atomic
from minimaxdd.runtime import progress

# Pillow modes of files stored grey (with or without alpha): an `imagefolder:` whose files are all stored
# so loads with one channel. Ours: the file's mode decides, not its pixels, so an RGB file whose channels
# happen to be equal stays RGB (and nothing must be decoded twice to decide).
FOLDER_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# The suffixes torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DECODE_THREADS = 2  # ours: one decoding thread per core of the 2-core CPUs this package is sized for


def decode_image(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """One image file -> (C, size, size) uint8, C = 3 for mode "RGB" and 1 for "L": shorter side resized to
    `size` (bicubic; left as it is when it already has that side), then the centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            # Pillow's resize filters the whole footprint when shrinking, i.e. it antialiases.
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = round((nw - size) / 2), round((nh - size) / 2)
            im = im.crop((left, top, left + size, top + size))
            a = np.array(im, dtype=np.uint8)
            return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}; delete or replace the file") from e


def _header(path: Path) -> tuple[int, int, str]:
    """(width, height, Pillow mode) of an image file, read from its header without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}; delete or replace the file") from e


def list_split(root: Path, split: str, class_dirs: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every image under root/split/<class_dirs[label]>/, sorted; empty class -> error."""
    items = []
    for label, c in enumerate(class_dirs):
        files = sorted(p for p in (root / split / c).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"class folder {root / split / c} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                               "add images or remove the folder")
        items += [(p, label) for p in files]
    return items


def _plan(root: Path, files: list[Path], size: int | None, grey: bool) -> tuple[int, str, list[str]]:
    """The side and Pillow mode ("RGB" or "L") to decode `files` at, from their headers, and what to tell
    the user about it. `size` None: the images' own shorter side, the most common one when they differ.
    `grey`: one channel when every file is stored grey (FOLDER_GREY_MODES), else three."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        headers = list(pool.map(_header, files))
    sides = Counter(min(w, h) for w, h, _ in headers)
    notes = []
    if size is None:
        size = sides.most_common(1)[0][0]
        if len(sides) > 1:
            shown = ", ".join(f"{s} px: {n}" for s, n in sides.most_common(4))
            notes.append(f"{root}: the images come in {len(sides)} sizes (shorter side {shown}"
                         f"{', ...' if len(sides) > 4 else ''}); all are resized to {size} px, the most common "
                         "(pass --size to choose another)")
    small = sum(n for s, n in sides.items() if s < size)
    if small:
        notes.append(f"{root}: {small} of {len(files)} images are smaller than {size} px (the smallest "
                     f"{min(sides)} px) and are upscaled to it")
    mode = "L" if grey and all(m in FOLDER_GREY_MODES for _, _, m in headers) else "RGB"
    return size, mode, notes


def _decode_split(items: list[tuple[Path, int]], size: int, mode: str,
                  desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty((len(items), 1 if mode == "L" else 3, size, size), dtype=torch.uint8)  # filled in place
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        images = pool.map(lambda it: decode_image(it[0], size, mode), items)
        for i, img in enumerate(progress(images, total=len(items), desc=desc)):
            x[i] = torch.from_numpy(img)
    return x, torch.tensor([label for _, label in items], dtype=torch.int64)


def load_folder(name: str, root: Path, test_split: str, class_dirs: list[str], class_names: list[str],
                 size: int | None, cache: bool, grey: bool = False) -> Dataset:
    """Decode root/train/<class>/* and root/<test_split>/<class>/*, through a cache keyed by the files."""
    items = {"train": list_split(root, "train", class_dirs), test_split: list_split(root, test_split, class_dirs)}
    return load_items(name, root, items, test_split, class_dirs, class_names, size, cache, grey)


def load_items(name: str, root: Path, items: dict[str, list[tuple[Path, int]]], test_split: str,
                class_dirs: list[str], class_names: list[str], size: int | None, cache: bool,
                grey: bool = False) -> Dataset:
    """Decode {"train": [(file, label)], test_split: [...]} through a cache keyed by the files; `size` and
    `grey` as `_plan` takes them. What `_plan` tells the user is cached too, and told again on a cache hit."""
    listing = [(str(p.relative_to(root)), st.st_mtime_ns, st.st_size)
               for split in items.values() for p, _ in split for st in [p.stat()]]
    # 2: the version of this cache format (ours); a change to decoding bumps it. None / grey: decided from the
    # files, which the listing pins.
    key = hashlib.sha256(json.dumps([2, str(root.resolve()), size, grey, class_dirs, listing]).encode()).hexdigest()
    path = cache_dir() / "datasets" / f"{root.name}-{f'{size}px' if size else 'own-size'}-{key[:24]}.pt"
    if cache and path.is_file():
        try:
            d = torch.load(path, weights_only=True)
            ds = Dataset(name, d["x_train"], d["y_train"], d["x_test"], d["y_test"], list(d["class_names"]))
            notes = list(d["notes"])
        except Exception as e:  # a damaged cache file is rebuilt, not trusted
            warnings.warn(f"ignoring unreadable cache file {path} ({e}); decoding {root} again", stacklevel=3)
        else:
            _tell(notes)
            return ds
    size, mode, notes = _plan(root, [p for split in items.values() for p, _ in split], size, grey)
    _tell(notes)
    xtr, ytr = _decode_split(items["train"], size, mode, f"decoding {root.name}/train")
    xte, yte = _decode_split(items[test_split], size, mode, f"decoding {root.name}/{test_split}")
    ds = Dataset(name, xtr, ytr, xte, yte, list(class_names))
    if cache:
        save_atomic({"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte,
                     "class_names": list(class_names), "notes": notes}, path)
    return ds


def _tell(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, stacklevel=4)
