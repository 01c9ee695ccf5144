"""`minimaxdd train`: a class-conditional diffusion model from scratch on a dataset (the shared loop is
`minimaxdd.training.loop`)."""
from __future__ import annotations

from dataclasses import asdict

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.augment import AUGMENT_DIM
from minimaxdd.diffusion.codecs import Codec, PixelCodec, build_codec
from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.errors import UserError
from minimaxdd.runtime import pick_device
from minimaxdd.training.loop import TrainConfig, fit, make_targets


def train_from_scratch(cfg: TrainConfig) -> dict:
    """Train cfg.model from scratch on cfg.data; returns the loop's summary (see `training.loop.fit`)."""
    ds = load_dataset(cfg.data, size=cfg.size)
    device = pick_device(cfg.device)
    codec = build_codec(cfg.codec, ds.channels, ds.size, device)
    arch = cfg.model.split("-")[0]
    learn_sigma = cfg.learn_sigma if cfg.learn_sigma is not None else (arch == "dit" and cfg.formulation == "ddpm")
    aug = {}
    if cfg.augment:
        _check_augment(cfg, arch, codec)
        aug = {"augment_dim": AUGMENT_DIM}
    torch.manual_seed(cfg.seed)   # parameter initialisation only; data draws use step generators
    model = build_denoiser(cfg.model, codec.latent_size, codec.latent_channels, ds.num_classes, learn_sigma=learn_sigma,
                           **aug)
    class_map = list(range(ds.num_classes))   # from scratch: dataset labels are the network classes
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=class_map, image_size=ds.size, channels=ds.channels, data=cfg.data,
                               extra={"train": asdict(cfg), "pixel": isinstance(codec, PixelCodec)},
                               formulation=cfg.formulation)
    targets = make_targets(codec, ds, class_map)
    return fit(model, targets, meta, cfg, desc=f"train {cfg.model}")


def _check_augment(cfg: TrainConfig, arch: str, codec: Codec) -> None:
    """Non-leaking augmentation needs a U-Net (which embeds the labels) in pixel space (exact pixel moves)."""
    if not 0 < cfg.augment <= 1:
        raise UserError(f"augment is a probability per transform, in (0, 1] (EDM: 0.12), or 0 for none; "
                        f"got {cfg.augment}")
    if arch != "unet":
        raise UserError(f"augment needs a U-Net model (unet-s/m/l embeds the augmentation labels); {cfg.model} "
                        "does not: choose a unet-* model or set augment to 0")
    if not isinstance(codec, PixelCodec):
        raise UserError("augment moves pixels, so it needs the pixel codec; drop --codec vae:... or set augment to 0")

