"""Coreset baselines: pick K real training images per class.

- `random`: uniform without replacement, from a seeded generator.
- `herding` (Welling, ICML 2009; iCaRL's per-class form): greedily add the image that
  keeps the running mean of the chosen features closest to the class mean.
- `kcenter` (Sener & Savarese, ICLR 2018): greedy k-center, each new image the one
  farthest from those already chosen, starting from the one nearest the class mean.
- `dm`: not a selection but the distribution-matching baseline (dm.py), which starts
  from a random selection and optimises its pixels; it shares this command and format.

Herding and k-center work on L2-normalised features of the reference classifier
(reference.py), trained once on the full training set and cached.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from minimaxdd.data import Dataset, load_dataset
from minimaxdd.errors import UserError
from minimaxdd.evaluate import channel_stats
from minimaxdd.synthset import SyntheticSet, write_synthetic
from minimaxdd.utils import generator, manifest, pick_device


def _check_ipc(y: torch.Tensor, num_classes: int, ipc: int, names: list[str]) -> None:
    if ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {ipc}")
    counts = torch.bincount(y, minlength=num_classes)
    short = [f"{names[k]} ({int(c)})" for k, c in enumerate(counts) if c < ipc]
    if short:
        raise UserError(f"--ipc {ipc} asks for more images than these classes have: {', '.join(short)}; lower --ipc")


def random_indices(y: torch.Tensor, num_classes: int, ipc: int, seed: int) -> torch.Tensor:
    g = generator(seed)
    picks = []
    for k in range(num_classes):
        idx = (y == k).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:ipc]])
    return torch.cat(picks)


def herding_order(f: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows of f (n, D) chosen by herding toward the mean of f."""
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    avail = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, k + 1):
        # distance from the class mean of the mean after adding each candidate
        d = ((mu[None] - (total[None] + f) / t) ** 2).sum(1)  # (n,)
        d[~avail] = float("inf")
        i = int(d.argmin())
        chosen.append(i)
        avail[i] = False
        total += f[i]
    return torch.tensor(chosen)


def kcenter_order(f: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows of f (n, D) by greedy k-center, started at the row nearest the mean."""
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    dmin = ((f - f[first]) ** 2).sum(1)  # (n,) squared distance to the nearest chosen row
    for _ in range(k - 1):
        i = int(dmin.argmax())
        chosen.append(i)
        dmin = torch.minimum(dmin, ((f - f[i]) ** 2).sum(1))
    return torch.tensor(chosen)


def feature_indices(order: Callable[[torch.Tensor, int], torch.Tensor]):
    def pick(ds: Dataset, ipc: int, seed: int, device: torch.device, feature_epochs: int | None) -> torch.Tensor:
        from minimaxdd.reference import ReferenceConfig, embed, reference_classifier

        model = reference_classifier(ds, ReferenceConfig(epochs=feature_epochs, seed=seed), device)
        feats = F.normalize(embed(model, ds.x_train, channel_stats(ds.x_train)), dim=1)
        picks = []
        for k in range(ds.num_classes):
            idx = (ds.y_train == k).nonzero().squeeze(1)
            picks.append(idx[order(feats[idx], ipc)])
        return torch.cat(picks)
    return pick


SELECTORS = {
    "random": lambda ds, ipc, seed, device, fe: random_indices(ds.y_train, ds.num_classes, ipc, seed),
    "herding": feature_indices(herding_order),
    "kcenter": feature_indices(kcenter_order),
}


METHODS = (*SELECTORS, "dm")


@dataclass
class SelectConfig:
    method: str
    real: str
    ipc: int
    out: str
    seed: int = 0
    size: int | None = None
    device: str = "auto"
    feature_epochs: int | None = None
    overwrite: bool = False
    iterations: int | None = None       # dm only; None: the DM default (20000)
    lr_img: float | None = None         # dm only
    batch_real: int | None = None       # dm only


def select(ds: Dataset, method: str, ipc: int, seed: int = 0, device: str | torch.device = "cpu",
           feature_epochs: int | None = None, dm=None, state_path=None) -> SyntheticSet:
    """K images per class by `method`, as a SyntheticSet: real training images for the
    selection methods, optimised ones for `dm` (with `dm` its DMConfig)."""
    if method not in METHODS:
        raise UserError(f"unknown selection method {method!r}; choose one of {sorted(METHODS)}")
    _check_ipc(ds.y_train, ds.num_classes, ipc, ds.class_names)
    if method == "dm":
        from minimaxdd.dm import DMConfig, distribution_matching

        return distribution_matching(ds, ipc, seed, device, dm or DMConfig(), state_path)[0]
    idx = SELECTORS[method](ds, ipc, seed, torch.device(device), feature_epochs)
    return SyntheticSet(ds.x_train[idx].clone(), ds.y_train[idx].clone(), list(ds.class_names))


def run(cfg: SelectConfig) -> SyntheticSet:
    t0 = time.time()
    from minimaxdd.dm import DMConfig

    overrides = {k: v for k, v in (("iterations", cfg.iterations), ("lr_img", cfg.lr_img),
                                   ("batch_real", cfg.batch_real)) if v is not None}
    if overrides and cfg.method != "dm":
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in overrides)} apply to --method dm only")
    ds = load_dataset(cfg.real, size=cfg.size)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:  # fail before the work, not after it
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    s = select(ds, cfg.method, cfg.ipc, cfg.seed, pick_device(cfg.device), cfg.feature_epochs,
               dm=DMConfig(**overrides), state_path=out.with_name(out.name + ".dm-state.pt"))
    write_synthetic(cfg.out, s, manifest(asdict(cfg), cfg.seed, time.time() - t0, producer=f"select/{cfg.method}",
                                         ipc=cfg.ipc, num_images=len(s.labels)), overwrite=cfg.overwrite)
    return s
