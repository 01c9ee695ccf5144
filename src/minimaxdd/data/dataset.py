"""`Dataset`: train and test images of one dataset as whole uint8 tensors, and their channel statistics."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from minimaxdd.errors import DatasetError
from minimaxdd.runtime import generator

# Smallest std `channel_stats` returns, in [0, 1] units (ours: about a quarter of one grey level, 1/255),
# so that normalising a constant channel cannot divide by zero.
STD_FLOOR = 1e-3
# Channels of the images a dataset or a synthetic set may hold: what a set's PNGs store (grey, RGB, RGBA; four
# channels also serve as a latent-shaped dataset for a pixel-codec fine-tune of DiT).
CHANNELS = (1, 3, 4)


def channel_stats(x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units.

    Summed in float64 over chunks, so a 256 px dataset never exists as one float copy."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        xf = x[i:i + chunk].double().div_(255)             # (chunk, C, H, W) in [0, 1]
        s += xf.sum(dim=(0, 2, 3))                          # (C,)
        s2 += xf.pow(2).sum(dim=(0, 2, 3))                  # (C,)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n                                            # (C,)
    var = (s2 - n * mean ** 2) / max(n - 1, 1)              # (C,) unbiased
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(STD_FLOOR)


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, C, H, W) on `device`, standardised with the real data's statistics."""
    xf = x.to(device).float().div_(255)                    # (N, C, H, W) in [0, 1]
    return (xf - mean.to(device)[None, :, None, None]) / std.to(device)[None, :, None, None]


@dataclass(repr=False)
class Dataset:
    """Train and test images of one dataset, whole, as tensors."""

    name: str  # the spec string it came from
    x_train: torch.Tensor  # (N, C, H, W) uint8, contiguous
    y_train: torch.Tensor  # (N,) int64 in [0, num_classes)
    x_test: torch.Tensor  # (M, C, H, W) uint8
    y_test: torch.Tensor  # (M,) int64
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def size(self) -> int:
        """Image side in pixels (images are square)."""
        return self.x_train.shape[2]

    def fingerprint(self) -> str:
        """Short sha256 of the training images and labels (with their shapes): a cache key."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy())  # hashes the buffer, no copy
        return h.hexdigest()[:16]

    def subset_classes(self, labels: list[int]) -> "Dataset":
        """The classes `labels` only, relabelled 0..len(labels)-1 in that order (one fine-tuning phase)."""
        bad = [c for c in labels if not 0 <= c < self.num_classes]
        if bad or len(set(labels)) != len(labels) or not labels:
            raise DatasetError(f"classes {list(labels)} are not distinct labels of {self.name} "
                               f"(0..{self.num_classes - 1})")
        lut = torch.full((self.num_classes,), -1, dtype=torch.long)
        lut[torch.as_tensor(labels)] = torch.arange(len(labels))
        tr, te = lut[self.y_train] >= 0, lut[self.y_test] >= 0
        return Dataset(self.name, self.x_train[tr].contiguous(), lut[self.y_train[tr]], self.x_test[te].contiguous(),
                       lut[self.y_test[te]], [self.class_names[c] for c in labels])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={self.num_classes})")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in `labels` (N,) of (the rest, `fraction` of each class, at least one), each class shuffled by one
    generator seeded with `seed`."""
    g = generator(seed)
    rest, part = [], []
    for k in range(num_classes):
        idx = (labels == k).nonzero().squeeze(1)                          # (n_k,)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_part = max(1, round(fraction * len(idx)))
        part.append(idx[:n_part])
        rest.append(idx[n_part:])
    return torch.cat(rest), torch.cat(part)


def validation_split(ds: Dataset, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train part, validation part) of ds's training set: `fraction` of each class, seeded."""
    return stratified_split(ds.y_train, fraction, seed, ds.num_classes)
