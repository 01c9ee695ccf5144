"""`minimaxdd train`: a class-conditional diffusion model from scratch on a dataset (the shared loop is
`minimaxdd.training.loop`)."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict, dataclass

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.augment import AUGMENT_DIM
from minimaxdd.diffusion.codecs import Codec, PixelCodec, build_codec
from minimaxdd.diffusion.formulations import FORMULATIONS
from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.errors import UserError
from minimaxdd.files import input_paths, refuse_overlap
from minimaxdd.runtime import pick_device
from minimaxdd.settings import PROBABILITY, run_field, setting
from minimaxdd.training.config import LoopConfig, resolve_flip
from minimaxdd.training.draws import make_targets
from minimaxdd.training.loop import fit


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
    augment: float = setting(0.0, bounds=PROBABILITY,
                             help="non-leaking augmentation (diffusion.augment): the probability of each of "
                                       "x-flip, y-flip, quarter turn and integer shift per training image, the "
                                       "network told which (zero when sampling); U-Net models in pixel space "
                                       "only; EDM trains CIFAR-10 with 0.12; 0: off")
    preset: str | None = run_field(None, help="the preset the config came from, recorded in the run")
    # a dict default needs a factory, which run_field does not take
    extra: dict = dataclasses.field(default_factory=dict, metadata={
        "run": True, "help": "free-form notes recorded in config.json and the checkpoint"})


def train_from_scratch(cfg: TrainConfig) -> dict:
    """Train cfg.model from scratch on cfg.data; returns the loop's summary (see `training.loop.fit`)."""
    refuse_overlap(cfg.out, input_paths(cfg.data))
    ds = load_dataset(cfg.data, size=cfg.size)
    device = pick_device(cfg.device)
    cfg, mirror = resolve_flip(cfg, ds, device, say=lambda m: print(f"[train] {m}", file=sys.stderr, flush=True))
    if mirror is not None:
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "flip_auto": mirror})
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
