"""Distribution matching (DM; Zhao & Bilen, WACV 2023), the pixel-optimisation baseline.

Synthetic images start as random real images of their class and are optimised so that,
for a freshly initialised random ConvNet every iteration, the mean embedding of each
class's synthetic images matches that of a batch of its real images, both seen through
the same DSA augmentation (one op and one parameter stream per class, from one seed).

All classes go through the network in one batch (instance norm works per image, so this
equals the per-class loop of the DM code); the real half runs without gradients.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from minimaxdd.baselines.coreset import random_indices
from minimaxdd.data import augment
from minimaxdd.data.dataset import Dataset, channel_stats, normalise
from minimaxdd.data.synthetic import SyntheticSet
from minimaxdd.errors import DivergedError, UserError
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.files import save_atomic
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast, generator, progress
from minimaxdd.settings import AT_LEAST_1, POSITIVE, Bounds, setting


@dataclass(frozen=True)
class DMConfig:
    # Defaults of the DM code (VICO-UoE/DatasetCondensation, main_DM.py): 20000 iterations,
    # image lr 1.0, SGD momentum 0.5, 256 real images per class, ConvNet-3, DSA, real init.
    iterations: int = setting(20000, bounds=AT_LEAST_1)
    lr_img: float = setting(1.0, bounds=POSITIVE)
    momentum: float = setting(0.5, bounds=Bounds(0, 1, hi_open=True))
    batch_real: int = setting(256, bounds=AT_LEAST_1)
    model: str = "convnet3"
    precision: str = "auto"       # ours: bf16 autocast where the machine runs it fast (the DM code runs fp32)
    checkpoint_every: int = setting(200, bounds=AT_LEAST_1)   # ours: iterations between resumable state saves


def _seed(g: torch.Generator) -> int:
    """A fresh seed drawn from `g`."""
    return int(torch.randint(2**62, (1,), generator=g).item())


def dm_loss(net: torch.nn.Module, real: list[torch.Tensor], syn: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Sum over classes of the squared distance between mean embeddings.

    real: per class, normalised real images (n_k, C, H, W); syn: (K, ipc, C, H, W);
    seeds: per class, the seed of the DSA draw shared by its real and synthetic batch.
    """
    dev = syn.device
    k, ipc = syn.shape[:2]
    with torch.no_grad():
        xr = torch.cat([augment.dsa(r, generator(s, dev)) for r, s in zip(real, seeds)])  # (sum n_k, C, H, W)
        fr = net.features(xr).float()  # (sum n_k, D)
        means, i = [], 0
        for r in real:
            means.append(fr[i:i + len(r)].mean(0))
            i += len(r)
        mu_real = torch.stack(means)  # (K, D)
    xs = torch.cat([augment.dsa(syn[c], generator(s, dev)) for c, s in enumerate(seeds)])  # (K * ipc, C, H, W)
    mu_syn = net.features(xs).float().view(k, ipc, -1).mean(1)  # (K, D)
    return ((mu_real - mu_syn) ** 2).sum()


def distribution_matching(ds: Dataset, ipc: int, seed: int = 0, device: str | torch.device = "cpu",
                          cfg: DMConfig = DMConfig(), state_path: str | Path | None = None,
                          init_indices: torch.Tensor | None = None) -> tuple[SyntheticSet, list[float]]:
    """Run DM; returns the synthetic set (uint8, like every producer) and the loss per iteration.

    With `state_path`, the optimisation state is saved every `cfg.checkpoint_every`
    iterations and a rerun with the same data and config resumes from it, giving the same
    bytes as an uninterrupted run. The state file is removed on completion.
    """
    device = torch.device(device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))   # resumes only in the same precision
    k, (c, h, w) = ds.num_classes, ds.x_train.shape[1:]
    mean, std = channel_stats(ds.x_train)                                   # (C,) each
    real = normalise(ds.x_train, mean, std, device)                         # (N, C, H, W)
    by_class = [(ds.y_train == j).nonzero().squeeze(1) for j in range(k)]  # K x (n_j,)
    idx = init_indices if init_indices is not None else random_indices(ds.y_train, k, ipc, seed)
    syn = real[idx.to(device)].clone().view(k, ipc, c, h, w).requires_grad_(True)  # (K, ipc, C, H, W)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    g = generator(seed + 7)   # ours: a stream other than the initial selection's (`seed`)
    losses: list[float] = []
    start = 0
    key = _state_key(ds, ipc, seed, cfg)
    state_path = Path(state_path) if state_path else None
    if state_path and state_path.exists():
        losses, start = _resume(state_path, key, syn, opt, g, device)

    bar = progress(range(start, cfg.iterations), total=cfg.iterations, initial=start, desc=f"DM ipc {ipc}")
    for it in bar:
        net = _random_network(g, cfg.model, c, k, h, device)
        real_b = [real[j[torch.randperm(len(j), generator=g)[:cfg.batch_real]].to(device)] for j in by_class]
        seeds = [_seed(g) for _ in range(k)]
        with autocast(device, cfg.precision):
            loss = dm_loss(net, real_b, syn, seeds)
        value = loss.item()         # read before the update (the same sync as after it): a non-finite one stops
        if not math.isfinite(value):
            raise _diverged(it + 1, f"the loss became non-finite ({value})", cfg, state_path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(value)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")   # running mean of the last 50
        if state_path and ((it + 1) % cfg.checkpoint_every == 0) and it + 1 < cfg.iterations:
            if not bool(syn.isfinite().all()):      # never save a non-finite state over the last finite one
                raise _diverged(it + 1, "the images became non-finite (gradients overflowed)", cfg, state_path)
            save_atomic({"key": key, "syn": syn.detach().cpu(), "opt": opt.state_dict(),
                         "gen": g.get_state(), "losses": torch.tensor(losses), "iteration": it + 1}, state_path)
    if not bool(syn.isfinite().all()):
        raise _diverged(cfg.iterations, "the images became non-finite (gradients overflowed)", cfg, state_path)
    if state_path and state_path.exists():
        state_path.unlink()
    images = _to_uint8(syn.detach().cpu().view(k * ipc, c, h, w), mean, std)
    labels = torch.arange(k).repeat_interleave(ipc)                         # (K * ipc,) class-major
    return SyntheticSet(images, labels, list(ds.class_names)), losses


def _diverged(iteration: int, what: str, cfg: DMConfig, state_path: Path | None) -> DivergedError:
    """The error that stops a diverged DM run: the iteration, what is kept, the likely fix."""
    kept = (f"its last finite state, {state_path}, is kept (a rerun with the same options resumes from it; "
            "delete it to rerun with others)" if state_path and state_path.exists() else "no state had been saved")
    return DivergedError(f"DM: {what} at iteration {iteration}; stopped and nothing non-finite was saved; {kept}. "
                         f"Likely fix: a lower --lr-img (it was {cfg.lr_img:g})")


def _state_key(ds: Dataset, ipc: int, seed: int, cfg: DMConfig) -> str:
    """What a saved state must match to be resumed: the data, ipc, seed and config."""
    return json.dumps({"data": ds.fingerprint(), "ipc": ipc, "seed": seed, **asdict(cfg)}, sort_keys=True)


def _resume(state_path: Path, key: str, syn: torch.Tensor, opt: torch.optim.Optimizer, g: torch.Generator,
            device: torch.device) -> tuple[list[float], int]:
    """Load a saved state into `syn`, `opt` and `g`; returns (losses so far, iteration to start from)."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    if st["key"] != key:
        raise UserError(f"{state_path} holds an interrupted DM run with other settings; delete it to start "
                        f"afresh, or rerun with the same options to resume")
    with torch.no_grad():
        syn.copy_(st["syn"].to(device))
    opt.load_state_dict(st["opt"])
    g.set_state(st["gen"])
    return list(st["losses"]), int(st["iteration"])


def _random_network(g: torch.Generator, model: str, channels: int, num_classes: int, size: int,
                    device: torch.device) -> torch.nn.Module:
    """A freshly initialised, frozen `model`, its initialisation seeded from `g` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(g))
        net = build_model(model, channels, num_classes, size).to(device)
    net.requires_grad_(False)
    return net


def _to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised images (N, C, H, W) back to uint8 (N, C, H, W) with the real data's statistics."""
    images = x * std[None, :, None, None] + mean[None, :, None, None]      # (N, C, H, W) in ~[0, 1]
    return (images * 255).round().clamp(0, 255).to(torch.uint8)
