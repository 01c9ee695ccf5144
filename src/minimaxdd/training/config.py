"""The shared training loop's config (`LoopConfig`), which `train` and `finetune` extend with their own fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from minimaxdd.evaluation.symmetry import MirrorTest, mirror_test
from minimaxdd.runtime import PRECISIONS
from minimaxdd.settings import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Bounds, run_field, setting

FLIP_CHOICES = ("auto",)   # besides true and false


@dataclass(kw_only=True)
class LoopConfig:
    """How the shared loop trains, and where it writes.

    The defaults are DiT's recipe (Peebles & Xie 2023, Sec. 4): AdamW at a constant lr 1e-4 without
    weight decay, EMA decay 0.9999, label dropout 0.1. A stage redeclares a field (`redefault`) only
    where its source uses another value.
    """
    out: str = run_field(help="run directory: checkpoints, log.jsonl, config.json and manifest.json")
    epochs: float | None = setting(None, bounds=POSITIVE, help="length in passes over the training set")
    steps: int | None = setting(None, bounds=AT_LEAST_1, help="length in optimiser steps (wins over epochs)")
    time_limit: float | None = setting(None, bounds=POSITIVE, help="seconds; stop (and checkpoint) when exceeded")
    batch: int = setting(64, help="global batch: images per step over all processes")
    lr: float = setting(1e-4, bounds=POSITIVE, help="AdamW learning rate (constant)")
    weight_decay: float = setting(0.0, bounds=NON_NEGATIVE, help="AdamW weight decay")
    beta1: float = setting(0.9, bounds=Bounds(0, 1, hi_open=True), help="AdamW beta1")
    beta2: float = setting(0.999, bounds=Bounds(0, 1, hi_open=True), help="AdamW beta2")
    ema: float = setting(0.9999, bounds=PROBABILITY, help="decay per step of the EMA of the weights (see ema_warmup)")
    # short CPU runs still get a useful EMA
    ema_warmup: bool = setting(True, help="ramp the EMA decay up as min(ema, (1+step)/(10+step))")
    # EDM2's power-function EMA is defined for relative stds below about 0.28 (training.optim)
    ema_length: float | None = setting(None, bounds=Bounds(0, 0.28, lo_open=True, hi_open=True),
                                       help="EDM2's power-function EMA with this relative std: the average spans "
                                            "about this fraction of the run so far (0.05-0.10 in EDM2); "
                                            "replaces ema and ema_warmup")
    lr_warmup: float = setting(0.0, bounds=PROBABILITY,
                               help="fraction of the planned steps over which the lr ramps up linearly from 0")
    # U-ViT uses 0.15 (p_uncond, Bao et al. 2023)
    class_dropout: float = setting(0.1, bounds=Bounds(0, 1, hi_open=True),
                                   help="probability that a label is replaced by the null class, which "
                                        "classifier-free guidance needs")
    flip: bool | str = setting(True, choices=FLIP_CHOICES,
                               help="random horizontal flips of the training images: true, false, or auto (on "
                                    "when a mirrored image keeps its label, measured on the training data: "
                                    "evaluation.symmetry)")
    grad_clip: float | None = setting(None, bounds=POSITIVE, help="clip the gradient norm to this; null: no clipping")
    checkpoint_every: int = setting(1000, bounds=AT_LEAST_1, help="steps between checkpoints")
    keep: int = setting(2, bounds=NON_NEGATIVE, help="checkpoints kept besides the final one")
    log_every: int = setting(50, bounds=AT_LEAST_1, help="steps between lines of log.jsonl")
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


def decide_flip(ds: Any, seed: int, device: Any, precision: str, say: Any = print) -> MirrorTest:
    """flip "auto" decided from ds's training set (`evaluation.symmetry.mirror_test`), said through `say`."""
    test = mirror_test(ds, seed=seed, device=device, precision=precision)
    say(f"flip auto: {test.describe()}" + (" (cached)" if test.cached else f", measured in {test.time_s:.0f} s"))
    return test


def resolve_flip(cfg: Any, ds: Any, device: Any, say: Any = print) -> tuple[Any, dict | None]:
    """`cfg` with flip "auto" decided from the data (`decide_flip` at cfg's seed and precision), and the
    measurement (None when flip was given as true or false)."""
    if isinstance(cfg.flip, bool):
        return cfg, None
    if cfg.flip != "auto":
        raise ValueError(f"flip must be true, false or auto, got {cfg.flip!r}")
    test = decide_flip(ds, cfg.seed, device, cfg.precision, say)
    return dataclasses.replace(cfg, flip=test.flip), dataclasses.asdict(test)
