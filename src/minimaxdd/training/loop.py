"""The training loop shared by `train` (training/scratch.py) and `finetune` (training/finetune.py).

AdamW, EMA of the weights, label dropout to the null class for classifier-free guidance,
self-describing safetensors checkpoints every K steps, `--resume`. The whole training set
(images in [-1, 1], or cached VAE latent moments) is one tensor; batches are drawn by index.
Every draw (order, timesteps, noise, flips, label dropout) comes from a generator seeded by
(seed, step), so a resumed run continues exactly as an uninterrupted one would.

A stage calls `fit(model, targets, meta, cfg)` with its config (a `LoopConfig`); fine-tuning also
hands in a `StepLoss`, what it adds to the diffusion loss of each batch (the Minimax terms).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Protocol

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.augment import apply_augment, draw_augment
from minimaxdd.diffusion.codecs import PixelCodec, VAECodec, encode_dataset
from minimaxdd.diffusion.edm import EDM
from minimaxdd.diffusion.formulations import FORMULATIONS, build_formulation
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.errors import DivergedError, UserError
from minimaxdd.files import (
    WRITE_FAILURES,
    finite_or_null,
    manifest,
    raise_if_write_failure,
    reading,
    run_lock,
    save_atomic,
    write_json,
)
from minimaxdd.precision import precision_line, resolve_precision
from minimaxdd.runtime import (
    PRECISIONS,
    RESOLVED,
    agree_precision,
    autocast,
    flush_denormals,
    pick_device,
    progress,
)
from minimaxdd.settings import run_field, setting

_MIX = 0x9E3779B97F4A7C15
# a value of FORMULATIONS: draw_level(n, g) and training_losses(net, x0, level, y, noise)
Formulation = Diffusion | EDM


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for one training step (and one stream within it), independent of resumption."""
    return torch.Generator().manual_seed((((int(seed) * _MIX + step) % 2**63) * _MIX + stream) % 2**63)


# ---------------------------------------------------------------------------------------------
# configs


@dataclass(kw_only=True)
class LoopConfig:
    """How the shared loop trains, and where it writes.

    The defaults are DiT's recipe (Peebles & Xie 2023, Sec. 4): AdamW at a constant lr 1e-4 without
    weight decay, EMA decay 0.9999, label dropout 0.1. A stage redeclares a field (`redefault`) only
    where its source uses another value.
    """
    out: str = run_field(help="run directory: checkpoints, log.jsonl, config.json and manifest.json")
    epochs: float | None = setting(None, help="length in passes over the training set")
    steps: int | None = setting(None, help="length in optimiser steps (wins over epochs)")
    time_limit: float | None = setting(None, help="seconds; stop (and checkpoint) when exceeded")
    batch: int = setting(64, help="global batch: images per step over all processes")
    lr: float = setting(1e-4, help="AdamW learning rate (constant)")
    weight_decay: float = setting(0.0, help="AdamW weight decay")
    beta1: float = setting(0.9, help="AdamW beta1")
    beta2: float = setting(0.999, help="AdamW beta2")
    ema: float = setting(0.9999, help="decay per step of the EMA of the weights (see ema_warmup)")
    # short CPU runs still get a useful EMA
    ema_warmup: bool = setting(True, help="ramp the EMA decay up as min(ema, (1+step)/(10+step))")
    ema_length: float | None = setting(None, help="EDM2's power-function EMA with this relative std: the average spans "
                                                  "about this fraction of the run so far (0.05-0.10 in EDM2); "
                                                  "replaces ema and ema_warmup")
    lr_warmup: float = setting(0.0, help="fraction of the planned steps over which the lr ramps up linearly from 0")
    # U-ViT uses 0.15 (p_uncond, Bao et al. 2023)
    class_dropout: float = setting(0.1, help="probability that a label is replaced by the null class, which "
                                             "classifier-free guidance needs")
    flip: bool = setting(True, help="random horizontal flips of the training images")
    grad_clip: float | None = setting(None, help="clip the gradient norm to this; null: no clipping")
    checkpoint_every: int = setting(1000, help="steps between checkpoints")
    keep: int = setting(2, help="checkpoints kept besides the final one")
    log_every: int = setting(50, help="steps between lines of log.jsonl")
    precision: str = setting("auto", help="autocast precision of the network; auto: bf16 where this machine runs "
                                          "it fast (CUDA with bf16, a CPU measured to), else fp32",
                             choices=PRECISIONS)
    compile: bool = setting(False, help="torch.compile the network: a one-off compile, then fused elementwise ops")
    seed: int = run_field(0, help="seeds every draw: order, flips, label dropout, timesteps, noise")
    device: str = run_field("auto", help="auto, cpu, cuda, cuda:1, ...")
    resume: bool = run_field(False, help="continue the run in `out` from its latest checkpoint")
    overwrite: bool = run_field(False, help="delete the run in `out` and start over")
    fresh_state: bool = run_field(False, help="with resume: where the checkpoint's optimiser state or stage state "
                                              "(the Minimax memories) is missing, start it afresh instead of "
                                              "refusing; the run then differs from an uninterrupted one")


def redefault(name: str, default: Any) -> Any:
    """LoopConfig's field `name` with another default (same help, choices and kind), for a subclass."""
    return dataclasses.field(default=default, metadata=LoopConfig.__dataclass_fields__[name].metadata)


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """`minimaxdd train`: a class-conditional denoiser from scratch, with DiT's recipe (see LoopConfig)."""
    data: str = run_field(help="dataset spec NAME[:ARG]")
    model: str = setting("dit-t/2", help="denoiser: a name of minimaxdd.diffusion.networks.DENOISERS")
    formulation: str = setting("ddpm", choices=tuple(FORMULATIONS),
                               help="ddpm: the paper's 1000-step DDPM (DiT); edm: Karras et al. 2022")
    codec: str = setting("pixel", help="pixel, or vae:DIR (a diffusers AutoencoderKL folder)")
    size: int | None = run_field(None, help="image side; null: the dataset's")
    learn_sigma: bool | None = setting(None, help="also learn the variance; null: DiT yes (as published), U-ViT no")
    augment: float = setting(0.0, help="non-leaking augmentation (diffusion.augment): the probability of each of "
                                       "x-flip, y-flip, quarter turn and integer shift per training image, the "
                                       "network told which (zero when sampling); U-Net models in pixel space "
                                       "only; EDM trains CIFAR-10 with 0.12; 0: off")
    preset: str | None = run_field(None, help="the preset the config came from, recorded in the run")
    # a dict default needs a factory, which run_field does not take
    extra: dict = dataclasses.field(default_factory=dict, metadata={
        "run": True, "help": "free-form notes recorded in config.json and the checkpoint"})


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Targets:
    """The training set in model space, with labels already mapped to network classes."""
    x: torch.Tensor | None               # pixel: (N, C, H, W) in [-1, 1]
    mean: torch.Tensor | None            # vae: (N, 2, c, h, w) latent means (index 1 = mirrored)
    std: torch.Tensor | None
    y: torch.Tensor                      # (N,) network class indices

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
        """The clean samples of `idx` (B, C, H, W): flipped at random, latents drawn from their moments."""
        flips = torch.rand(len(idx), generator=g) < 0.5 if flip else torch.zeros(len(idx), dtype=torch.bool)
        if self.x is not None:
            x = self.x[idx]
            return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        m = self.mean[idx, flips.long()].float()
        s = self.std[idx, flips.long()].float()
        return m + s * torch.randn(m.shape, generator=g)


def make_targets(codec: PixelCodec | VAECodec, ds: Any, class_map: list[int]) -> Targets:
    """The dataset `ds` encoded by `codec` (cached), labels mapped through `class_map`."""
    enc = encode_dataset(codec, ds.x_train, ds.fingerprint())
    y = torch.as_tensor(class_map)[ds.y_train]
    return Targets(enc.get("x"), enc.get("mean"), enc.get("std"), y)


@dataclass
class Batch:
    """This process's slice of one step's batch, as a StepLoss sees it (tensors on the device)."""
    x0: torch.Tensor                     # (n, C, H, W) clean targets in model space
    labels: torch.Tensor                 # (n,) network classes, before label dropout
    dropped: torch.Tensor                # (n,) bool: conditioned on the null class instead of the label
    step: int                            # the step being taken, counted from 0


class StepLoss(Protocol):
    """What a stage adds to the loss of each step (fine-tuning: `minimax.MinimaxStep`).

    Called once per step after the forward pass and before the backward one, with the batch's
    `Diffusion.training_losses` terms (per-sample "loss" and "mse", and "x0_hat" (n, C, H, W), the
    predicted clean samples, with gradients) and the batch. Returns the scalar added to the mean
    diffusion loss and {name: float} to log. It may update state of its own (memories), which the
    stage hands to `fit` as `state` so that checkpoints hold it.
    """

    def __call__(self, terms: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class Stateful(Protocol):
    """State a checkpoint holds beside the weights (torch's state_dict / load_state_dict pair)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# ---------------------------------------------------------------------------------------------
# optimiser and EMA


def ema_pairs(ema: nn.Module, model: nn.Module, params: list[nn.Parameter]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(EMA tensor, parameter) for the trained parameters only: a frozen one never moves, so its EMA
    stays equal to it (Difffit trains ~0.5% of a DiT; lerping the rest was memory traffic for nothing)."""
    trained = set(map(id, params))
    return [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if id(p) in trained]


def adamw(params: list[nn.Parameter], **kw: Any) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where torch has one (CPU and CUDA floating-point parameters): one
    call per step instead of a dozen small ops per tensor. On the 2-core CPU its gain on a compiled
    Difffit step of a small DiT was within the noise (BENCHMARKS.md, `micro_speed.py adamw`)."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kw)


@functools.lru_cache(maxsize=8)
def power_ema_exponent(sigma_rel: float) -> float:
    """EDM2's power-function EMA (Karras et al. 2024, Sec. 3.1): the exponent gamma whose profile has
    relative standard deviation `sigma_rel`, i.e. sigma_rel^2 = (g+1) / ((g+2)^2 (g+3)), solved by bisection."""
    if not 0 < sigma_rel < 0.28:       # gamma -> 0 gives sigma_rel = sqrt(1/12) ~ 0.289
        raise UserError(f"ema_length must be in (0, 0.28) (a relative std; EDM2 uses 0.05-0.10), got {sigma_rel}")
    lo, hi = 0.0, 1e6
    for _ in range(200):
        g = (lo + hi) / 2
        if (g + 1) / ((g + 2) ** 2 * (g + 3)) > sigma_rel ** 2:
            lo = g
        else:
            hi = g
    return (lo + hi) / 2


def ema_decay(cfg: LoopConfig, done: int) -> float:
    """The EMA decay after `done` steps (see LoopConfig.ema_length and ema_warmup)."""
    if cfg.ema_length is not None:     # beta_t = (1 - 1/t)^(gamma + 1): an average over the whole run so far
        return (1 - 1 / done) ** (power_ema_exponent(cfg.ema_length) + 1)
    return min(cfg.ema, (1 + done) / (10 + done)) if cfg.ema_warmup else cfg.ema


def _set_lr(tr: _Trainer, step: int, total: int) -> None:
    """A linear lr ramp over the first `lr_warmup` of the planned steps (no change without one)."""
    if tr.cfg.lr_warmup > 0:
        scale = min(1.0, (step + 1) / max(1.0, tr.cfg.lr_warmup * total))
        for group in tr.opt.param_groups:
            group["lr"] = tr.cfg.lr * scale


def update_ema(pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, for each pair."""
    if pairs:
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1 - decay)


# ---------------------------------------------------------------------------------------------
# the run directory


def _check(cfg: LoopConfig, n: int, world: int) -> tuple[int, int]:
    """Refuse what cannot run; returns (steps per epoch, steps in all) for `n` training images."""
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.batch < 1 or cfg.batch > n:
        raise UserError(f"--batch {cfg.batch} must be between 1 and the number of training images ({n})")
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch} (the global batch) must be divisible by the {world} processes")
    per_epoch = n // cfg.batch
    if cfg.steps is not None:
        total = int(cfg.steps)
    elif cfg.epochs is not None:
        total = int(math.ceil(cfg.epochs * per_epoch))
    else:
        raise UserError("say how long to train: --epochs E or --steps S")
    if total < 1:
        raise UserError(f"nothing to train: {total} steps")
    return per_epoch, total


def _delete_checkpoint(path: Path) -> None:
    """A checkpoint with its optimiser state and every rank's stage state."""
    path.unlink()
    path.with_suffix(".optim.pt").unlink(missing_ok=True)
    for f in path.parent.glob(path.stem + ".state*.pt"):
        f.unlink()


def _state_path(ckpt_file: Path, rank: int) -> Path:
    """Where rank `rank` keeps its stage state (the Minimax memories) beside checkpoint `ckpt_file`."""
    return ckpt_file.with_suffix(f".state{rank}.pt")


def _prepare_run(cfg: LoopConfig) -> Path | None:
    """Make `cfg.out` ready (main process); returns the checkpoint to resume from, if resuming."""
    run = Path(cfg.out)
    existing = ckpt.list_checkpoints(run) if run.exists() else []
    if cfg.resume:
        if not existing:
            raise UserError(f"--resume: {run} has no checkpoint to resume from; drop --resume to start")
        return existing[-1]
    if run.exists() and any(run.iterdir()):
        if not cfg.overwrite and not existing:
            raise UserError(f"{run} is not empty and holds no checkpoint to resume from; pass --overwrite to start "
                            "a run there, or choose another --out")
        if not cfg.overwrite:
            raise UserError(f"{run} already holds a run; pass --resume to continue it, --overwrite to start over, "
                            "or choose another --out")
        for p in existing:
            _delete_checkpoint(p)
        (run / "log.jsonl").unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return None


def _discard_unstarted(run: Path, created: bool) -> None:
    """After a new run failed before its first checkpoint: remove what it wrote (its config and log, and the
    directory if it made it), so that a rerun needs no --overwrite. A run with a checkpoint is kept whole."""
    if ckpt.list_checkpoints(run):
        return
    for name in ("config.json", "log.jsonl", "manifest.json"):
        (run / name).unlink(missing_ok=True)
    for f in run.glob("ckpt-*.pt"):              # the optimiser and stage state of a checkpoint not completed
        f.unlink()
    if created and run.is_dir() and not any(run.iterdir()):
        run.rmdir()


def _open_run(cfg: LoopConfig) -> Path | None:
    """`_prepare_run` on the main process, then every process learns the checkpoint to resume from."""
    if dist.is_main():
        resume_from = _prepare_run(cfg)
    dist.barrier()
    if not dist.is_main():
        resume_from = ckpt.list_checkpoints(cfg.out)[-1] if cfg.resume else None
    return resume_from


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class _Trainer:
    """What one call of `fit` trains and where it writes."""
    cfg: LoopConfig
    run: Path
    device: torch.device
    model: nn.Module
    net: nn.Module                       # what the forward pass calls: `model`, or its DDP / compiled wrapper
    ema: nn.Module
    params: list[nn.Parameter]
    averaged: list[tuple[torch.Tensor, torch.Tensor]]
    opt: torch.optim.Optimizer
    meta: ckpt.CheckpointMeta
    state: dict[str, Stateful]
    mine: slice                          # this process's rows of each global batch


def _build(cfg: LoopConfig, model: nn.Module, params: list[nn.Parameter] | None, meta: ckpt.CheckpointMeta,
           state: dict[str, Stateful] | None, device: torch.device, local: int) -> _Trainer:
    """The network on the device, its EMA copy and the optimiser; `local`: rows of the batch per process."""
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    rank = dist.rank()
    return _Trainer(cfg, Path(cfg.out), device, model, model, ema, params, ema_pairs(ema, model, params), opt, meta,
                    state or {}, slice(rank * local, (rank + 1) * local))


def _wrap(tr: _Trainer) -> None:
    """DDP over the processes, then torch.compile, as the config says."""
    if dist.world() > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        tr.net = DDP(tr.model, device_ids=[tr.device] if tr.device.type == "cuda" else None)
    if tr.cfg.compile:
        tr.net = torch.compile(tr.net)   # shares the parameters: the optimiser, EMA and checkpoints see `model`


def _unreadable_fix(ckpt_file: Path) -> str:
    return (f"delete {ckpt_file.name} and the files beside it named {ckpt_file.stem}.* to resume from the "
            "checkpoint before it, or start over with --overwrite")


def _saved(path: Path, what: str, cfg: LoopConfig, device: torch.device | str) -> Any:
    """The tensors saved in `path` for --resume; None where it is missing and `fresh_state` allows that."""
    if path.exists():
        with reading(path, _unreadable_fix(path.with_suffix("").with_suffix(".safetensors"))):
            return torch.load(path, map_location=device, weights_only=True)
    if cfg.fresh_state:
        return None
    raise UserError(f"--resume: {path} ({what}) is missing, so the run cannot continue as an uninterrupted one "
                    f"would; restore the file, or pass --fresh-state (fresh_state=True) to start {what} afresh")


def _resume(tr: _Trainer, path: Path) -> int:
    """Load the checkpoint `path` and what sits beside it; returns its step."""
    with reading(path, _unreadable_fix(path)):
        old = ckpt.read_meta(path)
    if old.model != tr.meta.model or old.codec != tr.meta.codec or old.class_map != tr.meta.class_map:
        raise UserError(f"--resume: {path} was trained with another model, codec or class map; "
                        "use the same settings or start a new --out")
    with reading(path, _unreadable_fix(path)):
        ckpt.load_pair(path, tr.model, tr.ema)
    optim = _saved(path.with_suffix(".optim.pt"), "the optimiser state", tr.cfg, tr.device)
    if optim is not None:
        tr.opt.load_state_dict(optim)
    if tr.state:
        saved = _saved(_state_path(path, dist.rank()), f"this process's {', '.join(tr.state)}", tr.cfg, "cpu")
        if saved is not None:
            for name, obj in tr.state.items():
                obj.load_state_dict(saved[name])
    return old.step


def _checkpoint(tr: _Trainer, step: int) -> None:
    """Write the checkpoint of `step` (every rank its stage state), then drop all but the newest `keep` + 1.

    Weights that are not finite are never written (the ranks hold the same weights, so all stop), and so
    the rotation never removes the last finite checkpoint."""
    if not _finite_weights(tr):
        raise _Diverged(step, None)
    path = ckpt.ckpt_path(tr.run, step)
    if tr.state:                  # each rank its own; written before the weights, which mark completion
        save_atomic({name: obj.state_dict() for name, obj in tr.state.items()}, _state_path(path, dist.rank()))
        dist.barrier()
    if not dist.is_main():
        return
    tr.meta.step = step
    try:
        ckpt.save(path, tr.model, tr.ema, tr.meta, tr.opt)
    except WRITE_FAILURES as e:
        raise_if_write_failure(path, e)
        raise
    old = ckpt.list_checkpoints(tr.run)[:-1]
    for p in old[:max(0, len(old) - tr.cfg.keep)]:
        _delete_checkpoint(p)


# ---------------------------------------------------------------------------------------------
# one step


def _draw(targets: Targets, cfg: LoopConfig, step: int, per_epoch: int, null: int,
          formulation: Formulation) -> tuple[torch.Tensor, ...]:
    """The global batch of `step` and its draws: (x0, labels, y, dropped, t, noise, augmentation labels (B, A),
    A = 0 without augmentation), all on the CPU.

    Every draw is made for the global batch, then sliced: N processes train as one would. The order
    of the draws from the step's generator fixes the bytes: flips (and latent noise), label dropout,
    noise levels (DDPM timesteps or EDM sigmas), noise."""
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(len(targets), generator=step_generator(cfg.seed, epoch, stream=1))
    idx = perm[k * cfg.batch:(k + 1) * cfg.batch]
    g = step_generator(cfg.seed, step)
    x0 = targets.batch(idx, g, cfg.flip)                                   # (B, C, H, W)
    labels = targets.y[idx]                                                # (B,)
    y = labels.clone()
    dropped = torch.rand(len(y), generator=g) < cfg.class_dropout
    y[dropped] = null                                                      # the conditioning, (B,)
    t = formulation.draw_level(len(y), g)                                  # (B,) timesteps or sigmas
    noise = torch.randn(x0.shape, generator=g)                             # (B, C, H, W)
    p = getattr(cfg, "augment", 0.0)                                       # drawn last: p = 0 keeps the bytes
    if p > 0:
        x0, aug = apply_augment(x0, draw_augment(len(y), p, g))            # (B, C, H, W), (B, AUGMENT_DIM)
    else:
        aug = torch.zeros(len(y), 0)
    return x0, labels, y, dropped, t, noise, aug


def _step(tr: _Trainer, diffusion: Formulation, draws: tuple[torch.Tensor, ...], step: int,
          step_loss: StepLoss | None) -> dict[str, float]:
    """One optimiser step and EMA update on this process's slice of `draws`; returns the values to log."""
    x0, labels, y, dropped, t, noise, aug = (v[tr.mine].to(tr.device) for v in draws)
    net = tr.net if aug.shape[1] == 0 else _with_augment_labels(tr.net, aug)
    with autocast(tr.device, tr.cfg.precision):
        terms = diffusion.training_losses(net, x0, t, y, noise)
    loss = terms["loss"].mean()
    logs = {"loss": loss.item(), "mse": terms["mse"].mean().item()}
    if "vb" in terms:
        logs["vb"] = terms["vb"].mean().item()
    if step_loss is not None:
        add, more = step_loss(terms, Batch(x0=x0, labels=labels, dropped=dropped, step=step))
        loss = loss + add
        logs.update(more)
    # The values are read already (for the log), so this costs no extra device sync; under torchrun every
    # rank learns whether any diverged, so that all stop together. Non-finite gradients make the next
    # step's loss non-finite, and the weights are checked before every checkpoint.
    if dist.any_flag(not all(map(math.isfinite, logs.values())), tr.device):
        raise _Diverged(step + 1, logs)
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    if tr.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.grad_clip)
    tr.opt.step()
    update_ema(tr.averaged, ema_decay(tr.cfg, step + 1))
    return logs


def _with_augment_labels(net: nn.Module, aug: torch.Tensor) -> Callable:
    """net(x, noise_label, y) that also passes the batch's augmentation labels (non-leaking augmentation)."""
    return lambda x, noise_label, y: net(x, noise_label, y, augment_labels=aug)


# ---------------------------------------------------------------------------------------------
# divergence


class _Diverged(Exception):
    """A non-finite loss at a step (`logs`: its values), or non-finite weights by a checkpoint (`logs` None)."""

    def __init__(self, step: int, logs: dict[str, float] | None) -> None:
        super().__init__(step)
        self.step, self.logs = step, logs


def _finite_weights(tr: _Trainer) -> bool:
    """Whether the trained parameters and their EMA are all finite (one device sync per checkpoint)."""
    tensors = [p.detach() for p in tr.params] + [e for e, _ in tr.averaged]
    return not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def _diverged_error(tr: _Trainer, d: _Diverged) -> DivergedError:
    """The error that stops a diverged run: the step, what is kept, and the likely fixes."""
    cfg = tr.cfg
    if d.logs is not None:
        values = ", ".join(f"{k}={v:.6g}" for k, v in d.logs.items())
        what = f"the loss became non-finite at step {d.step} ({values})"
    else:
        what = f"the weights became non-finite by step {d.step} (gradients overflowed; the losses were finite)"
    kept = ckpt.list_checkpoints(tr.run)
    if kept:
        keep = (f"the last finite checkpoint, {kept[-1]}, is kept: rerun with --resume and a fix to continue "
                f"from it, or --overwrite to start over")
    else:
        keep = "no checkpoint had been written, so nothing of the run was kept"
    fixes = [f"a lower --lr (it was {cfg.lr:g})"]
    if not cfg.grad_clip:
        fixes.append("--grad-clip 1.0")
    if cfg.precision != "fp32":
        fixes.append("--precision fp32")
    return DivergedError(f"{what}; training stopped and nothing non-finite was saved; {keep}. "
                         f"Likely fixes: {', '.join(fixes)}")


# ---------------------------------------------------------------------------------------------
# logging


class _Meter:
    """The logged values: a running mean (EMA 0.98, for the progress bar) and the mean over each epoch."""

    def __init__(self, epoch: int) -> None:
        self.running: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.n, self.epoch = 0, epoch
        self.epoch_means: list[dict] = []

    def add(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch != self.epoch and self.n:
            self.epoch_means.append({"epoch": self.epoch, **{k: v / self.n for k, v in self.sums.items()}})
            self.sums, self.n, self.epoch = {}, 0, epoch
        self.n += 1
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in logs.items():
            self.running[k] = v if k not in self.running else 0.98 * self.running[k] + 0.02 * v

    def close(self, per_epoch: int) -> None:
        """The last epoch's mean, marked partial when the run stopped inside it."""
        if self.n:
            self.epoch_means.append({"epoch": self.epoch, "partial": self.n < per_epoch,
                                     **{k: v / self.n for k, v in self.sums.items()}})


def _write_log(log: IO[str], record: dict[str, Any]) -> None:
    """One line of log.jsonl, strict JSON (a non-finite value is written as null)."""
    try:
        log.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
        log.flush()
    except WRITE_FAILURES as e:
        raise_if_write_failure(Path(log.name), e)
        raise


def _log_line(log: IO[str], bar: Any, step: int, logs: dict[str, float], meter: _Meter, rate: float) -> None:
    bar.set_postfix(loss=f"{meter.running['loss']:.4f}", img_s=f"{rate:.1f}")
    _write_log(log, {"step": step, **{n: round(v, 6) for n, v in logs.items()}, "images_per_s": round(rate, 2)})


# ---------------------------------------------------------------------------------------------
# the loop


def _loop(tr: _Trainer, targets: Targets, step: int, per_epoch: int, total: int, step_loss: StepLoss | None,
          desc: str) -> tuple[dict[str, Any], float]:
    """Train from `step` to `total` (or the time limit), checkpointing on the way and at the end;
    returns the summary and the wall time in seconds."""
    cfg, diffusion = tr.cfg, build_formulation(tr.meta.formulation)
    t_start, seen, stopped = time.time(), 0, None
    meter = _Meter(step // per_epoch)
    log = open(tr.run / "log.jsonl", "a") if dist.is_main() else None
    tr.model.train()
    try:
        with progress(total=total, initial=step, desc=desc, unit="step") as bar:
            while step < total:
                draws = _draw(targets, cfg, step, per_epoch, tr.model.num_classes, diffusion)
                _set_lr(tr, step, total)
                logs = _step(tr, diffusion, draws, step, step_loss)
                meter.add(step // per_epoch, logs)
                step += 1
                seen += len(draws[0])                     # the global batch: every process's slice
                bar.update(1)
                if log is not None and (step % cfg.log_every == 0 or step == total):
                    _log_line(log, bar, step, logs, meter, seen / max(time.time() - t_start, 1e-9))
                if cfg.time_limit is not None and dist.any_flag(time.time() - t_start > cfg.time_limit, tr.device):
                    stopped = "time limit"
                    break
                if step % cfg.checkpoint_every == 0 and step < total:
                    _checkpoint(tr, step)
        meter.close(per_epoch)
        _checkpoint(tr, step)
    except _Diverged as d:
        if log is not None:
            _write_log(log, {"step": d.step, **(d.logs or {}), "stopped": "non-finite " + ("loss" if d.logs else
                                                                                           "weights")})
        raise _diverged_error(tr, d) from None
    finally:
        if log is not None:
            log.close()
    dist.barrier()              # the final checkpoint exists for every rank before any returns
    wall = time.time() - t_start
    return {"steps": step, "planned_steps": total, "stopped": stopped, "images_seen": seen,
            "images_per_s": round(seen / max(wall, 1e-9), 2), "final_loss": meter.running.get("loss"),
            "running": meter.running, "checkpoint": str(ckpt.ckpt_path(tr.run, step)),
            "epoch_means": meter.epoch_means}, wall


def _say_precision_change(run: Path, used: str, desc: str) -> None:
    """A resumed run that its earlier part trained in another precision (another machine's `auto`) says so."""
    try:
        before = json.loads((run / "config.json").read_text())["train"].get("precision")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if before in RESOLVED and before != used:
        print(f"[{desc}] resuming a run trained so far in {before}; it continues in {used}", flush=True)


def fit(model: nn.Module, targets: Targets, meta: ckpt.CheckpointMeta, cfg: LoopConfig,
        params: list[nn.Parameter] | None = None, step_loss: StepLoss | None = None,
        state: dict[str, Stateful] | None = None, desc: str = "train",
        manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `model` on `targets` as `cfg` says; returns the run's summary (also in manifest.json).

    `params`: the parameters to optimise (default: those that require grad). `step_loss`: what the
    stage adds to each step's loss (see StepLoss). `state`: objects with state_dict / load_state_dict
    (the Minimax memories), saved by every rank beside each checkpoint (`ckpt-N.state<rank>.pt`) and
    restored on resume, so a resumed run continues exactly. `meta` is written into every checkpoint.
    """
    device = dist.setup(pick_device(cfg.device))
    flush_denormals()
    world = dist.world()
    per_epoch, total = _check(cfg, len(targets), world)
    requested = cfg.precision
    # what config.json records; one precision for all processes under torchrun
    cfg = dataclasses.replace(cfg, precision=agree_precision(resolve_precision(requested, device), device))
    if dist.is_main():
        print(f"[{desc}] {precision_line(requested, cfg.precision, device)}", flush=True)
    with run_lock(cfg.out, enabled=dist.is_main()):
        fresh = not Path(cfg.out).exists()
        resume_from = _open_run(cfg)
        try:
            tr = _build(cfg, model, params, meta, state, device, cfg.batch // world)   # each rank its batch slice
            step = _resume(tr, resume_from) if resume_from is not None else 0
            if dist.is_main() and resume_from is not None:
                _say_precision_change(tr.run, cfg.precision, desc)
            if dist.is_main():
                write_json(tr.run / "config.json", {"train": asdict(cfg), "model": meta.model, "codec": meta.codec,
                                                    "class_names": meta.class_names, "class_map": meta.class_map,
                                                    "world_size": world})
            _wrap(tr)
            info, wall = _loop(tr, targets, step, per_epoch, total, step_loss, desc)
            info.update(precision=cfg.precision, precision_requested=requested)
            if dist.is_main():
                write_json(tr.run / "manifest.json", manifest(
                    asdict(cfg), cfg.seed, wall, **info, world_size=world,
                    trainable_params=sum(p.numel() for p in tr.params),
                    total_params=sum(p.numel() for p in tr.model.parameters()), **(manifest_extra or {})))
        except BaseException:
            if resume_from is None and dist.is_main():
                _discard_unstarted(Path(cfg.out), fresh)
            raise
    return info
