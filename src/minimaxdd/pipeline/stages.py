"""The stages of `distill`, in order, and their bookkeeping (RUN/<stage>/stage.json).

    base       train a diffusion model from scratch, or point at pretrained weights
    finetune   Difffit + the Minimax criteria (or another Table-5 objective; "none" skips it)
    choose     guidance scale / steps chosen on a validation split of the training set (pipeline.choice)
    sample     IPC images per class (the largest IPC once; smaller IPCs are its per-class prefixes,
               which per-image seeds make identical to sampling them separately)
    extras     optional rows beside ours, each with its control, when `extras` asks (pipeline.extras)
    baselines  random, herding, k-center (and DM if asked) at each IPC
    evaluate   every set with every classifier, plus the full training set (with evaluate.soft_labels, every
               set under the soft-label protocol too, in rows of their own)
    metrics    MMD, FID, precision / recall / coverage, ... of each set at the largest IPC, t-SNE
    report     RUN/results.json, RUN/report.md and its figures (pipeline.report)

Each stage writes into RUN/<stage>/ and records RUN/<stage>/stage.json: a key (a hash of the
stage's config and of the keys of the stages it reads), the config, wall time and peak memory.
A stage whose stage.json holds the same key is skipped; a changed config reruns that stage and,
through the keys, everything that reads it. An interrupted stage resumes: training and
fine-tuning from their latest checkpoint, baselines and evaluation item by item (each item is
written atomically with its own key).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from minimaxdd.baselines.distribution_matching import DMConfig
from minimaxdd.baselines.registry import METHODS as SELECTIONS
from minimaxdd.baselines.registry import select
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.grid import save_grid
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet, load_synthetic, write_synthetic
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec, build_codec
from minimaxdd.diffusion.generation import CHECKPOINT_SETTINGS, SampleConfig, sample_checkpoint
from minimaxdd.errors import UserError
from minimaxdd.evaluation import metrics, train_test
from minimaxdd.evaluation.protocols import SOFT_SUFFIX, get_protocol
from minimaxdd.evaluation.reference_classifier import generation_accuracy, teacher_classifier
from minimaxdd.files import manifest, write_json
from minimaxdd.pipeline.config import NO_FINETUNING, DistillConfig, method_name
from minimaxdd.precision import resolve_precision
from minimaxdd.settings import to_dict
from minimaxdd.training.finetune import FinetuneConfig, class_mapping, finetune, load_base, merge_defaults
from minimaxdd.training.loop import TrainConfig
from minimaxdd.training.scratch import train_from_scratch as train

STAGES = ("base", "finetune", "choose", "sample", "extras", "baselines", "evaluate", "metrics", "report")


def key_of(*parts: Any) -> str:
    """A short hash of JSON-able parts: a stage's (or a row's) identity."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def precision_part(precision: str) -> list:
    """A precision as a stage key part: absent for bf16, which every run before `auto` used, so their keys hold."""
    return [("precision", precision)] if precision != "bf16" else []


def peak_memory_mb(device: torch.device) -> dict:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class Stage:
    """RUN/<name>/stage.json: {key, done, config, time_s, ...}."""

    def __init__(self, run: Path, name: str, key: str, config: Any, force: bool):
        self.dir = run / name
        self.name, self.key, self.config = name, key, config
        self.file = self.dir / "stage.json"
        old = json.loads(self.file.read_text()) if self.file.exists() else None
        self.same = old is not None and old.get("key") == key and not force
        self.done = self.same and bool(old.get("done"))
        self.resumable = self.same and not old.get("done")
        self.record = old if self.done else None

    def begin(self, device: torch.device) -> None:
        if not self.same and self.dir.exists():
            shutil.rmtree(self.dir)     # another config (or --from-stage): start this stage afresh
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.file, {"key": self.key, "done": False, "config": self.config})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.t0 = time.time()

    def finish(self, device: torch.device, **info: Any) -> dict:
        self.record = {"key": self.key, "done": True, "config": self.config, "time_s": round(time.time() - self.t0, 2),
                       **peak_memory_mb(device), **info}
        write_json(self.file, self.record)
        return self.record


def say(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


def epochs_for(cfg: DistillConfig, ipc: int) -> int | None:
    """evaluate.epochs at one IPC: null (the protocol's), an int, or {"10": 300, "50": 100} by IPC."""
    spec = cfg.evaluate.epochs
    if isinstance(spec, dict):
        return spec.get(str(ipc))
    return spec


# ---------------------------------------------------------------------------------------------
# base and fine-tuning


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
        st = Stage(run, "base", key_of("pretrained", str(p.resolve()), stat, b.codec), to_dict(b), force)
        if st.done:
            return st.record
        st.begin(device)
        return st.finish(device, checkpoint=str(p), codec=b.codec, pretrained=True)
    tcfg = {**to_dict(b.train), "data": cfg.data, "size": cfg.size, "seed": cfg.seed}
    keyed = {k: v for k, v in tcfg.items() if k != "augment" or v}     # absent when off: older keys hold
    st = Stage(run, "base", key_of("train", keyed), tcfg, force)
    if st.done:
        say(f"base: done ({st.record['checkpoint']}), skipped")
        return st.record
    resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
    st.begin(device)
    say(f"base: {'resuming' if resume else 'training'} {b.train.model} from scratch on {cfg.data} "
        f"in {b.train.precision}")
    info = train(TrainConfig(**tcfg, out=str(st.dir), device=str(device), resume=resume, overwrite=not resume))
    return st.finish(device, checkpoint=info["checkpoint"], codec=None, pretrained=False,
                     steps=info["steps"], images_per_s=info["images_per_s"], stopped=info["stopped"])


def stage_finetune(run: Path, cfg: DistillConfig, base: dict, force: bool, device: torch.device) -> dict:
    """Fine-tune the base with the configured objective (in phases if asked), or pass the base through."""
    f = to_dict(cfg.finetune)
    objective = cfg.finetune.objective
    phases = cfg.phases if objective != NO_FINETUNING else 1
    key = key_of(base["key"], f, cfg.data, cfg.size, cfg.seed, *([phases] if phases > 1 else []))
    st = Stage(run, "finetune", key, {**f, "phases": phases} if phases > 1 else f, force)
    if st.done:
        say(f"finetune: done ({st.record['checkpoint']}), skipped")
        return st.record
    if objective == NO_FINETUNING:
        st.begin(device)
        if not base.get("pretrained"):
            return st.finish(device, checkpoint=base["checkpoint"], objective=NO_FINETUNING)
        path = export_pretrained(base, cfg, st.dir, device)  # pretrained weights in our format, with the class map
        return st.finish(device, checkpoint=str(path), objective=NO_FINETUNING)
    if phases > 1:
        return _finetune_phases(st, cfg, base, phases, device)
    resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
    st.begin(device)
    say(f"finetune: {'resuming' if resume else 'starting'} {objective} fine-tuning of {base['checkpoint']} "
        f"in {cfg.finetune.precision}")
    info = finetune(_finetune_config(cfg, base, st.dir, resume, device), defaults=checkpoint_defaults(cfg))
    man = json.loads((st.dir / "manifest.json").read_text())
    return st.finish(device, checkpoint=info["checkpoint"], objective=objective, steps=info["steps"],
                     images_per_s=info["images_per_s"], trainable_params=man.get("trainable_params"),
                     total_params=man.get("total_params"), epoch_means=info["epoch_means"])


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


def _finetune_phases(st: Stage, cfg: DistillConfig, base: dict, phases: int, device: torch.device) -> dict:
    """One fine-tuning per group of classes, in RUN/finetune/phase<P>/; a finished phase writes
    phase.json and is skipped on resume, an unfinished one resumes from its latest checkpoint."""
    st.begin(device)
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


# ---------------------------------------------------------------------------------------------
# sampling


def _sample_config(cfg: DistillConfig, checkpoint: str, out: Path, device: torch.device) -> SampleConfig:
    return SampleConfig(**to_dict(cfg.sample), ckpt=checkpoint, out=str(out), ipc=max(cfg.ipc), seed=cfg.seed,
                        device=str(device))


def stage_sample(run: Path, cfg: DistillConfig, ft: dict, force: bool, device: torch.device,
                 chosen: dict | None = None, by_ipc: dict | None = None) -> dict:
    """The largest IPC once; each IPC's set is its per-class prefix, written in the synthetic-set format.
    `chosen`: sampling settings the `choose` stage picked, over sample's; `by_ipc` ({"10": settings, ...},
    choose.per_ipc): each IPC's own pick; IPCs that share a pick are sampled together as above."""
    if by_ipc and len({json.dumps(v, sort_keys=True) for v in by_ipc.values()}) > 1:
        return _sample_per_ipc(run, cfg, ft, force, device, by_ipc)
    if chosen:
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **chosen))
    s = to_dict(cfg.sample)
    ipcs = cfg.ipc
    st = Stage(run, "sample", key_of(ft["key"], s, ipcs, cfg.seed), {**s, "ipc": ipcs}, force)
    if st.done:
        say("sample: done, skipped")
        return st.record
    st.begin(device)
    sets, info, full = _sample_sets(st, cfg, ft, device)
    save_grid(full.images, full.labels, st.dir / "grid.png", per_row=min(10, max(ipcs)))
    return st.finish(device, sets=sets, **info)


def per_class_prefix(s: SyntheticSet, k: int) -> SyntheticSet:
    """The first k images of each class of s (its class-major order kept)."""
    keep = torch.cat([(s.labels == c).nonzero().squeeze(1)[:k] for c in range(len(s.class_names))])
    return SyntheticSet(s.images[keep], s.labels[keep], s.class_names)


def _sample_sets(st: Stage, cfg: DistillConfig, ft: dict, device: torch.device
                 ) -> tuple[dict[str, str], dict, SyntheticSet]:
    """max(cfg.ipc) images per class with cfg.sample, and each of cfg.ipc's per-class prefix written to
    st.dir/ipc<k>: ({ipc: path}, the sampling info, the whole sample)."""
    say(f"sample: {max(cfg.ipc)} images per class in {cfg.sample.precision}")
    if ft.get("phases"):
        full, info = _sample_phases(cfg, ft, st.dir, device)
    else:
        full, info = sample_checkpoint(_sample_config(cfg, ft["checkpoint"], st.dir, device))
    s, sets = to_dict(cfg.sample), {}
    for k in cfg.ipc:
        man = manifest({**s, "ipc": k}, cfg.seed, time.time() - st.t0, **info)
        path = write_synthetic(st.dir / f"ipc{k}", per_class_prefix(full, k), man, overwrite=True)
        sets[str(k)] = str(path)
    say(f"sample: {info.get('sampler', '')}, {info['sample_time_s']:.0f} s")
    return sets, info, full


def _sample_per_ipc(run: Path, cfg: DistillConfig, ft: dict, force: bool, device: torch.device,
                    by_ipc: dict) -> dict:
    """Each group of IPCs that share a choice sampled with it (the choices differ between groups)."""
    per = {str(k): to_dict(dataclasses.replace(cfg.sample, **by_ipc[str(k)])) for k in cfg.ipc}
    st = Stage(run, "sample", key_of(ft["key"], per, cfg.ipc, cfg.seed), {"by_ipc": per, "ipc": cfg.ipc}, force)
    if st.done:
        say("sample: done, skipped")
        return st.record
    st.begin(device)
    groups: dict[str, list[int]] = {}
    for k in cfg.ipc:
        groups.setdefault(json.dumps(by_ipc[str(k)], sort_keys=True), []).append(k)
    sets, infos, t = {}, {}, 0.0
    for choice, ks in groups.items():
        say(f"sample: IPC {', '.join(map(str, ks))} with {choice}")
        sub = dataclasses.replace(cfg, ipc=ks, sample=dataclasses.replace(cfg.sample, **json.loads(choice)))
        got, info, full = _sample_sets(st, sub, ft, device)
        sets.update(got)
        infos.update({k: info for k in map(str, ks)})
        t += info["sample_time_s"]
        save_grid(full.images, full.labels, st.dir / f"grid-ipc{max(ks)}.png", per_row=min(10, max(ks)))
    n = sum(i["num_images"] for i in {id(i): i for i in infos.values()}.values())
    return st.finish(device, sets=sets, by_ipc=infos, sample_time_s=round(t, 3), num_images=n,
                     images_per_s=round(n / max(t, 1e-9), 3))


def _sample_phases(cfg: DistillConfig, ft: dict, out: Path, device: torch.device) -> tuple[SyntheticSet, dict]:
    """Each phase's classes from that phase's checkpoint, relabelled into the whole class list."""
    names = ft["class_names"]
    images, labels, class_map, t, steps = [], [], [None] * len(names), 0.0, []
    for rec in ft["phases"]:
        say(f"sample: phase {rec['phase'] + 1}/{len(ft['phases'])} from {rec['checkpoint']}")
        part, info = sample_checkpoint(_sample_config(cfg, rec["checkpoint"], out, device))
        glob = torch.tensor([names.index(n) for n in part.class_names])
        images.append(part.images)
        labels.append(glob[part.labels])
        for local, g in enumerate(glob.tolist()):
            class_map[g] = info["class_map"][local]
        t += info["sample_time_s"]
        steps.append(info["checkpoint_step"])
    y = torch.cat(labels)
    order = torch.sort(y, stable=True).indices       # class-major, as a one-model run writes it
    full = SyntheticSet(torch.cat(images)[order], y[order], names)
    info = {"sample_time_s": round(t, 3), "images_per_s": round(len(y) / max(t, 1e-9), 3),
            "checkpoint": [r["checkpoint"] for r in ft["phases"]], "checkpoint_step": steps, "class_map": class_map,
            "num_images": len(y)}
    return full, info


# ---------------------------------------------------------------------------------------------
# baselines, evaluation, diagnostics


def stage_baselines(run: Path, cfg: DistillConfig, force: bool, device: torch.device) -> dict:
    """Each baseline at each IPC, item by item (an item present on disk is complete)."""
    ev = cfg.evaluate
    conf = {"baselines": ev.baselines, "dm": to_dict(ev.dm), "ipc": cfg.ipc}
    st = Stage(run, "baselines", key_of(conf, cfg.data, cfg.size, cfg.seed), conf, force)
    if st.done:
        say("baselines: done, skipped")
        return st.record
    st.begin(device)
    ds = load_dataset(cfg.data, size=cfg.size)
    sets = {}
    for method in ev.baselines:
        for k in cfg.ipc:
            out = st.dir / f"{method}-ipc{k}"
            if not (out / "data.pt").exists():   # items written atomically: present means complete
                say(f"baselines: {method} at IPC {k}")
                t0 = time.time()
                s = select(ds, method, k, cfg.seed, device, dm=DMConfig(**to_dict(ev.dm)),
                           state_path=st.dir / f"{method}-ipc{k}.dm-state.pt")
                write_synthetic(out, s, manifest(conf, cfg.seed, time.time() - t0, method=method, ipc=k),
                                overwrite=True)
            sets[f"{method}:{k}"] = str(out)
    return st.finish(device, sets=sets)


def _eval_items(cfg: DistillConfig, sample: dict | None, baselines: dict | None,
                extras: dict | None = None) -> list[tuple]:
    """(method, ipc, key of the stage that made it, path) of every set to evaluate; an optional row that a
    baseline already gives (the medoids) is evaluated once."""
    ours = method_name(cfg)
    items = [(ours, k, sample["key"], sample["sets"][str(k)]) for k in cfg.ipc] if sample else []
    if baselines:
        items += [(m, k, baselines["key"], baselines["sets"][f"{m}:{k}"])
                  for m in cfg.evaluate.baselines for k in cfg.ipc]
    if extras:
        seen = {(m, k) for m, k, _, _ in items}
        items += [(m, k, extras["key"], extras["sets"][f"{m}:{k}"])
                  for m in extras["methods"] for k in cfg.ipc if (m, k) not in seen]
    return items


def eval_protocols(cfg: DistillConfig) -> list[str]:
    """The run's protocol and, with `evaluate.soft_labels`, its soft-label variant beside it."""
    ev = cfg.evaluate
    soft = get_protocol(ev.protocol).hard_name + SOFT_SUFFIX
    return [ev.protocol, soft] if ev.soft_labels and soft != ev.protocol else [ev.protocol]


def _row_file(d: Path, cfg: DistillConfig, method: str, k: int | None, model: str, protocol: str) -> Path:
    """RUN/evaluate/<method>-<ipc>-<model>[-<protocol>].json (the run's own protocol unnamed, as before)."""
    tail = "" if protocol == cfg.evaluate.protocol else f"-{protocol}"
    return d / f"{method}-{'full' if k is None else f'ipc{k}'}-{model}{tail}.json"


def _row_key(cfg: DistillConfig, src_key: str, method: str, k: int | None, model: str, protocol: str,
             epochs: int | None) -> str:
    ev = cfg.evaluate
    extra = [("image_size", ev.image_size)] if ev.image_size else []   # absent when unset: older keys hold
    if get_protocol(protocol).soft:
        extra.append(("teacher_epochs", ev.teacher_epochs))
    return key_of(src_key, method, k, model, protocol, epochs, ev.repeats, ev.precision, cfg.seed, *extra)


def stage_evaluate(run: Path, cfg: DistillConfig, sample: dict | None, baselines: dict | None, force: bool,
                   device: torch.device, full: bool = True, write_results: bool = True,
                   extras: dict | None = None, set_aside_stale: bool = True) -> list[dict]:
    """One JSON per (set, model, protocol) row in RUN/evaluate/, each with its own key, so an interrupted or
    partly changed evaluation redoes only the rows it must. `sample` / `baselines` / `extras` None: no such rows;
    the extras' rows carry `"optional": true`.
    Soft-label rows (`evaluate.soft_labels`) come beside the hard ones, every set under both; the full-data
    row is hard-label only. `write_results`: RUN/results.json (a run's own evaluation, which its report reads).
    `set_aside_stale`: row files this config no longer asks for are first moved to RUN/evaluate/stale/ (off
    where several configs share one RUN/evaluate/, as a study's random rows do)."""
    ev = cfg.evaluate
    d = run / "evaluate"
    if force and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data, size=cfg.size)
    stats = channel_stats(ds.x_train)
    items = _eval_items(cfg, sample, baselines, extras)
    optional = set(extras["methods"]) - set(cfg.evaluate.baselines) if extras else set()
    # sets of generated images (ours, the extras built from samples) get a generation accuracy; the extras'
    # real-image controls (medoids) are selections and get none
    generated = {method_name(cfg)} | (optional - set(SELECTIONS))
    plan = {(model, protocol): _eval_todo(cfg, items, ds.fingerprint(), full, protocol)
            for model, protocol in itertools.product(ev.models, eval_protocols(cfg))}
    if set_aside_stale:
        _set_aside_stale(d, {_row_file(d, cfg, m, k, model, protocol)
                             for (model, protocol), todo in plan.items() for m, k, _, _ in todo})
    rows = []
    for (model, protocol), todo in plan.items():
        hard = not get_protocol(protocol).soft
        teacher = None
        for method, k, src_key, path in todo:
            epochs = ev.full_epochs if method == "full" else epochs_for(cfg, k)
            rk = _row_key(cfg, src_key, method, k, model, protocol, epochs)
            f = _row_file(d, cfg, method, k, model, protocol)
            if f.exists() and json.loads(f.read_text()).get("key") == rk:
                rows.append(json.loads(f.read_text()))
                continue
            if not hard and teacher is None:
                say(f"evaluate: the {protocol} teacher, {model} on the full training set (cached)")
                teacher = teacher_classifier(ds, model, device, ev.image_size, ev.teacher_epochs, ev.precision)
            say(f"evaluate: {method} {'full data' if k is None else f'IPC {k}'} with {model}, {protocol} "
                f"({ev.repeats} repeats, {ev.precision})")
            row = _evaluate_row(cfg, ds, stats, method, k, path, model, epochs, device, protocol, teacher,
                                method in generated)
            row["key"] = rk
            if method in optional:
                row["optional"] = True
            write_json(f, row)
            rows.append(row)
    if write_results:
        write_json(run / "results.json", [{k: v for k, v in r.items() if k not in ("key", "per_class")} for r in rows])
    return rows


def _eval_todo(cfg: DistillConfig, items: list[tuple], data_key: str, full: bool, protocol: str) -> list[tuple]:
    """The rows of one (classifier, protocol) table: every set, and the full-data row under a hard protocol."""
    if cfg.evaluate.full_epochs and full and not get_protocol(protocol).soft:
        return [*items, ("full", None, data_key, None)]
    return items


def _set_aside_stale(d: Path, expected: set[Path]) -> None:
    """Move RUN/evaluate/*.json files the run's config no longer asks for (a dropped IPC, baseline, extras row
    or classifier) into RUN/evaluate/stale/, so the report shows only this config's rows and nothing is lost.
    A row set aside under a name stale/ already holds (a different row) gets a number: NAME.1.json, NAME.2.json."""
    stale = [f for f in sorted(d.glob("*.json")) if f not in expected]
    if not stale:
        return
    (d / "stale").mkdir(exist_ok=True)
    for f in stale:
        dest, n = d / "stale" / f.name, 0
        while dest.exists() and dest.read_bytes() != f.read_bytes():
            n += 1
            dest = d / "stale" / f"{f.stem}.{n}.json"
        f.replace(dest)
    say(f"evaluate: {len(stale)} row(s) of an earlier config moved to {d / 'stale'}: "
        f"{', '.join(f.name for f in stale)}")


def _evaluate_row(cfg: DistillConfig, ds: Any, stats: tuple, method: str, k: int | None, path: str | None,
                  model: str, epochs: int | None, device: torch.device, protocol_name: str,
                  teacher: torch.nn.Module | None, generated: bool = False) -> dict:
    """Train `repeats` classifiers on one set, test them on the real test set: one results row; a `generated`
    set's row also has its generation accuracy (evaluate.generation_accuracy, hard-label protocols)."""
    ev = cfg.evaluate
    protocol = get_protocol(protocol_name)
    if k is None:
        x, y = ds.x_train, ds.y_train
    else:
        s = load_synthetic(path)
        x, y = s.images, s.labels
    # compile is not part of the row's key: it changes how the classifiers train, not what
    # (the same weights to 1e-4, tests/evaluation)
    r = train_test.evaluate_set(x, y, ds.x_test, ds.y_test, ds.num_classes, model, protocol, ev.repeats, epochs,
                                cfg.seed, device, ev.precision, stats=stats, compile=ev.compile,
                                image_size=ev.image_size, teacher=teacher)
    row = {"method": method, "ipc": k, "model": model, "protocol": protocol.name, "mean": r.mean,
           "std": r.std, "runs": r.runs, "epochs": r.epochs, "per_class": r.per_class,
           "time_s": r.train_time_s, "num_images": r.num_images, "set": path, "image_size": r.image_size}
    if k is not None and generated and ev.generation_accuracy and not protocol.soft:
        g = generation_accuracy(ds, x, y, device=device)
        row["generation_accuracy"] = g["generation_accuracy"]
        row["reference_test_accuracy"] = g["reference_test_accuracy"]
    return row


def stage_metrics(run: Path, cfg: DistillConfig, sample: dict, baselines: dict, rows: list[dict], force: bool,
                  device: torch.device) -> dict | None:
    """Diagnostics (evaluation.metrics) of every set at the largest IPC, with their accuracies, and a t-SNE."""
    if not cfg.evaluate.metrics:
        return None
    k = max(cfg.ipc)
    # accuracies of the run's own protocol; the optional rows (extras) are not diagnosed
    rows = [r for r in rows if r["protocol"] == cfg.evaluate.protocol and not r.get("optional")]
    sets = {r["method"]: r["set"] for r in rows if r["ipc"] == k and r["set"]}
    # the reference classifier's precision (the features')
    key = key_of(sample["key"], baselines["key"], sorted(sets), cfg.seed,
                 *precision_part(resolve_precision("auto", device)))
    out = run / "metrics.json"
    if out.exists() and not force and json.loads(out.read_text()).get("key") == key:
        say("metrics: done, skipped")
        return json.loads(out.read_text())
    say(f"metrics: {', '.join(sets)} at IPC {k}")
    (run / "figures").mkdir(exist_ok=True)
    m = metrics.run_metrics(list(sets.values()), cfg.data, size=cfg.size, device=str(device), seed=cfg.seed,
                    tsne=str(run / "figures" / "tsne.png"))
    named = {}
    for method, path in sets.items():
        entry = m["sets"][Path(path).name]
        accs = [r for r in rows if r["method"] == method and r["ipc"] == k]
        entry["accuracy"] = ({"mean": accs[0]["mean"], "std": accs[0]["std"], "model": accs[0]["model"]}
                             if accs else None)
        named[f"{method} (IPC {k})"] = entry
    m["sets"], m["key"] = named, key
    write_json(out, m)
    return m
