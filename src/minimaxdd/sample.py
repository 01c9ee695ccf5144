"""`minimaxdd sample`: IPC images per class from a checkpoint, written in the synthetic-set format."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from . import checkpoint as ckpt
from .codecs import build_codec
from .errors import UserError
from .sampling import SAMPLERS, generate, image_seed
from .synthset import SyntheticSet, write_synthetic
from .utils import manifest, pick_device


@dataclass
class SampleConfig:
    ckpt: str
    out: str
    ipc: int = 10
    steps: int = 50                 # the paper samples with 50 respaced DDPM steps
    sampler: str = "ddpm"
    cfg: float = 1.0                # guidance scale; the reference fine-tuned DiT uses 4.0
    cfg_channels: int | None = None
    seed: int = 0
    batch_size: int = 64
    weights: str = "ema"
    precision: str = "fp32"
    device: str = "auto"
    classes: list[int] | None = None   # dataset labels to sample (default all)
    compile: bool = False
    overwrite: bool = False


def sample_checkpoint(cfg: SampleConfig) -> tuple[SyntheticSet, dict]:
    if cfg.ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {cfg.ipc}")
    if cfg.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if cfg.steps < 1:
        raise UserError(f"--steps must be at least 1, got {cfg.steps}")
    device = pick_device(cfg.device)
    model, meta = ckpt.load(cfg.ckpt, cfg.weights, device)
    codec = build_codec(meta.codec, meta.channels, meta.image_size, device)
    labels = list(range(len(meta.class_names))) if cfg.classes is None else cfg.classes
    bad = [c for c in labels if not 0 <= c < len(meta.class_names)]
    if bad:
        raise UserError(f"--classes {bad} out of range: the checkpoint has {len(meta.class_names)} classes")
    ds_labels = torch.tensor([c for c in labels for _ in range(cfg.ipc)])
    net_labels = torch.as_tensor(meta.class_map)[ds_labels]
    # Seeds are keyed by the network class, so the same class gets the same noise in any subset.
    seeds = [image_seed(cfg.seed, c, i % cfg.ipc) for i, c in enumerate(net_labels.tolist())]
    t0 = time.time()
    latents = generate(model, net_labels, seeds, sampler=cfg.sampler, steps=cfg.steps, cfg_scale=cfg.cfg,
                       cfg_channels=cfg.cfg_channels, clip=meta.codec == "pixel", precision=cfg.precision,
                       batch_size=cfg.batch_size, device=device, compile=cfg.compile, desc=f"sample {cfg.sampler} {cfg.steps} steps")
    t_sample = time.time() - t0
    images = codec.decode(latents)
    s = SyntheticSet(images, ds_labels, list(meta.class_names))
    info = {"sample_time_s": round(t_sample, 3), "decode_time_s": round(time.time() - t0 - t_sample, 3),
            "images_per_s": round(len(images) / max(t_sample, 1e-9), 3), "checkpoint": str(ckpt.resolve(cfg.ckpt)),
            "checkpoint_step": meta.step, "class_map": meta.class_map}
    return s, info


def run(cfg: SampleConfig):
    t0 = time.time()
    s, info = sample_checkpoint(cfg)
    path = write_synthetic(cfg.out, s, manifest(asdict(cfg), cfg.seed, time.time() - t0, **info), cfg.overwrite)
    return path, info
