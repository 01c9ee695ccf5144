"""The `finetune` stage of `distill`: the base fine-tuned with the configured objective (in phases of classes if
asked), or passed through; and what a run records in its checkpoints for later `sample` / `ablation` runs."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec, build_codec
from minimaxdd.diffusion.generation import CHECKPOINT_SETTINGS
from minimaxdd.errors import UserError
from minimaxdd.files import write_json
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, say
from minimaxdd.pipeline.config import NO_FINETUNING, DistillConfig
from minimaxdd.settings import to_dict
from minimaxdd.training.finetune import FinetuneConfig, class_mapping, finetune, key_settings, load_base, merge_defaults


def stage_finetune(run: Path, cfg: DistillConfig, base: dict, force: bool, device: torch.device) -> dict:
    """Fine-tune the base with the configured objective (in phases if asked), or pass the base through."""
    f = to_dict(cfg.finetune)
    objective = cfg.finetune.objective
    phases = cfg.phases if objective != NO_FINETUNING else 1
    key = key_of(base["key"], key_settings(f), cfg.data, cfg.size, cfg.seed, *([phases] if phases > 1 else []))
    st = StageRun(run, "finetune", key, {**f, "phases": phases} if phases > 1 else f, force)

    def body(st: StageRun) -> dict:
        if objective == NO_FINETUNING:
            if not base.get("pretrained"):
                return st.finish(device, checkpoint=base["checkpoint"], objective=NO_FINETUNING)
            path = export_pretrained(base, cfg, st.dir, device)  # pretrained weights in our format, with the class map
            return st.finish(device, checkpoint=str(path), objective=NO_FINETUNING)
        if phases > 1:
            return _finetune_phases(st, cfg, base, phases, device)
        # begin keeps the folder of a resumable stage (same key), so its checkpoints are still there
        resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
        say(f"finetune: {'resuming' if resume else 'starting'} {objective} fine-tuning of {base['checkpoint']} "
            f"in {cfg.finetune.precision}")
        info = finetune(_finetune_config(cfg, base, st.dir, resume, device), defaults=checkpoint_defaults(cfg))
        man = json.loads((st.dir / "manifest.json").read_text())
        return st.finish(device, checkpoint=info["checkpoint"], objective=objective, steps=info["steps"],
                         images_per_s=info["images_per_s"], trainable_params=man.get("trainable_params"),
                         total_params=man.get("total_params"), epoch_means=info["epoch_means"])

    return st.run(device, body, note=lambda r: f" ({r['checkpoint']})")


def checkpoint_defaults(cfg: DistillConfig) -> dict:
    """What the run samples and evaluates with, recorded in its checkpoints for later `sample` / `ablation`
    runs (sampling settings the config leaves null stay the base's)."""
    sample = {k: getattr(cfg.sample, k) for k in CHECKPOINT_SETTINGS if getattr(cfg.sample, k) is not None}
    return {"sample": sample, "evaluate": {"protocol": cfg.evaluate.protocol}}


def _finetune_config(cfg: DistillConfig, base: dict, out: Path, resume: bool, device: torch.device,
                     classes: list[int] | None = None) -> FinetuneConfig:
    return FinetuneConfig(**to_dict(cfg.finetune), classes=classes, ckpt=base["checkpoint"], data=cfg.data,
                          out=str(out), codec=base.get("codec"), size=cfg.size, seed=cfg.seed, device=str(device),
                          resume=resume, overwrite=not resume)


def phase_groups(num_classes: int, phases: int) -> list[list[int]]:
    """Contiguous groups of labels, as even as possible (100 classes, 5 phases: 0-19, 20-39, ...)."""
    if phases > num_classes:
        raise UserError(f"phases={phases} is more than the dataset's {num_classes} classes; use at most {num_classes}")
    cuts = [round(i * num_classes / phases) for i in range(phases + 1)]
    return [list(range(a, b)) for a, b in zip(cuts, cuts[1:])]


def _finetune_phases(st: StageRun, cfg: DistillConfig, base: dict, phases: int, device: torch.device) -> dict:
    """One fine-tuning per group of classes, in RUN/finetune/phase<P>/; a finished phase writes
    phase.json and is skipped on resume, an unfinished one resumes from its latest checkpoint."""
    names = list(load_dataset(cfg.data, size=cfg.size).class_names)
    recs = []
    for p, group in enumerate(phase_groups(len(names), phases)):
        pdir = st.dir / f"phase{p}"
        if (pdir / "phase.json").exists():
            recs.append(json.loads((pdir / "phase.json").read_text()))
            continue
        resume = bool(ckpt.list_checkpoints(pdir))
        say(f"finetune: phase {p + 1}/{phases}, classes {group[0]}-{group[-1]}: "
            f"{'resuming' if resume else 'starting'} {cfg.finetune.objective} fine-tuning of {base['checkpoint']}")
        info = finetune(_finetune_config(cfg, base, pdir, resume, device, classes=group),
                        defaults=checkpoint_defaults(cfg))
        rec = {"phase": p, "classes": group, "checkpoint": info["checkpoint"], "steps": info["steps"],
               "images_per_s": info["images_per_s"], "epoch_means": info["epoch_means"]}
        write_json(pdir / "phase.json", rec)
        recs.append(rec)
    return st.finish(device, checkpoint=recs[0]["checkpoint"], objective=cfg.finetune.objective,
                     steps=sum(r["steps"] for r in recs), phases=recs, class_names=names)


def export_pretrained(base: dict, cfg: DistillConfig, out: Path, device: torch.device) -> Path:
    """Pretrained weights as one of our checkpoints, with the class map: a checkpoint of no trained tensors
    on top of its base (named and checked as a Difffit checkpoint's is), not a copy of the weights."""
    model, meta0 = load_base(base["checkpoint"], base.get("codec"))
    ds = load_dataset(cfg.data, size=cfg.size)
    codec = build_codec(base.get("codec") or "pixel", ds.channels, ds.size, device)
    f = cfg.finetune
    cmap = class_mapping(list(ds.class_names), model, meta0, f.class_map, f.synsets, cfg.data)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=cmap, image_size=ds.size, channels=ds.channels, data=cfg.data,
                               extra={"base": base["checkpoint"], "pixel": isinstance(codec, PixelCodec)},
                               formulation=meta0.formulation if meta0 is not None else "ddpm",
                               base={**ckpt.identity(base["checkpoint"]), "trained": []},
                               defaults=merge_defaults(ckpt.base_defaults(base["checkpoint"]),
                                                       checkpoint_defaults(cfg), model.in_channels))
    path = ckpt.ckpt_path(out, 0)
    ckpt.save(path, model, model, meta)
    return path
