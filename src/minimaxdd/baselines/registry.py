"""The baselines by name (`BASELINES`, one registry; its keys are the CLI's `select --method` choices and the
distill config's `evaluate.baselines` choices), and `select`, which runs one.

Two kinds of baseline share it, the command and the synthetic-set format:

- `random`, `herding`, `kcenter`, `medoids`: coreset selections of K real training images per class
  (`minimaxdd.baselines.coreset`);
- `dm`: the distribution-matching baseline (`minimaxdd.baselines.distribution_matching`), not a selection:
  it starts from a random selection and optimises its pixels.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from minimaxdd.baselines.coreset import SELECTORS, check_ipc
from minimaxdd.baselines.distribution_matching import DMConfig, distribution_matching
from minimaxdd.data.dataset import Dataset
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
from minimaxdd.errors import UserError
from minimaxdd.files import beside, check_set_out, input_paths, manifest, run_lock
from minimaxdd.runtime import pick_device
from minimaxdd.settings import AT_LEAST_1, POSITIVE, run_field, setting


@dataclass(kw_only=True)
class SelectConfig:
    """`minimaxdd select`: one baseline at one IPC, written in the synthetic-set format. The DM knobs
    left at None take DMConfig's defaults (the DM paper's)."""
    method: str = run_field(help="a name of BASELINES")
    real: str = run_field(help="dataset spec NAME[:ARG]")
    ipc: int = run_field(help="images per class")
    out: str = run_field(help="output directory (synthetic-set format)")
    seed: int = run_field(0)
    size: int | None = run_field(None, help="image side (default: the dataset's)")
    device: str = run_field("auto", help="auto, cpu, cuda, cuda:1, ...")
    overwrite: bool = run_field(False, help="replace --out if it exists")
    feature_epochs: int | None = setting(None, bounds=AT_LEAST_1,
                                         help="herding / k-center: epochs of the cached reference classifier "
                                                    "(default: its own)")
    iterations: int | None = setting(None, bounds=AT_LEAST_1, help=f"dm: iterations (default {DMConfig.iterations})")
    lr_img: float | None = setting(None, bounds=POSITIVE, help=f"dm: image learning rate (default {DMConfig.lr_img})")
    batch_real: int | None = setting(None, bounds=AT_LEAST_1, help=f"dm: real images per class per iteration "
                                                f"(default {DMConfig.batch_real})")


# factory(ds, ipc, seed, device, feature_epochs=..., dm=..., state_path=...) -> K images per class
Baseline = Callable[..., SyntheticSet]


def _coreset(method: str) -> Baseline:
    def pick(ds: Dataset, ipc: int, seed: int, device: str | torch.device, *, feature_epochs: int | None = None,
             dm: DMConfig | None = None, state_path: str | Path | None = None) -> SyntheticSet:
        idx = SELECTORS[method](ds, ipc, seed, torch.device(device), feature_epochs)   # (K * ipc,)
        return SyntheticSet(ds.x_train[idx].clone(), ds.y_train[idx].clone(), list(ds.class_names))
    return pick


def _dm(ds: Dataset, ipc: int, seed: int, device: str | torch.device, *, feature_epochs: int | None = None,
        dm: DMConfig | None = None, state_path: str | Path | None = None) -> SyntheticSet:
    return distribution_matching(ds, ipc, seed, device, dm or DMConfig(), state_path)[0]


BASELINES: dict[str, Baseline] = {**{m: _coreset(m) for m in SELECTORS}, "dm": _dm}


def select(ds: Dataset, method: str, ipc: int, seed: int = 0, device: str | torch.device = "cpu",
           feature_epochs: int | None = None, dm: DMConfig | None = None,
           state_path: str | Path | None = None) -> SyntheticSet:
    """K images per class by the baseline `method`, as a SyntheticSet: real training images for the
    coreset selections, optimised ones for `dm` (with `dm` its DMConfig)."""
    if method not in BASELINES:
        raise UserError(f"unknown baseline {method!r}; choose one of {sorted(BASELINES)}")
    check_ipc(ds.y_train, ds.num_classes, ipc, ds.class_names)
    return BASELINES[method](ds, ipc, seed, device, feature_epochs=feature_epochs, dm=dm, state_path=state_path)


def run_selection(cfg: SelectConfig) -> SyntheticSet:
    """`minimaxdd select`: load the real data, run the baseline, write the synthetic set to `cfg.out`."""
    t0 = time.time()
    overrides = {k: v for k, v in (("iterations", cfg.iterations), ("lr_img", cfg.lr_img),
                                   ("batch_real", cfg.batch_real)) if v is not None}
    if overrides and cfg.method != "dm":
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in overrides)} apply to --method dm only")
    ds = load_dataset(cfg.real, size=cfg.size)                      # what is wrong with the input first
    out = Path(cfg.out)
    check_set_out(out, cfg.overwrite, input_paths(cfg.real))     # fail before the work, not after it
    with run_lock(out):                     # covers the DM state file beside it too
        s = select(ds, cfg.method, cfg.ipc, cfg.seed, pick_device(cfg.device), cfg.feature_epochs,
                   dm=DMConfig(**overrides), state_path=beside(out, ".dm-state.pt"))
        write_synthetic(out, s, manifest(asdict(cfg), cfg.seed, time.time() - t0, producer=f"select/{cfg.method}",
                                         ipc=cfg.ipc, num_images=len(s.labels)), overwrite=cfg.overwrite)
    return s
