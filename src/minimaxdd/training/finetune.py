"""`minimaxdd finetune`: Difffit fine-tuning of a class-conditional diffusion model with the Minimax
criteria (Gu et al., CVPR 2024, Algorithm 1), or any row of the paper's Table 5.

The base is one of this package's checkpoints (or a run), the official DiT release file, or a
diffusers DiT folder. The loss per batch is the diffusion loss plus, per class in the batch,
lambda_r * representativeness + lambda_d * diversity against that class's memories of recent real
latents and recent predictions (`minimaxdd.training.minimax`). The result is a checkpoint that `sample` reads.
With Difffit (the default) the checkpoints hold only the trained tensors and name their base by path and
sha256 (`diffusion.checkpoints`): a DiT-XL/2 fine-tune is ~14 MB per checkpoint instead of 5.4 GB.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.imagenet import WNID, imagenet_indices, train_folder
from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec, build_codec
from minimaxdd.diffusion.edm import EDM
from minimaxdd.diffusion.formulations import build_formulation
from minimaxdd.diffusion.networks import difffit_parameters
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.errors import UserError
from minimaxdd.evaluation.reference_classifier import ReferenceConfig, reference_classifier
from minimaxdd.files import input_paths, reading, refuse_overlap
from minimaxdd.runtime import pick_device
from minimaxdd.settings import AT_LEAST_1, NON_NEGATIVE, run_field, setting, without_values
from minimaxdd.training.config import LoopConfig, redefault, resolve_flip
from minimaxdd.training.draws import Targets, make_targets
from minimaxdd.training.loop import fit
from minimaxdd.training.minimax import EMBEDDINGS, OBJECTIVES, REDUCTIONS, ClassMemory, MinimaxStep

# How the minimax terms move to the EDM formulation (BENCHMARKS.md, "The minimax terms' gradient share"):
#   native  the terms on EDM's D as is, at EDM's levels and loss (the default; before issue 29): over the training
#           levels, three orders of magnitude weaker than in the paper
#   weight  the terms' gradient scaled by (sigma / c_out)^2 (`EDM.paper_term_scale`), at EDM's levels and loss:
#           at every level the terms-to-diffusion ratio is the paper's, the levels are EDM's
#   paper   the paper's objective on the network's output: its noise levels (uniform DDPM timesteps mapped to
#           sigma), the diffusion loss weighted as L_simple weighs epsilon (`EDM(weighting="ddpm")`), and the
#           terms' gradient scaled by sigma / c_out (`EDM.paper_output_scale`), so that every per-sample gradient
#           on F is the one the paper's loss gives epsilon
# The DDPM formulation is the paper's own: the setting changes nothing there.
EDM_TRANSFERS = ("native", "weight", "paper")

# Which parameters fine-tuning trains: Difffit's (Xie et al. 2023: biases, norms, the class embedding and
# the per-block scales gamma), or all but the fixed sin-cos position embedding.
TRAINABLE = ("difffit", "full")


# Settings added after runs existed, with the value those runs used: a stage key leaves them out at that value,
# so a run made before them resumes its fine-tuning instead of training it again (tested).
KEY_NEUTRAL = {"edm_transfer": "native", "embedding": "pixel"}


def key_settings(settings: dict) -> dict:
    """Fine-tune settings (a dict) less those of KEY_NEUTRAL left at their old value: what a stage key sees."""
    return without_values(settings, KEY_NEUTRAL)


@dataclass(kw_only=True)
class FinetuneConfig(LoopConfig):
    """`minimaxdd finetune`. The defaults are the paper's (Gu et al. 2024, Sec. 4.1, and the reference
    code's): lambda_r 0.002, lambda_d 0.008, memories of 64 per class, batch 8 for 8 epochs, AdamW at a
    constant 1e-3 without weight decay, EMA from the pretrained weights without warm-up."""
    ckpt: str = run_field(help="the base: a run or ckpt-*.safetensors, the official DiT-XL-2-256x256.pt, "
                               "or a diffusers DiT folder")
    data: str = run_field(help="dataset spec NAME[:ARG]")
    objective: str = setting("minimax", choices=tuple(OBJECTIVES),
                             help="the terms added to the diffusion loss: a row of the paper's Table 5")
    lambda_r: float = setting(0.002, bounds=NON_NEGATIVE, help="weight of the representativeness term")
    lambda_d: float = setting(0.008, bounds=NON_NEGATIVE, help="weight of the diversity term")
    memory: int = setting(64, bounds=AT_LEAST_1, help="entries per class of each memory (real samples, predictions)")
    reduction: str = setting("matrix", choices=REDUCTIONS,
                             help="matrix: one min / max per class over the whole similarity matrix (the reference "
                                  "code); sample: per prediction, then averaged (the paper's Eqs. 3-4)")
    edm_transfer: str = setting("native", choices=EDM_TRANSFERS,
                                help="EDM bases only: native (the terms on EDM's estimate as is), weight (the paper's "
                                     "terms-to-diffusion gradient ratio at each level, EDM's levels), paper (the "
                                     "paper's levels and per-sample gradients on the network's output)")
    embedding: str = setting("pixel", choices=EMBEDDINGS,
                             help="what the terms' cosines compare: pixel (the model-space estimate as is, the "
                                  "paper's), centred (minus the training set's mean sample), feature (the "
                                  "reference classifier's pooled features; pixel models only)")
    trainable: str = setting("difffit", choices=TRAINABLE,
                             help="difffit: biases, norms, class embedding and per-block scales; full: all "
                                  "but the position embedding")
    batch: int = redefault("batch", 8)
    epochs: float | None = redefault("epochs", 8)
    lr: float = redefault("lr", 1e-3)
    ema_warmup: bool = redefault("ema_warmup", False)    # the reference's EMA starts from the pretrained weights
    codec: str | None = setting(None, help="the codec of official or diffusers weights, e.g. vae:DIR "
                                           "(our checkpoints carry theirs)")
    class_map: list[int] | None = setting(None, help="network class index of each dataset class; null: from the "
                                                     "base's class names, ImageNet indices, or the identity",
                                          bounds=NON_NEGATIVE)
    synsets: str | None = setting(None, help="LOC_synset_mapping.txt, to map WordNet-id classes to ImageNet indices")
    size: int | None = run_field(None, help="image side; null: the base's")
    classes: list[int] | None = run_field(None, help="fine-tune on these dataset labels only (one phase of a "
                                                     "class split); null: all")
    sync_memory: bool = setting(False, help="under torchrun: every rank pushes every rank's batch into its "
                                            "memories; otherwise each rank keeps its own, as the reference does")


def check_config(cfg: FinetuneConfig) -> None:
    """The fine-tuning choices, checked once before anything is loaded: the errors name the fix."""
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.reduction not in REDUCTIONS:
        raise UserError(f"--reduction must be one of {', '.join(REDUCTIONS)}, not {cfg.reduction!r}")
    if cfg.memory < 1:
        raise UserError(f"--memory must be at least 1, got {cfg.memory}")
    if cfg.edm_transfer not in EDM_TRANSFERS:
        raise UserError(f"--edm-transfer must be one of {', '.join(EDM_TRANSFERS)}, not {cfg.edm_transfer!r}")
    if cfg.embedding not in EMBEDDINGS:
        raise UserError(f"--embedding must be one of {', '.join(EMBEDDINGS)}, not {cfg.embedding!r}")
    if cfg.trainable not in TRAINABLE:
        raise UserError(f"--trainable must be one of {', '.join(TRAINABLE)}, not {cfg.trainable!r}")


def load_base(path: str, codec_spec: str | None) -> tuple[nn.Module, ckpt.CheckpointMeta | None]:
    """The base network (EMA weights) and, for this package's checkpoints, their metadata."""
    kind = ckpt.base_kind(path)
    file = ckpt.resolve(path) if kind == "minimaxdd" else Path(path)
    fix = ("download the official weights again" if kind == "official" else "re-download it, or re-run the "
           "training that wrote it (a run's older checkpoint also serves: name it with --ckpt)")
    with reading(file, fix):
        model, meta = ckpt.load_network(file)
    if meta is not None and codec_spec is not None and codec_spec != meta.codec:
        raise UserError(f"{path} was trained with codec {meta.codec}; drop --codec or use a matching checkpoint")
    return model, meta


def merge_defaults(base: dict, over: dict | None, channels: int) -> dict:
    """Checkpoint defaults: `over`'s sections and values over `base`'s (a value of None does not override).
    A guided-channel count of `channels` or more (the official DiT's 3 on a model of fewer latent channels)
    means all of them: it is dropped, as null says that."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in (over or {}).items():
        out.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    if out.get("sample", {}).get("cfg_channels", 0) >= channels:
        del out["sample"]["cfg_channels"]
    return {k: v for k, v in out.items() if v}


def difffit_base(cfg: FinetuneConfig, model: nn.Module) -> dict | None:
    """What a Difffit-only checkpoint records of its base (the file's identity and the trained parameter names),
    or None for full fine-tuning, whose checkpoints stay whole. On --resume the base must be the one the run
    started from: the checkpoints hold only the trained tensors, which mean nothing on another base."""
    if cfg.trainable != "difffit":
        return None
    base = {**ckpt.identity(cfg.ckpt), "trained": [n for n, p in model.named_parameters() if p.requires_grad]}
    existing = ckpt.list_checkpoints(cfg.out) if cfg.resume and Path(cfg.out).exists() else []
    if existing:
        old = ckpt.read_meta(existing[-1]).base
        if old is None or old["sha256"] != base["sha256"] or old["trained"] != base["trained"]:
            was = "a full checkpoint" if old is None else f"{old['path']} (sha256 {old['sha256'][:16]}...)"
            raise UserError(f"--resume: {existing[-1]} was fine-tuned from {was}, not {base['path']} "
                            f"(sha256 {base['sha256'][:16]}...); resume with the same --ckpt and --trainable, or "
                            "start a new --out")
    return base


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
    """Turn requires_grad on for the parameters `mode` (one of TRAINABLE) trains and off for the rest;
    returns them in the model's order."""
    difffit = set(map(id, difffit_parameters(model)))
    trains = {"difffit": lambda n, p: id(p) in difffit, "full": lambda n, p: n != "pos_embed"}[mode]
    params = []
    for n, p in model.named_parameters():
        on = trains(n, p)
        p.requires_grad_(on)
        if on:
            params.append(p)
    return params


def formulation_for(cfg: FinetuneConfig, formulation: str) -> Diffusion | EDM:
    """The formulation fine-tuning trains under: the base's, with the paper's noise levels and loss weighting
    under EDM when cfg.edm_transfer is "paper"."""
    if formulation == "edm":
        paper = cfg.edm_transfer == "paper"
        return EDM(levels="ddpm" if paper else "lognormal", weighting="ddpm" if paper else "edm")
    return build_formulation(formulation)


def term_scale(cfg: FinetuneConfig,
               formulation: Diffusion | EDM | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-sample factor on the terms' gradient (`MinimaxStep.grad_scale`) that cfg.edm_transfer asks for."""
    if not isinstance(formulation, EDM) or cfg.edm_transfer == "native":
        return None
    return formulation.paper_output_scale if cfg.edm_transfer == "paper" else formulation.paper_term_scale


def cosine_space(cfg: FinetuneConfig, ds: Any, targets: Targets, codec: Any,
                 device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The embedding cfg.embedding names, as a differentiable map of model-space samples (n, C, H, W) -> (n, D);
    None for "pixel" (the samples as they are)."""
    if cfg.embedding == "pixel":
        return None
    if cfg.embedding == "centred":
        mean = (targets.x if targets.x is not None else targets.mean[:, 0].float()).mean(0).to(device)  # (C, H, W)
        return lambda x: x - mean
    if not isinstance(codec, PixelCodec):
        raise UserError("--embedding feature reads images through the reference classifier, which a latent model "
                        "would have to decode at every step; use pixel or centred for a latent (VAE) model")
    ref = reference_classifier(ds, ReferenceConfig(precision=cfg.precision), device).eval().requires_grad_(False)
    mean, std = (v.to(device).view(1, -1, 1, 1) for v in channel_stats(ds.x_train))

    def features(x: torch.Tensor) -> torch.Tensor:       # model space [-1, 1] -> the classifier's input -> (n, D)
        return ref.embedding(((x.float() + 1) / 2 - mean) / std)
    return features


def minimax_step(cfg: FinetuneConfig, model: nn.Module, class_map: list[int], device: torch.device,
                 formulation: Diffusion | EDM | None = None,
                 embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> MinimaxStep:
    """The step that adds cfg.objective's terms, with empty memories for the classes the data use; under EDM
    with a transfer other than "native", the terms' gradient is scaled to the paper's share. `embed`: what the
    cosines compare (`cosine_space`); None: the samples."""
    shape = (1, model.in_channels, model.input_size, model.input_size)
    with torch.no_grad():
        dim = model.in_channels * model.input_size ** 2 if embed is None else embed(torch.zeros(shape, device=device)
                                                                                   ).flatten(1).shape[1]
    # The batches carry network classes (an ImageWoof label is its ImageNet index, e.g. 193); the
    # memories have one slot per class the data use, whatever the label dropout did to the conditioning.
    used = sorted(set(class_map))
    slot = torch.full((model.num_classes,), -1, dtype=torch.long, device=device)
    slot[torch.as_tensor(used, device=device)] = torch.arange(len(used), device=device)
    return MinimaxStep(objective=cfg.objective, lambda_r=cfg.lambda_r, lambda_d=cfg.lambda_d, reduction=cfg.reduction,
                       real=ClassMemory(len(used), cfg.memory, dim, device),
                       pred=ClassMemory(len(used), cfg.memory, dim, device), slot=slot,
                       gather=dist.all_gather_cat if cfg.sync_memory else None,
                       grad_scale=term_scale(cfg, formulation), embed=embed)


def finetune(cfg: FinetuneConfig, defaults: dict | None = None) -> dict:
    """Fine-tune the base cfg.ckpt on cfg.data; returns the loop's summary (see `training.loop.fit`).

    `defaults`: sampling / evaluation defaults to record in the checkpoint ({"sample": {"cfg": 4.0, ...},
    "evaluate": {"protocol": ...}}, what a preset samples and evaluates with), over the base's own (ours
    carry theirs; the official DiT's are guidance 4 on 3 channels and idc); flags at sampling time win."""

    check_config(cfg)
    refuse_overlap(cfg.out, input_paths(cfg.ckpt, cfg.data))
    device = pick_device(cfg.device)
    model, meta0 = load_base(cfg.ckpt, cfg.codec)
    codec_spec = meta0.codec if meta0 is not None else cfg.codec
    if codec_spec is None:
        raise UserError("pretrained weights need --codec vae:DIR (the VAE the model was trained with), or pixel")
    ds = load_dataset(cfg.data, size=cfg.size or (meta0.image_size if meta0 else None))
    if cfg.classes is not None:
        ds = ds.subset_classes(list(cfg.classes))
    cfg, mirror = resolve_flip(cfg, ds, device, say=lambda m: print(f"[finetune] {m}", file=sys.stderr, flush=True))
    codec = build_codec(codec_spec, ds.channels, ds.size, device)
    if (codec.latent_channels, codec.latent_size) != (model.in_channels, model.input_size):
        raise UserError(f"the data encode to {codec.latent_channels}x{codec.latent_size}x{codec.latent_size} but the "
                        f"model takes {model.in_channels}x{model.input_size}x{model.input_size}; use --size "
                        f"{model.input_size * ds.size // codec.latent_size} or another model")
    class_map = class_mapping(list(ds.class_names), model, meta0, cfg.class_map, cfg.synsets, cfg.data)
    params = select_trainable(model, cfg.trainable)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=class_map, image_size=ds.size, channels=ds.channels, data=cfg.data,
                               extra={"finetune": asdict(cfg), "base": cfg.ckpt,
                                      "pixel": isinstance(codec, PixelCodec), "flip_auto": mirror},
                               formulation=meta0.formulation if meta0 is not None else "ddpm",  # official: DDPM
                               base=difffit_base(cfg, model),
                               defaults=merge_defaults(ckpt.base_defaults(cfg.ckpt), defaults, model.in_channels))
    targets = make_targets(codec, ds, class_map)
    formulation = formulation_for(cfg, meta.formulation)
    embed = cosine_space(cfg, ds, targets, codec, device) if OBJECTIVES[cfg.objective] else None
    minimax = minimax_step(cfg, model, class_map, device, formulation, embed)
    # "simple" adds nothing; its (empty) memories are still checkpointed, as every objective's are
    return fit(model, targets, meta, cfg, params=params, step_loss=minimax if OBJECTIVES[cfg.objective] else None,
               state=minimax.memories(), desc=f"finetune {cfg.objective}", formulation=formulation, manifest_extra={
                   "objective": cfg.objective, "lambda_r": cfg.lambda_r, "lambda_d": cfg.lambda_d,
                   "memory": cfg.memory, "reduction": cfg.reduction, "finetune_config": asdict(cfg)})
