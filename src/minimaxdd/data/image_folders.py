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
from typing import Any

import numpy as np
import torch

from minimaxdd.data.dataset import Dataset
from minimaxdd.errors import DatasetError
from minimaxdd.files import cache_dir, read_cache, save_atomic, writing_cache
from minimaxdd.runtime import progress

# Pillow modes of files stored grey (with or without alpha): an `imagefolder:` whose files are all stored
# so loads with one channel. Ours: the file's mode decides, not its pixels, so an RGB file whose channels
# happen to be equal stays RGB (and nothing must be decoded twice to decide).
FOLDER_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# The suffixes torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS), and .gif, which
# Pillow reads too (its first frame: see decode_image). Other files in a class folder are skipped, with a warning.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DECODE_THREADS = 2  # ours: one decoding thread per core of the 2-core CPUs this package is sized for

# How a file's pixels become uint8, by its Pillow mode (ours; tests/data/test_image_modes.py checks each):
# - 1, L, RGB: as they are (1 -> 0 or 255). P: its palette's colours. CMYK, YCbCr, HSV, RGBX: Pillow's conversion
#   to RGB (CMYK without colour management: R = (255 - C)(255 - K) / 255; YCbCr by JPEG's full-range BT.601).
# - Alpha (RGBA, LA, PA, P with a transparent colour): each colour times its opacity, i.e. the image over black,
#   since a file does not define the colour of a transparent pixel.
# - I;16 (16-bit grey PNG / TIFF) and I (32-bit integers; Pillow opens 16-bit PGMs so): 0..65535 -> 0..255,
#   divided by 257 and rounded, so 65535 is 255 and 257 k is k; a value outside 0..65535 is refused (its scale is
#   unknown). Pillow itself reads 16-bit colour PNGs as 8 bits a channel (v // 256, within 1 of v / 257).
# - F (32-bit float): [0, 1] -> 0..255, times 255 and rounded; NaN, infinite or out-of-range values are refused.
# - Other modes (LAB, ...) are refused. An EXIF orientation is applied. A file of several frames (an animated
#   GIF, PNG or WebP, a multi-page TIFF) gives its first frame, and the load says so in a warning.
TO_RGB = frozenset({"CMYK", "YCbCr", "HSV", "RGBX"})
SIXTEEN_BIT_MAX = 65535


def decode_image(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """One image file -> (C, size, size) uint8, C = 3 for mode "RGB" and 1 for "L": the file's first frame, turned
    upright by its EXIF orientation and brought to 8 bits (see above); its shorter side resized to `size` (bicubic;
    left as it is when it already has that side), then the centre crop. A file that cannot be read so: DatasetError."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = _eight_bit(ImageOps.exif_transpose(im), path).convert(mode)
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


def _eight_bit(im: Any, path: Path) -> Any:
    """A Pillow image of any mode -> an 8-bit "L" or "RGB" one, by the rules above."""
    from PIL import Image

    m = im.mode
    if m == "I" or m.startswith("I;16"):
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > SIXTEEN_BIT_MAX):
            raise DatasetError(f"image {path} (mode {m}, integer) holds values in [{v.min()}, {v.max()}], outside "
                               f"the 16-bit range 0..{SIXTEEN_BIT_MAX} this tool reads such images in; save it as "
                               "8- or 16-bit grey (or as float in [0, 1])")
        return Image.fromarray(np.rint(v / 257).astype(np.uint8))
    if m == "F":
        v = np.asarray(im, dtype=np.float64)
        if not np.isfinite(v).all():
            raise DatasetError(f"image {path} (mode F, float) holds NaN or infinite values; replace them and save "
                               "it again (float images must hold values in [0, 1])")
        if v.size and (v.min() < 0 or v.max() > 1):
            raise DatasetError(f"image {path} (mode F, float) holds values in [{v.min():g}, {v.max():g}]; float "
                               "images must hold values in [0, 1]: scale it to [0, 1] or save it as 8- or 16-bit")
        return Image.fromarray(np.rint(v * 255).astype(np.uint8))
    if m == "PA" or (m == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    elif m in ("La", "RGBa"):                       # premultiplied alpha: Pillow undoes it
        im = im.convert(m.upper())
    elif m == "P" or m in TO_RGB:
        return im.convert("RGB")
    elif m not in ("1", "L", "RGB", "LA", "RGBA"):
        raise DatasetError(f"image {path} is stored in mode {m}, which this tool does not convert; save it as "
                           "8-bit RGB or grey (e.g. PNG), converting its colours with a colour-managed tool")
    if im.mode in ("LA", "RGBA"):
        a = np.asarray(im).astype(np.uint32)
        over_black = (a[..., :-1] * a[..., -1:] + 127) // 255      # round(colour * alpha / 255)
        return Image.fromarray(over_black.astype(np.uint8).squeeze(-1) if im.mode == "LA" else
                               over_black.astype(np.uint8))
    return im


def _header(path: Path) -> tuple[int, int, str, bool]:
    """(width, height, Pillow mode, several frames?) of an image file, read from its header without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode, bool(getattr(im, "is_animated", False))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}; delete or replace the file") from e


def list_split(root: Path, split: str, class_dirs: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every image under root/split/<class_dirs[label]>/, sorted; empty class -> error. Files
    of other suffixes are skipped, with a warning (hidden ones without a word)."""
    items, skipped = [], []
    for label, c in enumerate(class_dirs):
        found = sorted(p for p in (root / split / c).iterdir() if p.is_file() and not p.name.startswith("."))
        files = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped += [p for p in found if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if not files:
            raise DatasetError(f"class folder {root / split / c} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                               "add images or remove the folder")
        items += [(p, label) for p in files]
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
        warnings.warn(f"{root / split}: {len(skipped)} file{'s are' if len(skipped) > 1 else ' is'} skipped, not "
                      f"having an image suffix ({', '.join(IMAGE_EXTENSIONS)}): {shown}"
                      f"{', ...' if len(skipped) > 3 else ''}; rename or convert any that are images", stacklevel=3)
    return items


def _plan(root: Path, files: list[Path], size: int | None, grey: bool) -> tuple[int, str, list[str]]:
    """The side and Pillow mode ("RGB" or "L") to decode `files` at, from their headers, and what to tell
    the user about it. `size` None: the images' own shorter side, the most common one when they differ.
    `grey`: one channel when every file is stored grey (FOLDER_GREY_MODES), else three."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        headers = list(pool.map(_header, files))
    sides = Counter(min(w, h) for w, h, _, _ in headers)
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
    frames = [f for f, (_, _, _, several) in zip(files, headers) if several]
    if frames:
        notes.append(f"{root}: {len(frames)} of {len(files)} image files hold several frames (an animation or "
                     f"pages, e.g. {frames[0].relative_to(root)}); the first frame of each is used (save the frame "
                     "you want as a file of its own to use another)")
    mode = "L" if grey and all(m in FOLDER_GREY_MODES for _, _, m, _ in headers) else "RGB"
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
    # 3: the version of this cache format (ours); a change to decoding bumps it. None / grey: decided from the
    # files, which the listing pins.
    key = hashlib.sha256(json.dumps([3, str(root.resolve()), size, grey, class_dirs, listing]).encode()).hexdigest()
    path = cache_dir() / "datasets" / f"{root.name}-{f'{size}px' if size else 'own-size'}-{key[:24]}.pt"
    hit = read_cache(path, lambda p: torch.load(p, weights_only=True)) if cache else None
    if hit is not None:
        _tell(list(hit["notes"]))
        return Dataset(name, hit["x_train"], hit["y_train"], hit["x_test"], hit["y_test"], list(hit["class_names"]))
    size, mode, notes = _plan(root, [p for split in items.values() for p, _ in split], size, grey)
    _tell(notes)
    xtr, ytr = _decode_split(items["train"], size, mode, f"decoding {root.name}/train")
    xte, yte = _decode_split(items[test_split], size, mode, f"decoding {root.name}/{test_split}")
    ds = Dataset(name, xtr, ytr, xte, yte, list(class_names))
    if cache:
        with writing_cache(path):
            save_atomic({"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte,
                         "class_names": list(class_names), "notes": notes}, path)
    return ds


def _tell(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, stacklevel=4)
