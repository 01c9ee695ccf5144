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
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.formulations import build_formulation
from minimaxdd.errors import DivergedError, UserError
from minimaxdd.files import (
    WRITE_FAILURES,
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
    agree_precision,
    autocast,
    compile_module,
    flush_denormals,
    pick_device,
    progress,
)
from minimaxdd.training.config import LoopConfig
from minimaxdd.training.draws import Formulation, Targets, draw_step
from minimaxdd.training.meter import Meter, log_line, write_log
from minimaxdd.training.optim import adamw, ema_decay, ema_pairs, lr_at, update_ema
from minimaxdd.training.run_folder import (
    delete_checkpoint,
    discard_unstarted,
    open_run,
    say_precision_change,
    state_path,
    unreadable_fix,
)

# ---------------------------------------------------------------------------------------------
# what a stage hands to fit


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
# checks


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
        tr.net = compile_module(tr.net)   # shares the parameters: the optimiser, EMA and checkpoints see `model`


def _saved(path: Path, what: str, cfg: LoopConfig, device: torch.device | str) -> Any:
    """The tensors saved in `path` for --resume; None where it is missing and `fresh_state` allows that."""
    if path.exists():
        with reading(path, unreadable_fix(path.with_suffix("").with_suffix(".safetensors"))):
            return torch.load(path, map_location=device, weights_only=True)
    if cfg.fresh_state:
        return None
    raise UserError(f"--resume: {path} ({what}) is missing, so the run cannot continue as an uninterrupted one "
                    f"would; restore the file, or pass --fresh-state (fresh_state=True) to start {what} afresh")


def _resume(tr: _Trainer, path: Path) -> int:
    """Load the checkpoint `path` and what sits beside it; returns its step."""
    with reading(path, unreadable_fix(path)):
        old = ckpt.read_meta(path)
    if old.model != tr.meta.model or old.codec != tr.meta.codec or old.class_map != tr.meta.class_map:
        raise UserError(f"--resume: {path} was trained with another model, codec or class map; "
                        "use the same settings or start a new --out")
    with reading(path, unreadable_fix(path)):
        ckpt.load_pair(path, tr.model, tr.ema)
    optim = _saved(path.with_suffix(".optim.pt"), "the optimiser state", tr.cfg, tr.device)
    if optim is not None:
        tr.opt.load_state_dict(optim)
    if tr.state:
        saved = _saved(state_path(path, dist.rank()), f"this process's {', '.join(tr.state)}", tr.cfg, "cpu")
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
        save_atomic({name: obj.state_dict() for name, obj in tr.state.items()}, state_path(path, dist.rank()))
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
        delete_checkpoint(p)


# ---------------------------------------------------------------------------------------------
# one step (its draws: training.draws)


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


def _set_lr(tr: _Trainer, lr: float) -> None:
    for group in tr.opt.param_groups:
        group["lr"] = lr


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
# the loop


def _loop(tr: _Trainer, targets: Targets, step: int, per_epoch: int, total: int, step_loss: StepLoss | None,
          desc: str, diffusion: Formulation) -> tuple[dict[str, Any], float]:
    """Train from `step` to `total` (or the time limit) under `diffusion`, checkpointing on the way and at the
    end; returns the summary and the wall time in seconds."""
    cfg = tr.cfg
    t_start, seen, stopped = time.time(), 0, None
    meter = Meter(step // per_epoch)
    log = open(tr.run / "log.jsonl", "a") if dist.is_main() else None
    tr.model.train()
    try:
        with progress(total=total, initial=step, desc=desc, unit="step") as bar:
            while step < total:
                draws = draw_step(targets, cfg, step, per_epoch, tr.model.num_classes, diffusion)
                if cfg.lr_warmup > 0:                     # without a ramp the optimiser's lr is left as it is
                    _set_lr(tr, lr_at(cfg, step, total))
                logs = _step(tr, diffusion, draws, step, step_loss)
                meter.add(step // per_epoch, logs)
                step += 1
                seen += len(draws[0])                     # the global batch: every process's slice
                bar.update(1)
                if log is not None and (step % cfg.log_every == 0 or step == total):
                    log_line(log, bar, step, logs, meter, seen / max(time.time() - t_start, 1e-9))
                if cfg.time_limit is not None and dist.any_flag(time.time() - t_start > cfg.time_limit, tr.device):
                    stopped = "time limit"
                    break
                if step % cfg.checkpoint_every == 0 and step < total:
                    _checkpoint(tr, step)
        meter.close(per_epoch)
        _checkpoint(tr, step)
    except _Diverged as d:
        if log is not None:
            write_log(log, {"step": d.step, **(d.logs or {}), "stopped": "non-finite " + ("loss" if d.logs else
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


def fit(model: nn.Module, targets: Targets, meta: ckpt.CheckpointMeta, cfg: LoopConfig,
        params: list[nn.Parameter] | None = None, step_loss: StepLoss | None = None,
        state: dict[str, Stateful] | None = None, desc: str = "train",
        manifest_extra: dict[str, Any] | None = None, formulation: Formulation | None = None) -> dict[str, Any]:
    """Train `model` on `targets` as `cfg` says; returns the run's summary (also in manifest.json).

    `params`: the parameters to optimise (default: those that require grad). `step_loss`: what the
    stage adds to each step's loss (see StepLoss). `state`: objects with state_dict / load_state_dict
    (the Minimax memories), saved by every rank beside each checkpoint (`ckpt-N.state<rank>.pt`) and
    restored on resume, so a resumed run continues exactly. `meta` is written into every checkpoint.
    `formulation`: the noise levels and loss to train under; None: meta.formulation's, as built by name.
    """
    if not isinstance(cfg.flip, bool):
        raise ValueError(f"flip {cfg.flip!r} must be decided before training (training.config.resolve_flip)")
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
        resume_from = open_run(cfg)
        try:
            tr = _build(cfg, model, params, meta, state, device, cfg.batch // world)   # each rank its batch slice
            step = _resume(tr, resume_from) if resume_from is not None else 0
            if dist.is_main() and resume_from is not None:
                say_precision_change(tr.run, cfg.precision, desc)
            if dist.is_main():
                write_json(tr.run / "config.json", {"train": asdict(cfg), "model": meta.model, "codec": meta.codec,
                                                    "class_names": meta.class_names, "class_map": meta.class_map,
                                                    "world_size": world})
            _wrap(tr)
            info, wall = _loop(tr, targets, step, per_epoch, total, step_loss, desc,
                               formulation or build_formulation(meta.formulation))
            info.update(precision=cfg.precision, precision_requested=requested)
            if dist.is_main():
                write_json(tr.run / "manifest.json", manifest(
                    asdict(cfg), cfg.seed, wall, **info, world_size=world,
                    trainable_params=sum(p.numel() for p in tr.params),
                    total_params=sum(p.numel() for p in tr.model.parameters()), **(manifest_extra or {})))
        except BaseException:
            if resume_from is None and dist.is_main():
                discard_unstarted(Path(cfg.out), fresh)
            raise
    return info
