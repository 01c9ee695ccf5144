"""`minimaxdd train`: a class-conditional diffusion model from scratch on a dataset.

AdamW, EMA of the weights, label dropout to the null class for classifier-free guidance,
self-describing safetensors checkpoints every K steps, `--resume`. The whole training set
(images in [-1, 1], or cached VAE latent moments) is one tensor; batches are drawn by index.
Every draw (order, timesteps, noise, flips, label dropout) comes from a generator seeded by
(seed, step), so a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import encode_dataset
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.errors import UserError
from minimaxdd.files import manifest, save_atomic, write_json
from minimaxdd.runtime import PRECISIONS, autocast, pick_device, progress

_MIX = 0x9E3779B97F4A7C15


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for one training step (and one stream within it), independent of resumption."""
    return torch.Generator().manual_seed((((int(seed) * _MIX + step) % 2**63) * _MIX + stream) % 2**63)


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "dit-t/2"
    codec: str = "pixel"
    size: int | None = None
    epochs: float | None = None
    steps: int | None = None
    time_limit: float | None = None      # seconds; stop (and checkpoint) when exceeded
    batch: int = 64
    lr: float = 1e-4                     # DiT: AdamW, lr 1e-4, no weight decay (Peebles & Xie 2023, Sec. 4)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    ema: float = 0.9999                  # DiT's EMA decay; see ema_warmup
    ema_warmup: bool = True              # decay min(ema, (1+step)/(10+step)): short CPU runs still get a useful EMA
    class_dropout: float = 0.1           # DiT; U-ViT uses 0.15 (p_uncond)
    learn_sigma: bool | None = None      # default: DiT yes (as published), U-ViT no
    flip: bool = True
    grad_clip: float | None = None
    checkpoint_every: int = 1000
    keep: int = 2                        # checkpoints kept besides the final one
    log_every: int = 50
    seed: int = 0
    precision: str = "bf16"
    compile: bool = False                # torch.compile the network: a one-off compile, then fused elementwise ops
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    preset: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Targets:
    """The training set in model space, with labels already mapped to network classes."""
    x: torch.Tensor | None               # pixel: (N, C, H, W) in [-1, 1]
    mean: torch.Tensor | None            # vae: (N, 2, c, h, w) latent means (index 1 = mirrored)
    std: torch.Tensor | None
    y: torch.Tensor                      # (N,) network class indices

    def __len__(self):
        return len(self.y)

    def batch(self, idx: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
        flips = torch.rand(len(idx), generator=g) < 0.5 if flip else torch.zeros(len(idx), dtype=torch.bool)
        if self.x is not None:
            x = self.x[idx]
            return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        m = self.mean[idx, flips.long()].float()
        s = self.std[idx, flips.long()].float()
        return m + s * torch.randn(m.shape, generator=g)


def make_targets(codec, ds, class_map: list[int]) -> Targets:
    enc = encode_dataset(codec, ds.x_train, ds.fingerprint())
    y = torch.as_tensor(class_map)[ds.y_train]
    return Targets(enc.get("x"), enc.get("mean"), enc.get("std"), y)


def ema_pairs(ema: nn.Module, model: nn.Module, params: list[nn.Parameter]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(EMA tensor, parameter) for the trained parameters only: a frozen one never moves, so its EMA
    stays equal to it (Difffit trains ~0.5% of a DiT; lerping the rest was memory traffic for nothing)."""
    trained = set(map(id, params))
    return [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if id(p) in trained]


def adamw(params: list[nn.Parameter], **kw) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where torch has one (CPU and CUDA floating-point parameters): one
    call per step instead of a dozen small ops per tensor. On the 2-core CPU its gain on a compiled
    Difffit step of a small DiT was within the noise (BENCHMARKS.md, `micro_speed.py adamw`)."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kw)


def update_ema(pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float) -> None:
    if pairs:
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1 - decay)


def _prepare_run(cfg: TrainConfig) -> tuple[Path, Path | None]:
    run = Path(cfg.out)
    existing = ckpt.list_checkpoints(run) if run.exists() else []
    if cfg.resume:
        if not existing:
            raise UserError(f"--resume: {run} has no checkpoint to resume from; drop --resume to start")
        return run, existing[-1]
    if run.exists() and any(run.iterdir()):
        if not cfg.overwrite:
            raise UserError(f"{run} already holds a run; pass --resume to continue it, --overwrite to start over, "
                            "or choose another --out")
        for p in existing:
            p.unlink()
            p.with_suffix(".optim.pt").unlink(missing_ok=True)
        (run / "log.jsonl").unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return run, None


def fit(model: nn.Module, targets: Targets, meta: ckpt.CheckpointMeta, cfg: TrainConfig,
        params: list[nn.Parameter] | None = None,
        extra_loss: Callable | None = None, desc: str = "train", manifest_extra: dict | None = None,
        state: dict | None = None) -> dict:
    """The training loop shared by `train` and `finetune`.

    `params`: the parameters to optimise (default all); `extra_loss(terms, y, step)` may add terms
    to the per-batch loss and returns (loss_add, {name: value}) for logging. `state`: more objects
    with state_dict / load_state_dict (the Minimax memories), saved by every rank beside each
    checkpoint (`ckpt-N.state<rank>.pt`) and restored on resume, so a resumed run continues exactly.
    """
    device = dist.setup(pick_device(cfg.device))
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.batch < 1 or cfg.batch > len(targets):
        raise UserError(f"--batch {cfg.batch} must be between 1 and the number of training images ({len(targets)})")
    world, rank = dist.world(), dist.rank()
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch} (the global batch) must be divisible by the {world} processes")
    local = cfg.batch // world            # each rank trains on its slice of the global batch
    if dist.is_main():
        run, resume_from = _prepare_run(cfg)
    dist.barrier()
    if not dist.is_main():
        run = Path(cfg.out)
        resume_from = ckpt.list_checkpoints(run)[-1] if cfg.resume else None
    per_epoch = len(targets) // cfg.batch
    if cfg.steps is not None:
        total = int(cfg.steps)
    elif cfg.epochs is not None:
        total = int(math.ceil(cfg.epochs * per_epoch))
    else:
        raise UserError("say how long to train: --epochs E or --steps S")
    if total < 1:
        raise UserError(f"nothing to train: {total} steps")
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    averaged = ema_pairs(ema, model, params)
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    step = 0
    if resume_from is not None:
        old = ckpt.read_meta(resume_from)
        if old.model != meta.model or old.codec != meta.codec or old.class_map != meta.class_map:
            raise UserError(f"--resume: {resume_from} was trained with another model, codec or class map; "
                            "use the same settings or start a new --out")
        ckpt.load_pair(resume_from, model, ema)
        opt_path = resume_from.with_suffix(".optim.pt")
        if opt_path.exists():
            opt.load_state_dict(torch.load(opt_path, map_location=device, weights_only=True))
        step = old.step
        state_path = _state_path(resume_from, rank)
        if state and state_path.exists():
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
            for name, obj in state.items():
                obj.load_state_dict(saved[name])
    if dist.is_main():
        write_json(run / "config.json", {"train": asdict(cfg), "model": meta.model, "codec": meta.codec,
                                         "class_names": meta.class_names, "class_map": meta.class_map,
                                         "world_size": world})
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)     # shares the parameters: the optimiser, EMA and checkpoints see `model`
    diffusion = Diffusion()
    null = model.num_classes
    t0, seen, t_start = time.time(), 0, time.time()
    running: dict[str, float] = {}
    epoch_sums: dict[str, float] = {}
    epoch_means: list[dict] = []
    epoch_n, cur_epoch = 0, step // per_epoch
    log = open(run / "log.jsonl", "a") if dist.is_main() else None
    model.train()

    def checkpoint(s: int):
        path = ckpt.ckpt_path(run, s)
        if state:                  # each rank its own; written before the weights, which mark completion
            save_atomic({name: obj.state_dict() for name, obj in state.items()}, _state_path(path, rank))
            dist.barrier()
        if not dist.is_main():
            return
        meta.step = s
        ckpt.save(path, model, ema, meta, opt)
        old = ckpt.list_checkpoints(run)[:-1]
        for p in old[:max(0, len(old) - cfg.keep)]:
            p.unlink()
            p.with_suffix(".optim.pt").unlink(missing_ok=True)
            for f in p.parent.glob(p.stem + ".state*.pt"):
                f.unlink()

    stopped = None
    with progress(total=total, initial=step, desc=desc, unit="step") as bar:
        while step < total:
            epoch, k = divmod(step, per_epoch)
            perm = torch.randperm(len(targets), generator=step_generator(cfg.seed, epoch, stream=1))
            idx = perm[k * cfg.batch:(k + 1) * cfg.batch]
            g = step_generator(cfg.seed, step)
            # every draw is made for the global batch, then sliced: N processes train as one would
            x0 = targets.batch(idx, g, cfg.flip)
            y = targets.y[idx].clone()
            drop = torch.rand(len(y), generator=g) < cfg.class_dropout
            y[drop] = null
            t = torch.randint(0, diffusion.num_timesteps, (len(y),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            mine = slice(rank * local, (rank + 1) * local)
            labels = targets.y[idx][mine]
            x0, y, t, noise, drop = (v[mine].to(device) for v in (x0, y, t, noise, drop))
            with autocast(device, cfg.precision):
                terms = diffusion.training_losses(net, x0, t, y, noise)
            loss = terms["loss"].mean()
            logs = {"loss": loss.item(), "mse": terms["mse"].mean().item()}
            if "vb" in terms:
                logs["vb"] = terms["vb"].mean().item()
            if extra_loss is not None:
                add, more = extra_loss(terms, labels.to(device), x0, drop, step)
                loss = loss + add
                logs.update(more)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            decay = min(cfg.ema, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema
            update_ema(averaged, decay)
            seen += len(y) * world
            if epoch != cur_epoch and epoch_n:
                epoch_means.append({"epoch": cur_epoch, **{n: v / epoch_n for n, v in epoch_sums.items()}})
                epoch_sums, epoch_n, cur_epoch = {}, 0, epoch
            epoch_n += 1
            for n, v in logs.items():
                epoch_sums[n] = epoch_sums.get(n, 0.0) + v
            for n, v in logs.items():
                running[n] = v if n not in running else 0.98 * running[n] + 0.02 * v
            bar.update(1)
            if log is not None and (step % cfg.log_every == 0 or step == total):
                rate = seen / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{running['loss']:.4f}", img_s=f"{rate:.1f}")
                log.write(json.dumps({"step": step, **{n: round(v, 6) for n, v in logs.items()},
                                      "images_per_s": round(rate, 2)}) + "\n")
                log.flush()
            if cfg.time_limit is not None and dist.any_flag(time.time() - t_start > cfg.time_limit, device):
                stopped = "time limit"
                break
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(step)
    if log is not None:
        log.close()
    if epoch_n:
        epoch_means.append({"epoch": cur_epoch, "partial": epoch_n < per_epoch,
                            **{n: v / epoch_n for n, v in epoch_sums.items()}})
    checkpoint(step)
    dist.barrier()              # the final checkpoint exists for every rank before any returns
    wall = time.time() - t_start
    info = {"steps": step, "planned_steps": total, "stopped": stopped, "images_seen": seen,
            "images_per_s": round(seen / max(wall, 1e-9), 2), "final_loss": running.get("loss"),
            "running": running, "checkpoint": str(ckpt.ckpt_path(run, step)), "epoch_means": epoch_means}
    if not dist.is_main():
        return info
    write_json(run / "manifest.json", manifest(asdict(cfg), cfg.seed, wall, **info, world_size=world,
                                               trainable_params=sum(p.numel() for p in params),
                                               total_params=sum(p.numel() for p in model.parameters()),
                                               **(manifest_extra or {})))
    return info


def _state_path(ckpt_file: Path, rank: int) -> Path:
    return ckpt_file.with_suffix(f".state{rank}.pt")


