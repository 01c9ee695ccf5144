"""The `sample` stage of `distill`: IPC images per class from the fine-tuned model (the largest IPC once; smaller
IPCs are its per-class prefixes, which per-image seeds make identical to sampling them separately). With mode
guidance every IPC is sampled on its own: its k = IPC modes differ from the largest IPC's."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from minimaxdd.data.grid import save_grid
from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
from minimaxdd.diffusion.generation import SampleConfig, guides_on, sample_checkpoint, without_default_guides
from minimaxdd.evaluation.reference_classifier import reference_features
from minimaxdd.files import manifest
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, say
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.settings import to_dict


def _sample_config(cfg: DistillConfig, checkpoint: str, out: Path, device: torch.device) -> SampleConfig:
    return SampleConfig(**to_dict(cfg.sample), ckpt=checkpoint, out=str(out), ipc=max(cfg.ipc), seed=cfg.seed,
                        device=str(device), data=cfg.data, size=cfg.size)


def stage_sample(run: Path, cfg: DistillConfig, ft: dict, force: bool, device: torch.device,
                 chosen: dict | None = None, by_ipc: dict | None = None) -> dict:
    """The largest IPC once; each IPC's set is its per-class prefix, written in the synthetic-set format.
    `chosen`: sampling settings the `choose` stage picked, over sample's; `by_ipc` ({"10": settings, ...},
    choose.per_ipc): each IPC's own pick; IPCs that share a pick are sampled together as above."""
    if by_ipc and len({json.dumps(v, sort_keys=True) for v in by_ipc.values()}) > 1:
        return _sample_per_ipc(run, cfg, ft, force, device, by_ipc)
    if chosen:
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **chosen))
    if guides_on(cfg.sample)["modes"] and len(cfg.ipc) > 1:           # k = IPC modes: each IPC its own sample
        return _sample_per_ipc(run, cfg, ft, force, device, {str(k): {} for k in cfg.ipc})
    s = without_default_guides(to_dict(cfg.sample))
    ipcs = cfg.ipc
    st = StageRun(run, "sample", key_of(ft["key"], s, ipcs, cfg.seed), {**s, "ipc": ipcs}, force)

    def body(st: StageRun) -> dict:
        sets, info, full = _sample_sets(st, cfg, ft, device)
        save_grid(full.images, full.labels, st.dir / "grid.png", per_row=min(10, max(ipcs)))
        return st.finish(device, sets=sets, **info)

    return st.run(device, body)


def per_class_prefix(s: SyntheticSet, k: int) -> SyntheticSet:
    """The first k images of each class of s (its class-major order kept)."""
    keep = torch.cat([(s.labels == c).nonzero().squeeze(1)[:k] for c in range(len(s.class_names))])
    return SyntheticSet(s.images[keep], s.labels[keep], s.class_names)


def _sample_sets(st: StageRun, cfg: DistillConfig, ft: dict, device: torch.device
                 ) -> tuple[dict[str, str], dict, SyntheticSet]:
    """max(cfg.ipc) images per class with cfg.sample, and each of cfg.ipc's per-class prefix written to
    st.dir/ipc<k>: ({ipc: path}, the sampling info, the whole sample)."""
    say(f"sample: {max(cfg.ipc)} images per class in {cfg.sample.precision}")
    if ft.get("phases"):
        full, info = _sample_phases(cfg, ft, st.dir, device)
    else:
        full, info = sample_checkpoint(_sample_config(cfg, ft["checkpoint"], st.dir, device), reference_features)
    s, sets = without_default_guides(to_dict(cfg.sample)), {}
    for k in cfg.ipc:
        man = manifest({**s, "ipc": k}, cfg.seed, time.time() - st.t0, **info)
        path = write_synthetic(st.dir / f"ipc{k}", per_class_prefix(full, k), man, overwrite=True)
        sets[str(k)] = str(path)
    say(f"sample: {info.get('sampler', '')}, {info['sample_time_s']:.0f} s")
    return sets, info, full


def _sample_per_ipc(run: Path, cfg: DistillConfig, ft: dict, force: bool, device: torch.device,
                    by_ipc: dict) -> dict:
    """Each group of IPCs that share a choice sampled with it (the choices differ between groups)."""
    per = {str(k): without_default_guides(to_dict(dataclasses.replace(cfg.sample, **by_ipc[str(k)]))) for k in cfg.ipc}
    st = StageRun(run, "sample", key_of(ft["key"], per, cfg.ipc, cfg.seed), {"by_ipc": per, "ipc": cfg.ipc}, force)
    return st.run(device, lambda st: _sample_groups(st, cfg, ft, device, by_ipc))


def _sample_groups(st: StageRun, cfg: DistillConfig, ft: dict, device: torch.device, by_ipc: dict) -> dict:
    """The groups of IPCs that share a choice, each sampled with it into st.dir; the stage's record. With mode
    guidance each IPC is a group of its own (its own k = IPC modes)."""
    groups: dict[str, list[int]] = {}
    for k in cfg.ipc:
        own = guides_on(dataclasses.replace(cfg.sample, **by_ipc[str(k)]))["modes"]
        groups.setdefault(json.dumps(by_ipc[str(k)], sort_keys=True) + (f" ipc{k}" if own else ""), []).append(k)
    sets, infos, t = {}, {}, 0.0
    for group, ks in groups.items():
        choice = group.split(" ipc")[0]
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
        part, info = sample_checkpoint(_sample_config(cfg, rec["checkpoint"], out, device), reference_features)
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
