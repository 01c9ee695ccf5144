"""The synthetic-set format shared by every producer (selection, DM, diffusion sampling).

    DIR/images/<class>/<i>.png   one PNG per image, for people and other tools
    DIR/data.pt                  {"images": uint8 (N, C, H, W), "labels": int64 (N,),
                                  "class_names": [str]}; torch.load(..., weights_only=True)
    DIR/manifest.json            what made it: command, config, seed, git commit, wall time

Reading also accepts an ImageFolder (DIR/<class>/*.png), a `.pt` file with the keys of
data.pt and an `.npz` with images/labels (or x_train/y_train) and optional class_names.
"""
from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minimaxdd.data.dataset import CHANNELS
from minimaxdd.errors import UserError
from minimaxdd.files import atomic_dir, write_json

# Image files read from an ImageFolder (ours: the common formats Pillow decodes).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class SyntheticSet:
    """Images and labels of a synthetic set, checked on construction."""

    images: torch.Tensor      # uint8 (N, C, H, W)
    labels: torch.Tensor      # int64 (N,)
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise UserError(f"synthetic images must be uint8 (N, C, H, W), "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise UserError(f"{len(self.images)} synthetic images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise UserError(f"synthetic labels span {int(self.labels.min())}..{int(self.labels.max())} but there are "
                            f"{len(self.class_names)} class names; fix the labels or the class list")
        if self.images.shape[1] not in CHANNELS:     # what a PNG holds
            raise UserError(f"synthetic images have {self.images.shape[1]} channels; minimaxdd handles 1 (grey), "
                            "3 (RGB) or 4 (RGBA): convert the images")
        twice = sorted({n for n in self.class_names if list(self.class_names).count(n) > 1})
        if twice:
            raise UserError(f"class names {twice} occur more than once; each class needs its own name (its images' "
                            "folder is named after it): rename them")

def _folder_name(name: str) -> str:
    """A class name made safe as one path component."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("._") or "class"


def folder_names(class_names: list[str]) -> list[str]:
    """The images/ folder of each class: its name made path-safe, numbered when two names sanitise alike."""
    folders = [_folder_name(n) for n in class_names]
    if len(set(folders)) != len(folders):
        folders = [f"{k:03d}_{f}" for k, f in enumerate(folders)]
    return folders


def write_synthetic(out: str | Path, s: SyntheticSet, manifest: dict, overwrite: bool = False) -> Path:
    """Write `s` to `out` in the synthetic-set format, atomically (all or nothing)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        folders = folder_names(s.class_names)
        counters = [0] * len(s.class_names)
        for img, lab in zip(s.images, s.labels.tolist()):
            d = tmp / "images" / folders[lab]
            d.mkdir(parents=True, exist_ok=True)
            arr = img.permute(1, 2, 0).numpy()  # (H, W, C)
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(d / f"{counters[lab]}.png")
            counters[lab] += 1
        torch.save({"images": s.images.contiguous(), "labels": s.labels, "class_names": list(s.class_names)},
                   tmp / "data.pt")
        write_json(tmp / "manifest.json", manifest)
    return Path(out)


def _from_pt(path: Path) -> SyntheticSet:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file or one holding arbitrary pickled objects
        raise UserError(f"cannot read {path} as a synthetic set ({e}); it must be a torch.save'd dict of tensors "
                        f"with keys images, labels[, class_names]") from e
    if not isinstance(d, dict) or "images" not in d or "labels" not in d:
        raise UserError(f"{path} must hold a dict with keys images, labels[, class_names]; "
                        f"found {sorted(d) if isinstance(d, dict) else type(d).__name__}")
    labels = _int_labels(torch.as_tensor(d["labels"]), path)
    names = list(d.get("class_names") or _default_names(labels, path))
    return SyntheticSet(_to_uint8(torch.as_tensor(d["images"]), path), labels, names)


def _from_npz(path: Path) -> SyntheticSet:
    try:
        return _read_npz(path)
    except UserError:
        raise
    except Exception as e:  # corrupt archive, object arrays (pickles), wrong dtypes
        raise UserError(f"cannot read {path} as a synthetic set ({e}); save it with numpy.savez holding "
                        f"uint8 images, integer labels and optionally class_names as a str array") from e


def _default_names(labels: torch.Tensor, path: Path) -> list[str]:
    if labels.numel() == 0:
        raise UserError(f"{path} holds no images; a synthetic set needs at least one image per class")
    return [str(k) for k in range(int(labels.max()) + 1)]


def _read_npz(path: Path) -> SyntheticSet:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        xk = "images" if "images" in keys else "x_train" if "x_train" in keys else None
        yk = "labels" if "labels" in keys else "y_train" if "y_train" in keys else None
        if xk is None or yk is None:
            raise UserError(f"{path} needs keys images and labels (or x_train and y_train); it has {sorted(keys)}")
        x, y = torch.from_numpy(z[xk]), _int_labels(torch.from_numpy(z[yk]), path)
        names = [str(n) for n in z["class_names"]] if "class_names" in keys else _default_names(y, path)
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels last -> first
    elif x.ndim == 3:
        x = x[:, None]
    return SyntheticSet(_to_uint8(x.contiguous(), path), y, names)


def _int_labels(y: torch.Tensor, path: Path) -> torch.Tensor:
    """Labels as int64; floats (or anything else) are refused, not truncated, as the dataset loaders do."""
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(f"the labels in {path} are {str(y.dtype).removeprefix('torch.')}; save labels as integers "
                        "0..K-1")
    return y.long()


def _to_uint8(x: torch.Tensor, path: Path) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point() and x.numel() and float(x.min()) >= 0 and float(x.max()) <= 1:
        return (x * 255).round().to(torch.uint8)
    raise UserError(f"images in {path} are {x.dtype}; store uint8 in 0..255 (or float in [0, 1])")


def _from_folder(root: Path) -> SyntheticSet:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{root} has no class folders; expected {root}/<class>/*.png or a synthetic set with data.pt")
    images, labels = [], []
    for k, d in enumerate(classes):
        files = sorted((f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise UserError(f"class folder {d} holds no images; remove it or add images")
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
            except Exception as e:
                raise UserError(f"cannot decode image {f}: {e}; remove or replace it") from e
            images.append(torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1))
            labels.append(k)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise UserError(f"images under {root} differ in shape {sorted(shapes)[:4]}; resize them to one size")
    return SyntheticSet(torch.stack(images), torch.tensor(labels), [d.name for d in classes])


def _natural_key(p: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]


def load_synthetic(path: str | Path) -> SyntheticSet:
    """Read a synthetic-set directory, an ImageFolder, a .pt or an .npz."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"synthetic set {p} does not exist; pass a directory written by `minimaxdd select` / "
                        f"`sample`, an ImageFolder, a .pt or an .npz")
    if p.is_dir():
        if (p / "data.pt").exists():
            return load_synthetic(p / "data.pt")
        return _from_folder(p / "images" if (p / "images").is_dir() else p)
    if p.suffix not in (".pt", ".npz"):
        raise UserError(f"{p} is neither a directory, a .pt nor an .npz file")
    s = _from_pt(p) if p.suffix == ".pt" else _from_npz(p)
    if not len(s.labels):
        raise UserError(f"{p} holds no images; a synthetic set needs at least one image per class")
    return s


def conform(s: SyntheticSet, class_names: list[str], channels: int, size: int,
            allow_missing: bool = False) -> SyntheticSet:
    """Check a synthetic set against the real dataset it claims to distil.

    Class count and names must agree (an ImageFolder's folder names may be the sanitised
    names); channels must agree; a different size is resized to the real size, with a warning.
    A class without images is refused (its test images could only count as errors, and the accuracy
    would compare with no published number) unless `allow_missing`, which warns instead.
    """
    # Accept the real names or their folder-safe forms (`folder_names`), in any order (an ImageFolder
    # lists its classes sorted), and relabel by name.
    alias = {**{_folder_name(n): n for n in class_names}, **dict(zip(folder_names(class_names), class_names)),
             **{n: n for n in class_names}}
    theirs = [alias.get(n, n) for n in s.class_names]
    labels = s.labels
    if theirs != list(class_names) and sorted(theirs) == sorted(class_names):
        where = torch.tensor([list(class_names).index(n) for n in theirs])
        labels = where[s.labels]
        theirs = list(class_names)
    if theirs != list(class_names):
        raise UserError(f"the synthetic set's classes do not match the real dataset's:\n"
                        f"  synthetic ({len(s.class_names)}): {list(s.class_names)}\n"
                        f"  real      ({len(class_names)}): {list(class_names)}\n"
                        f"distil from the same dataset, or rename the class folders to the real names")
    _check_every_class(labels, class_names, allow_missing)
    c, h, w = s.images.shape[1:]
    if c != channels:
        raise UserError(f"the synthetic images have {c} channels and the real ones {channels}; "
                        f"convert them (e.g. to {'grey' if channels == 1 else 'RGB'}) before evaluating")
    images = s.images
    if (h, w) != (size, size):
        warnings.warn(f"synthetic images are {h}x{w}, the real ones {size}x{size}: resizing the synthetic set "
                      f"(bilinear, antialiased) to {size}x{size}", stacklevel=2)
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return SyntheticSet(images, labels, list(class_names))


def _check_every_class(labels: torch.Tensor, class_names: list[str], allow_missing: bool) -> None:
    """Refuse (or, with `allow_missing`, warn about) classes of the real dataset without a synthetic image."""
    missing = [n for n, k in zip(class_names, torch.bincount(labels, minlength=len(class_names)).tolist()) if not k]
    if not missing:
        return
    what = (f"the synthetic set has no images of {len(missing)} of the {len(class_names)} classes: {missing}; "
            "a classifier trained on it never predicts them, so their test images all count as errors")
    if not allow_missing:
        raise UserError(f"{what}. Sample or select every class, or pass --allow-missing-classes to evaluate "
                        "it anyway")
    print(f"warning: {what}", file=sys.stderr, flush=True)
