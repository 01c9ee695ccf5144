"""`minimaxdd distill`: from a dataset to a distilled set and an honest report, in stages.

    base       train a diffusion model from scratch, or point at pretrained weights
    finetune   Difffit + the Minimax criteria (or another Table-5 objective; "none" skips it)
    sample     IPC images per class (the largest IPC once; smaller IPCs are its per-class prefixes,
               which per-image seeds make identical to sampling them separately)
    baselines  random, herding, k-center (and DM if asked) at each IPC
    evaluate   every set with every classifier, plus the full training set, 3 repeats
    metrics    MMD, FID, precision / recall / coverage, ... of each set at the largest IPC, t-SNE
    report     RUN/results.json, RUN/report.md and its figures

Each stage writes into RUN/<stage>/ and records RUN/<stage>/stage.json: a key (a hash of the
stage's config and of the keys of the stages it reads), the config, wall time and peak memory.
A stage whose stage.json holds the same key is skipped; a changed config reruns that stage and,
through the keys, everything that reads it. An interrupted stage resumes: training and
fine-tuning from their latest checkpoint, baselines and evaluation item by item (each item is
written atomically with its own key). `--from-stage S` reruns S and every stage after it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import resource
import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.files import manifest, write_json
from minimaxdd.runtime import pick_device

STAGES = ("base", "finetune", "sample", "baselines", "evaluate", "metrics", "report")

DEFAULTS: dict[str, Any] = {
    "data": None,
    "size": None,
    "seed": 0,
    "device": "auto",
    "ipc": [10],
    # fine-tune one model per contiguous group of classes and sample each group from its own model
    # (the paper's ImageNet-100: 5 phases of 20 classes); 1 = one model for all classes
    "phases": 1,
    # pretrained: a checkpoint path (ours, the official DiT .pt, or a diffusers DiT folder); else train
    "base": {"pretrained": None, "codec": None, "weights_help": None, "train": {}},
    "finetune": {"objective": "minimax"},
    "sample": {"sampler": "ddpm", "steps": 50, "cfg": 1.0, "batch_size": 64, "precision": "fp32"},
    "evaluate": {"models": ["convnet3"], "protocol": "dc", "repeats": 3, "epochs": None, "precision": "bf16",
                 "baselines": ["random", "herding", "kcenter"], "full_epochs": 50, "generation_accuracy": True,
                 "dm": {}, "metrics": True, "compile": False},
}


# ---------------------------------------------------------------------------------------------
# config: preset + overrides


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base` (build_config checks the keys)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str]) -> dict:
    """`--set a.b=v` pairs as a nested dict; v is read as JSON when it parses (10, null, [10,50], true)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set takes KEY=VALUE (e.g. finetune.steps=200), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        d = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = val
    return out


def parse_ipcs(v) -> list[int]:
    if isinstance(v, int):
        v = [v]
    if isinstance(v, str):
        try:
            v = [int(s) for s in v.split(",") if s.strip()]
        except ValueError as e:
            raise UserError(f"--ipc takes comma-separated integers (e.g. 10,50), got {v!r}") from e
    ipcs = sorted({int(i) for i in v})
    if not ipcs or ipcs[0] < 1:
        raise UserError(f"images per class must be positive integers, got {v!r}")
    return ipcs


def _check_keys(d: dict, allowed, where: str) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise UserError(f"unknown {where} setting(s) {bad}; known: {sorted(allowed)}")


def build_config(preset: dict | None, overrides: dict) -> dict:
    """The run's full config: defaults <- preset <- overrides, checked against each stage's fields."""
    from minimaxdd.baselines.registry import METHODS
    from minimaxdd.diffusion.generation import SampleConfig
    from minimaxdd.training.finetune import FinetuneConfig
    from minimaxdd.training.loop import TrainConfig
    from minimaxdd.training.minimax import OBJECTIVES

    cfg = DEFAULTS
    for layer in (preset or {}, overrides):
        _check_keys(layer, [*DEFAULTS, "description"], "distill")
        for sec in ("base", "evaluate"):    # sample and finetune are checked against their configs below
            if isinstance(layer.get(sec), dict):
                _check_keys(layer[sec], DEFAULTS[sec], sec)
        cfg = merge(cfg, layer)
    cfg.pop("description", None)
    if not cfg["data"]:
        raise UserError("distill needs a dataset: --data SPEC (or a --preset that sets it)")
    cfg["ipc"] = parse_ipcs(cfg["ipc"])
    if not isinstance(cfg["phases"], int) or isinstance(cfg["phases"], bool) or cfg["phases"] < 1:
        raise UserError(f"phases must be a positive integer (classes are split into that many fine-tuning "
                        f"groups), got {cfg['phases']!r}")
    reserved = {"data", "out", "seed", "device", "size", "resume", "overwrite"}
    train_ok = {f.name for f in fields(TrainConfig)} - reserved
    _check_keys(cfg["base"]["train"], train_ok, "base.train")
    if cfg["finetune"] is not None:
        _check_keys(cfg["finetune"], {f.name for f in fields(FinetuneConfig)} - reserved - {"ckpt", "codec", "classes"},
                    "finetune")
        obj = cfg["finetune"].get("objective", "minimax")
        if obj != "none" and obj not in OBJECTIVES:
            raise UserError(f"unknown objective {obj!r}; choose none or one of {', '.join(OBJECTIVES)}")
    _check_keys(cfg["sample"], {f.name for f in fields(SampleConfig)} - reserved - {"ckpt", "ipc", "classes"}, "sample")
    ev = cfg["evaluate"]
    bad = [m for m in ev["baselines"] if m not in METHODS]
    if bad:
        raise UserError(f"unknown baseline(s) {bad}; choose from {sorted(METHODS)}")
    from minimaxdd.evaluation.classifiers import MODELS
    from minimaxdd.evaluation.protocols import PROTOCOLS
    bad = [m for m in ev["models"] if m not in MODELS]
    if bad:
        raise UserError(f"unknown evaluation model(s) {bad}; choose from {sorted(MODELS)}")
    if ev["protocol"] not in PROTOCOLS:
        raise UserError(f"unknown protocol {ev['protocol']!r}; choose from {sorted(PROTOCOLS)}")
    return cfg


def load_distill_preset(name: str) -> dict:
    from minimaxdd.pipeline.presets import load_preset_file

    d = load_preset_file(name)
    if d.get("stage") != "distill":
        raise UserError(f"preset {name!r} is for `{d.get('stage')}`, not `distill`; see `minimaxdd presets`")
    return {**d["config"], "description": d.get("description", "")}


# ---------------------------------------------------------------------------------------------
# stage bookkeeping


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    def finish(self, device: torch.device, **info) -> dict:
        self.record = {"key": self.key, "done": True, "config": self.config, "time_s": round(time.time() - self.t0, 2),
                       **peak_memory_mb(device), **info}
        write_json(self.file, self.record)
        return self.record


def say(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# stages


def stage_base(run: Path, cfg: dict, force: bool, device: torch.device) -> dict:
    from minimaxdd.training.loop import TrainConfig
    from minimaxdd.training.scratch import run as train

    b = cfg["base"]
    if b["pretrained"]:
        p = Path(b["pretrained"]).expanduser()
        if not p.exists():
            help_ = b.get("weights_help") or "download the weights once and give their local path"
            raise UserError(f"pretrained weights {p} not found: {help_}; or set base.pretrained=PATH")
        codec = b["codec"] or ""
        if codec.startswith("vae:") and not Path(codec[4:]).expanduser().exists():
            help_ = b.get("weights_help") or "download the VAE once (a diffusers AutoencoderKL folder) and give its path"
            raise UserError(f"VAE folder {codec[4:]} not found: {help_}; or set base.codec=vae:DIR")
        stat = (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else sorted(x.name for x in p.iterdir())
        st = Stage(run, "base", key_of("pretrained", str(p.resolve()), stat, b["codec"]), b, force)
        if st.done:
            return st.record
        st.begin(device)
        return st.finish(device, checkpoint=str(p), codec=b["codec"], pretrained=True)

    tcfg = {**b["train"], "data": cfg["data"], "size": cfg["size"], "seed": cfg["seed"]}
    st = Stage(run, "base", key_of("train", tcfg), tcfg, force)
    if st.done:
        say(f"base: done ({st.record['checkpoint']}), skipped")
        return st.record
    resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
    st.begin(device)
    say(f"base: {'resuming' if resume else 'training'} {tcfg.get('model', 'dit-t/2')} from scratch on {cfg['data']}")
    info = train(TrainConfig(**tcfg, out=str(st.dir), device=str(device), resume=resume, overwrite=not resume))
    return st.finish(device, checkpoint=info["checkpoint"], codec=None, pretrained=False,
                     steps=info["steps"], images_per_s=info["images_per_s"], stopped=info["stopped"])


def stage_finetune(run: Path, cfg: dict, base: dict, force: bool, device: torch.device) -> dict:
    from minimaxdd.training.finetune import run as finetune

    f = cfg["finetune"] or {"objective": "none"}
    objective = f.get("objective", "minimax")
    phases = cfg.get("phases", 1) if objective != "none" else 1
    key = key_of(base["key"], f, cfg["data"], cfg["size"], cfg["seed"], *([phases] if phases > 1 else []))
    st = Stage(run, "finetune", key, {**f, "phases": phases} if phases > 1 else f, force)
    if st.done:
        say(f"finetune: done ({st.record['checkpoint']}), skipped")
        return st.record
    if objective == "none" and not base.get("pretrained"):
        st.begin(device)
        return st.finish(device, checkpoint=base["checkpoint"], objective="none")
    if objective == "none":           # pretrained weights unchanged, saved in our format with the class map
        st.begin(device)
        path = export_pretrained(base, cfg, st.dir, device)
        return st.finish(device, checkpoint=str(path), objective="none")
    if phases > 1:
        return _finetune_phases(st, cfg, f, base, phases, device)
    resume = st.resumable and bool(ckpt.list_checkpoints(st.dir))
    st.begin(device)
    say(f"finetune: {'resuming' if resume else 'starting'} {objective} fine-tuning of {base['checkpoint']}")
    info = finetune(_finetune_config(cfg, f, base, st.dir, resume, device))
    man = json.loads((st.dir / "manifest.json").read_text())
    return st.finish(device, checkpoint=info["checkpoint"], objective=objective, steps=info["steps"],
                     images_per_s=info["images_per_s"], trainable_params=man.get("trainable_params"),
                     total_params=man.get("total_params"), epoch_means=info["epoch_means"])


def _finetune_config(cfg: dict, f: dict, base: dict, out: Path, resume: bool, device: torch.device,
                     classes: list[int] | None = None):
    from minimaxdd.training.finetune import FinetuneConfig

    return FinetuneConfig(**f, classes=classes, ckpt=base["checkpoint"], data=cfg["data"], out=str(out),
                          codec=base.get("codec"), size=cfg["size"], seed=cfg["seed"], device=str(device),
                          resume=resume, overwrite=not resume)


def phase_groups(num_classes: int, phases: int) -> list[list[int]]:
    """Contiguous groups of labels, as even as possible (100 classes, 5 phases: 0-19, 20-39, ...)."""
    if phases > num_classes:
        raise UserError(f"phases={phases} is more than the dataset's {num_classes} classes; use at most {num_classes}")
    cuts = [round(i * num_classes / phases) for i in range(phases + 1)]
    return [list(range(a, b)) for a, b in zip(cuts, cuts[1:])]


def _finetune_phases(st: Stage, cfg: dict, f: dict, base: dict, phases: int, device: torch.device) -> dict:
    """One fine-tuning per group of classes, in RUN/finetune/phase<P>/; a finished phase writes
    phase.json and is skipped on resume, an unfinished one resumes from its latest checkpoint."""
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.training.finetune import run as finetune

    st.begin(device)
    names = list(load_dataset(cfg["data"], size=cfg["size"]).class_names)
    recs = []
    for p, group in enumerate(phase_groups(len(names), phases)):
        pdir = st.dir / f"phase{p}"
        if (pdir / "phase.json").exists():
            recs.append(json.loads((pdir / "phase.json").read_text()))
            continue
        resume = bool(ckpt.list_checkpoints(pdir))
        say(f"finetune: phase {p + 1}/{phases}, classes {group[0]}-{group[-1]}: "
            f"{'resuming' if resume else 'starting'} {f.get('objective', 'minimax')} fine-tuning of {base['checkpoint']}")
        info = finetune(_finetune_config(cfg, f, base, pdir, resume, device, classes=group))
        rec = {"phase": p, "classes": group, "checkpoint": info["checkpoint"], "steps": info["steps"],
               "images_per_s": info["images_per_s"], "epoch_means": info["epoch_means"]}
        write_json(pdir / "phase.json", rec)
        recs.append(rec)
    return st.finish(device, checkpoint=recs[0]["checkpoint"], objective=f.get("objective", "minimax"),
                     steps=sum(r["steps"] for r in recs), phases=recs, class_names=names)


def export_pretrained(base: dict, cfg: dict, out: Path, device: torch.device) -> Path:
    """Pretrained weights as one of our checkpoints (model = EMA = the weights), with the class map."""
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.diffusion.codecs import PixelCodec, build_codec
    from minimaxdd.training.finetune import class_mapping, load_base

    model, meta0 = load_base(base["checkpoint"], base.get("codec"))
    ds = load_dataset(cfg["data"], size=cfg["size"])
    codec = build_codec(base.get("codec") or "pixel", ds.channels, ds.size, device)
    f = cfg["finetune"] or {}
    cmap = class_mapping(list(ds.class_names), model, meta0, f.get("class_map"), f.get("synsets"), cfg["data"])
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(ds.class_names),
                               class_map=cmap, image_size=ds.size, channels=ds.channels, data=cfg["data"],
                               extra={"base": base["checkpoint"], "pixel": isinstance(codec, PixelCodec)})
    path = ckpt.ckpt_path(out, 0)
    ckpt.save(path, model, copy.deepcopy(model), meta)
    return path


def stage_sample(run: Path, cfg: dict, ft: dict, force: bool, device: torch.device) -> dict:
    from minimaxdd.data.grid import save_grid
    from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
    from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint

    s = cfg["sample"]
    ipcs = cfg["ipc"]
    st = Stage(run, "sample", key_of(ft["key"], s, ipcs, cfg["seed"]), {**s, "ipc": ipcs}, force)
    if st.done:
        say("sample: done, skipped")
        return st.record
    st.begin(device)
    say(f"sample: {max(ipcs)} images per class, {s.get('sampler', 'ddpm')} {s.get('steps', 50)} steps")
    if ft.get("phases"):
        full, info = _sample_phases(ft, s, st.dir, max(ipcs), cfg["seed"], device)
    else:
        sc = SampleConfig(**s, ckpt=ft["checkpoint"], out=str(st.dir), ipc=max(ipcs), seed=cfg["seed"],
                          device=str(device))
        full, info = sample_checkpoint(sc)
    sets = {}
    for k in ipcs:
        keep = torch.cat([(full.labels == c).nonzero().squeeze(1)[:k] for c in range(len(full.class_names))])
        sub = SyntheticSet(full.images[keep], full.labels[keep], full.class_names)
        path = write_synthetic(st.dir / f"ipc{k}", sub, manifest({**s, "ipc": k}, cfg["seed"], 0.0, **info),
                               overwrite=True)
        sets[str(k)] = str(path)
    save_grid(full.images, full.labels, st.dir / "grid.png", per_row=min(10, max(ipcs)))
    return st.finish(device, sets=sets, **info)


def _sample_phases(ft: dict, s: dict, out: Path, ipc: int, seed: int, device: torch.device):
    """Each phase's classes from that phase's checkpoint, relabelled into the whole class list."""
    from minimaxdd.data.synthetic import SyntheticSet
    from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint

    names = ft["class_names"]
    images, labels, class_map, t, steps = [], [], [None] * len(names), 0.0, []
    for rec in ft["phases"]:
        say(f"sample: phase {rec['phase'] + 1}/{len(ft['phases'])} from {rec['checkpoint']}")
        part, info = sample_checkpoint(SampleConfig(**s, ckpt=rec["checkpoint"], out=str(out), ipc=ipc, seed=seed,
                                                    device=str(device)))
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


def stage_baselines(run: Path, cfg: dict, force: bool, device: torch.device) -> dict:
    from minimaxdd.baselines.distribution_matching import DMConfig
    from minimaxdd.baselines.registry import select
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.data.synthetic import write_synthetic

    ev = cfg["evaluate"]
    conf = {"baselines": ev["baselines"], "dm": ev["dm"], "ipc": cfg["ipc"]}
    st = Stage(run, "baselines", key_of(conf, cfg["data"], cfg["size"], cfg["seed"]), conf, force)
    if st.done:
        say("baselines: done, skipped")
        return st.record
    st.begin(device)
    ds = load_dataset(cfg["data"], size=cfg["size"])
    sets = {}
    for method in ev["baselines"]:
        for k in cfg["ipc"]:
            out = st.dir / f"{method}-ipc{k}"
            if not (out / "data.pt").exists():   # items written atomically: present means complete
                say(f"baselines: {method} at IPC {k}")
                t0 = time.time()
                s = select(ds, method, k, cfg["seed"], device, dm=DMConfig(**ev["dm"]),
                           state_path=st.dir / f"{method}-ipc{k}.dm-state.pt")
                write_synthetic(out, s, manifest(conf, cfg["seed"], time.time() - t0, method=method, ipc=k),
                                overwrite=True)
            sets[f"{method}:{k}"] = str(out)
    return st.finish(device, sets=sets)


def stage_evaluate(run: Path, cfg: dict, sample: dict | None, baselines: dict | None, force: bool,
                   device: torch.device, full: bool = True, write_results: bool = True) -> list[dict]:
    """One JSON per (set, model) row in RUN/evaluate/, each with its own key, so an interrupted or
    partly changed evaluation redoes only the rows it must. `sample` / `baselines` None: no such rows."""
    from minimaxdd.data.dataset import channel_stats
    from minimaxdd.data.sources import load_dataset
    from minimaxdd.data.synthetic import load_synthetic
    from minimaxdd.evaluation.protocols import get_protocol
    from minimaxdd.evaluation.train_test import evaluate_set

    ev = cfg["evaluate"]
    d = run / "evaluate"
    if force and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg["data"], size=cfg["size"])
    stats = channel_stats(ds.x_train)
    protocol = get_protocol(ev["protocol"])
    ours = method_name(cfg)
    items = [(ours, k, sample["key"], sample["sets"][str(k)]) for k in cfg["ipc"]] if sample else []
    if baselines:
        items += [(m, k, baselines["key"], baselines["sets"][f"{m}:{k}"]) for m in ev["baselines"] for k in cfg["ipc"]]
    rows = []
    for model in ev["models"]:
        todo = [*items, ("full", None, ds.fingerprint(), None)] if ev["full_epochs"] and full else items
        for method, k, src_key, path in todo:
            epochs = ev["full_epochs"] if method == "full" else _epochs_for(ev["epochs"], k)
            rk = key_of(src_key, method, k, model, ev["protocol"], epochs, ev["repeats"], ev["precision"], cfg["seed"])
            f = d / f"{method}-{'full' if k is None else f'ipc{k}'}-{model}.json"
            if f.exists() and json.loads(f.read_text()).get("key") == rk:
                rows.append(json.loads(f.read_text()))
                continue
            say(f"evaluate: {method} {'full data' if k is None else f'IPC {k}'} with {model} "
                f"({ev['repeats']} repeats)")
            if k is None:
                x, y = ds.x_train, ds.y_train
            else:
                s = load_synthetic(path)
                x, y = s.images, s.labels
            # compile is not part of the row's key: it changes how the classifiers train, not what
            # (the same weights to 1e-4, tests/test_evaluate.py)
            r = evaluate_set(x, y, ds.x_test, ds.y_test, ds.num_classes, model, protocol, ev["repeats"], epochs,
                             cfg["seed"], device, ev["precision"], stats=stats, compile=ev["compile"])
            row = {"method": method, "ipc": k, "model": model, "protocol": protocol.name, "mean": r.mean,
                   "std": r.std, "runs": r.runs, "epochs": r.epochs, "per_class": r.per_class,
                   "time_s": r.train_time_s, "num_images": r.num_images, "set": path, "key": rk}
            if k is not None and method == ours and ev["generation_accuracy"]:
                from minimaxdd.evaluation.reference_classifier import (
                    generation_accuracy,
                )
                g = generation_accuracy(ds, x, y, device=device)
                row["generation_accuracy"] = g["generation_accuracy"]
                row["reference_test_accuracy"] = g["reference_test_accuracy"]
            write_json(f, row)
            rows.append(row)
    if write_results:
        write_json(run / "results.json", [{k: v for k, v in r.items() if k not in ("key", "per_class")} for r in rows])
    return rows


def method_name(cfg: dict) -> str:
    """The name of our set in tables: the fine-tuning objective, or `diffusion` for the base model as is."""
    name = (cfg["finetune"] or {}).get("objective", "minimax") if cfg["finetune"] else "none"
    return "diffusion" if name == "none" else name


def stage_metrics(run: Path, cfg: dict, sample: dict, baselines: dict, rows: list[dict], force: bool,
                  device: torch.device) -> dict | None:
    """Diagnostics (minimaxdd.metrics) of every set at the largest IPC, with their accuracies, and a t-SNE."""
    from minimaxdd.evaluation import metrics

    if not cfg["evaluate"].get("metrics", True):
        return None
    k = max(cfg["ipc"])
    sets = {r["method"]: r["set"] for r in rows if r["ipc"] == k and r["set"]}
    key = key_of(sample["key"], baselines["key"], sorted(sets), cfg["seed"])
    out = run / "metrics.json"
    if out.exists() and not force and json.loads(out.read_text()).get("key") == key:
        say("metrics: done, skipped")
        return json.loads(out.read_text())
    say(f"metrics: {', '.join(sets)} at IPC {k}")
    (run / "figures").mkdir(exist_ok=True)
    m = metrics.run(list(sets.values()), cfg["data"], size=cfg["size"], device=str(device), seed=cfg["seed"],
                    tsne=str(run / "figures" / "tsne.png"))
    named = {}
    for method, path in sets.items():
        entry = m["sets"][Path(path).name]
        accs = [r for r in rows if r["method"] == method and r["ipc"] == k]
        entry["accuracy"] = {"mean": accs[0]["mean"], "std": accs[0]["std"], "model": accs[0]["model"]} if accs else None
        named[f"{method} (IPC {k})"] = entry
    m["sets"], m["key"] = named, key
    write_json(out, m)
    return m


def _epochs_for(spec, ipc: int) -> int | None:
    """evaluate.epochs: null (the protocol's), an int, or {"10": 300, "50": 100} by IPC."""
    if spec is None or isinstance(spec, int):
        return spec
    if isinstance(spec, dict):
        v = spec.get(str(ipc))
        return None if v is None else int(v)
    raise UserError(f"evaluate.epochs must be null, an integer or a mapping from IPC to epochs, got {spec!r}")


# ---------------------------------------------------------------------------------------------


def run(cfg: dict, out: str | Path, from_stage: str | None = None) -> list[dict]:
    """Run (or resume) every stage of a distillation into `out`; returns the result rows."""
    from minimaxdd.pipeline.report import write_report

    if from_stage is not None and from_stage not in STAGES:
        raise UserError(f"--from-stage must be one of {', '.join(STAGES)}, got {from_stage!r}")
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    first = STAGES.index(from_stage) if from_stage else len(STAGES)
    force = {s: i >= first for i, s in enumerate(STAGES)}
    device = pick_device(cfg["device"])
    cfg = {**cfg, "device": str(device)}
    write_json(run_dir / "config.json", cfg)
    t0 = time.time()
    base = stage_base(run_dir, cfg, force["base"], device)
    ft = stage_finetune(run_dir, cfg, base, force["finetune"], device)
    sample = stage_sample(run_dir, cfg, ft, force["sample"], device)
    baselines = stage_baselines(run_dir, cfg, force["baselines"], device)
    rows = stage_evaluate(run_dir, cfg, sample, baselines, force["evaluate"], device)
    stage_metrics(run_dir, cfg, sample, baselines, rows, force["metrics"], device)
    path = write_report(run_dir)
    say(f"done in {time.time() - t0:.0f} s; results {run_dir / 'results.json'}, report {path}")
    return rows
