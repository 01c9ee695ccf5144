"""`minimaxdd train`: a class-conditional diffusion model from scratch on a dataset (the shared loop is
`minimaxdd.training.loop`)."""
from __future__ import annotations

from dataclasses import asdict

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec, build_codec
from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.runtime import pick_device
from minimaxdd.training.loop import TrainConfig, fit, make_targets


def train_from_scratch(cfg: TrainConfig) -> dict:
    """Train cfg.model from scratch on cfg.data; returns the loop's summary (see `training.loop.fit`)."""
    ds = load_dataset(cfg.data, size=cfg.size)
    device = pick_device(cfg.device)
    codec = build_codec(cfg.codec, ds.channels, ds.size, device)
    arch = cfg.model.split("-")[0]
    learn_sigma = cfg.learn_sigma if cfg.learn_sigma is not None else (arch == "dit" and cfg.formulation == "ddpm")
    torch.manual_seed(cfg.seed)   # parameter initialisation only; data draws use step generators
    model = build_denoiser(cfg.model, codec.latent_size, codec.latent_channels, ds.num_classes, learn_sigma=learn_sigma)
    class_map = list(range(ds.num_classes))   # from scratch: dataset labels are the network classes
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=class_map, image_size=ds.size, channels=ds.channels, data=cfg.data,
                               extra={"train": asdict(cfg), "pixel": isinstance(codec, PixelCodec)},
                               formulation=cfg.formulation)
    targets = make_targets(codec, ds, class_map)
    return fit(model, targets, meta, cfg, desc=f"train {cfg.model}")
