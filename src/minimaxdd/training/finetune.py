"""`minimaxdd finetune`: Difffit fine-tuning of a class-conditional diffusion model with the Minimax
criteria (Gu et al., CVPR 2024, Algorithm 1), or any row of the paper's Table 5.

The base is one of this package's checkpoints (or a run), the official DiT release file, or a
diffusers DiT folder. The loss per batch is the diffusion loss plus, per class in the batch,
lambda_r * representativeness + lambda_d * diversity against that class's memories of recent real
latents and recent predictions (`minimaxdd.minimax`). The result is a checkpoint that `sample` reads.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.data.imagenet import WNID, imagenet_indices, train_folder
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec, build_codec
from minimaxdd.diffusion.networks import difffit_parameters
from minimaxdd.diffusion.weights import load_diffusers_dit, load_official_dit
from minimaxdd.errors import UserError
from minimaxdd.runtime import pick_device
from minimaxdd.training.loop import TrainConfig, fit, make_targets
from minimaxdd.training.minimax import (
    OBJECTIVES,
    REDUCTIONS,
    ClassMemory,
    minimax_terms,
)

# Paper settings (Gu et al. 2024, Sec. 4.1; the reference code's defaults).
LAMBDA_R, LAMBDA_D = 0.002, 0.008
MEMORY = 64
BATCH, EPOCHS, LR = 8, 8, 1e-3


@dataclass
class FinetuneConfig:
    ckpt: str
    data: str
    out: str
    objective: str = "minimax"
    lambda_r: float = LAMBDA_R
    lambda_d: float = LAMBDA_D
    memory: int = MEMORY
    reduction: str = "matrix"          # the reference's whole-matrix min / max; "sample" = the paper's per-sample form
    trainable: str = "difffit"         # or "full"
    batch: int = BATCH
    epochs: float | None = EPOCHS
    steps: int | None = None
    lr: float = LR                     # AdamW, constant, no weight decay (reference)
    ema: float = 0.9999
    ema_warmup: bool = False           # the reference's EMA starts from the pretrained weights: no warm-up
    class_dropout: float = 0.1
    codec: str | None = None           # needed for official / diffusers weights (e.g. vae:DIR); ours carry theirs
    class_map: list[int] | None = None
    synsets: str | None = None         # LOC_synset_mapping.txt, to map WordNet-id classes to ImageNet indices
    size: int | None = None
    classes: list[int] | None = None   # fine-tune on these dataset labels only (one phase of a class split)
    sync_memory: bool = False          # under torchrun: share the memories across ranks (default: per rank)
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    precision: str = "bf16"
    compile: bool = False              # torch.compile the network (see TrainConfig.compile)
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False


def load_base(path: str, codec_spec: str | None) -> tuple[nn.Module, ckpt.CheckpointMeta | None]:
    """The base network and, for this package's checkpoints, their metadata."""
    p = Path(path)
    # Our run directories hold ckpt-*.safetensors; a folder with a config.json and none is a diffusers DiT.
    diffusers_cfg = (p / "config.json").exists() or (p / "transformer" / "config.json").exists()
    if p.is_dir() and diffusers_cfg and not ckpt.list_checkpoints(p):
        return load_diffusers_dit(p), None
    if p.suffix in (".pt", ".pth", ".bin"):
        return load_official_dit(p), None
    model, meta = ckpt.load(p, "ema")
    if codec_spec is not None and codec_spec != meta.codec:
        raise UserError(f"{path} was trained with codec {meta.codec}; drop --codec or use a matching checkpoint")
    return model, meta


def class_mapping(names: list[str], model: nn.Module, meta: ckpt.CheckpointMeta | None,
                  explicit: list[int] | None, synsets: str | None, data: str | None = None) -> list[int]:
    """Network class index of each dataset class, stored in the fine-tuned checkpoint."""
    K = model.num_classes
    if explicit is not None:
        m = list(explicit)
        if len(m) != len(names):
            raise UserError(f"--class-map has {len(m)} entries for {len(names)} classes")
    elif meta is not None and all(n in meta.class_names for n in names):
        m = [meta.class_map[meta.class_names.index(n)] for n in names]
    elif K == 1000 and all(WNID.fullmatch(n) for n in names):
        # an ImageNet model: each subset class keeps its ImageNet index
        m = imagenet_indices(names, synsets, train_folder(data))
    elif K == len(names):
        m = list(range(K))
    else:
        raise UserError(f"cannot tell which of the model's {K} classes the dataset's classes {names[:5]}... are; "
                        "pass --class-map with one network class index per dataset class")
    bad = [i for i in m if not 0 <= i < K]
    if bad:
        raise UserError(f"class indices {bad} are outside the model's {K} classes")
    return m


def select_trainable(model: nn.Module, mode: str) -> list[nn.Parameter]:
    if mode not in ("difffit", "full"):
        raise UserError(f"--trainable must be difffit or full, not {mode!r}")
    keep = set(map(id, difffit_parameters(model))) if mode == "difffit" else None
    params = []
    for n, p in model.named_parameters():
        on = (keep is None and n != "pos_embed") or (keep is not None and id(p) in keep)
        p.requires_grad_(on)
        if on:
            params.append(p)
    return params


def run(cfg: FinetuneConfig) -> dict:
    from minimaxdd.data.sources import load_dataset

    if cfg.objective not in OBJECTIVES:
        raise UserError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.reduction not in REDUCTIONS:
        raise UserError(f"--reduction must be one of {REDUCTIONS}")
    if cfg.memory < 1:
        raise UserError(f"--memory must be at least 1, got {cfg.memory}")
    device = pick_device(cfg.device)
    model, meta0 = load_base(cfg.ckpt, cfg.codec)
    codec_spec = meta0.codec if meta0 is not None else cfg.codec
    if codec_spec is None:
        raise UserError("pretrained weights need --codec vae:DIR (the VAE the model was trained with), or pixel")
    ds = load_dataset(cfg.data, size=cfg.size or (meta0.image_size if meta0 else None))
    if cfg.classes is not None:
        ds = ds.subset_classes(list(cfg.classes))
    codec = build_codec(codec_spec, ds.channels, ds.size, device)
    if (codec.latent_channels, codec.latent_size) != (model.in_channels, model.input_size):
        raise UserError(f"the data encode to {codec.latent_channels}x{codec.latent_size}x{codec.latent_size} but the "
                        f"model takes {model.in_channels}x{model.input_size}x{model.input_size}; use --size "
                        f"{model.input_size * ds.size // codec.latent_size} or another model")
    class_map = class_mapping(list(ds.class_names), model, meta0, cfg.class_map, cfg.synsets, cfg.data)
    params = select_trainable(model, cfg.trainable)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=class_map, image_size=ds.size, channels=ds.channels, data=cfg.data,
                               extra={"finetune": asdict(cfg), "base": cfg.ckpt, "pixel": isinstance(codec, PixelCodec)})
    targets = make_targets(codec, ds, class_map)
    dim = model.in_channels * model.input_size ** 2
    # The batches carry network classes (an ImageWoof label is its ImageNet index, e.g. 193); the
    # memories have one slot per class the data use, whatever the label dropout did to the conditioning.
    used = sorted(set(class_map))
    slot = torch.full((model.num_classes,), -1, dtype=torch.long, device=device)
    slot[torch.as_tensor(used, device=device)] = torch.arange(len(used), device=device)
    real = ClassMemory(len(used), cfg.memory, dim, device)
    pred = ClassMemory(len(used), cfg.memory, dim, device)

    def extra(terms, y, x0, drop, step):
        return minimax_terms(terms["x0_hat"], x0, slot[y], real, pred, cfg.objective, cfg.lambda_r, cfg.lambda_d,
                             cfg.reduction, gather=dist.all_gather_cat if cfg.sync_memory else None)

    tcfg = TrainConfig(data=cfg.data, out=cfg.out, model="(base)", codec=codec.spec, size=cfg.size, epochs=cfg.epochs,
                       steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, weight_decay=0.0, ema=cfg.ema,
                       ema_warmup=cfg.ema_warmup, class_dropout=cfg.class_dropout, checkpoint_every=cfg.checkpoint_every,
                       log_every=cfg.log_every, seed=cfg.seed, precision=cfg.precision, compile=cfg.compile,
                       device=cfg.device,
                       resume=cfg.resume, overwrite=cfg.overwrite, extra={"objective": cfg.objective})
    info = fit(model, targets, meta, tcfg, params=params, extra_loss=None if cfg.objective == "simple" else extra,
               desc=f"finetune {cfg.objective}", manifest_extra={
                   "objective": cfg.objective, "lambda_r": cfg.lambda_r, "lambda_d": cfg.lambda_d,
                   "memory": cfg.memory, "reduction": cfg.reduction, "finetune_config": asdict(cfg)},
               state={"real_memory": real, "pred_memory": pred})
    return info

