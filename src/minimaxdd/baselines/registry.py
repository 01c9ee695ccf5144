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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minimaxdd.baselines.coreset import SELECTORS, _check_ipc
from minimaxdd.data.dataset import Dataset
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
from minimaxdd.errors import UserError
from minimaxdd.files import manifest
from minimaxdd.runtime import pick_device

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
        from minimaxdd.baselines.distribution_matching import (
            DMConfig,
            distribution_matching,
        )

        return distribution_matching(ds, ipc, seed, device, dm or DMConfig(), state_path)[0]
    idx = SELECTORS[method](ds, ipc, seed, torch.device(device), feature_epochs)
    return SyntheticSet(ds.x_train[idx].clone(), ds.y_train[idx].clone(), list(ds.class_names))


def run(cfg: SelectConfig) -> SyntheticSet:
    t0 = time.time()
    from minimaxdd.baselines.distribution_matching import DMConfig

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
