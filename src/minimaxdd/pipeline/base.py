"""The `base` stage of `distill`: pretrained weights as they are, or a diffusion model trained from scratch."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, say
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.settings import to_dict
from minimaxdd.training.config import decide_flip
from minimaxdd.training.scratch import TrainConfig
from minimaxdd.training.scratch import train_from_scratch as train


def _check_pretrained_files(cfg: DistillConfig) -> Path:
    """The pretrained weights (and VAE folder) exist, or a UserError says where to get them."""
    b = cfg.base
    p = Path(b.pretrained).expanduser()
    if not p.exists():
        help_ = b.weights_help or "download the weights once and give their local path"
        raise UserError(f"pretrained weights {p} not found: {help_}; or set base.pretrained=PATH")
    codec = b.codec or ""
    if codec.startswith("vae:") and not Path(codec[4:]).expanduser().exists():
        help_ = b.weights_help or "download the VAE once (a diffusers AutoencoderKL folder) and give its path"
        raise UserError(f"VAE folder {codec[4:]} not found: {help_}; or set base.codec=vae:DIR")
    return p


def stage_base(run: Path, cfg: DistillConfig, force: bool, device: torch.device) -> dict:
    """Pretrained weights as they are (recorded with their size and date), or a model trained from scratch."""
    b = cfg.base
    if b.pretrained:
        p = _check_pretrained_files(cfg)
        stat = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else sorted(x.name for x in p.iterdir())
        st = StageRun(run, "base", key_of("pretrained", str(p.resolve()), stat, b.codec), to_dict(b), force)
        return st.run(device, lambda st: st.finish(device, checkpoint=str(p), codec=b.codec, pretrained=True),
                      note=None)
    tcfg = {**to_dict(b.train), "data": cfg.data, "size": cfg.size, "seed": cfg.seed}
    mirror = None
    if tcfg["flip"] == "auto":   # decided before keying: a run whose data decide as its flag did keeps its key
        test = decide_flip(load_dataset(cfg.data, size=cfg.size), cfg.seed, device, b.train.precision,
                           say=lambda m: say(f"base: {m}"))
        tcfg["flip"], mirror = test.flip, dataclasses.asdict(test)
    keyed = {k: v for k, v in tcfg.items() if k != "augment" or v}     # absent when off: older keys hold
    st = StageRun(run, "base", key_of("train", keyed), tcfg, force)

    def body(st: StageRun) -> dict:
        # begin keeps the folder of a resumable stage (same key), so its checkpoints are still there
        resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
        say(f"base: {'resuming' if resume else 'training'} {b.train.model} from scratch on {cfg.data} "
            f"in {b.train.precision}")
        info = train(TrainConfig(**tcfg, out=str(st.dir), device=str(device), resume=resume, overwrite=not resume,
                                 extra={"flip_auto": mirror} if mirror else {}))
        return st.finish(device, checkpoint=info["checkpoint"], codec=None, pretrained=False,
                         steps=info["steps"], images_per_s=info["images_per_s"], stopped=info["stopped"],
                         **({"flip_auto": mirror} if mirror else {}))

    return st.run(device, body, note=lambda r: f" ({r['checkpoint']})")
