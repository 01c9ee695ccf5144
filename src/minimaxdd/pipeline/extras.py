"""The `extras` stage: optional rows beside the method's set, each with its control (config `extras`).

    pool K       "generate many, keep few": K x IPC samples per class from the fine-tuned model, with the
                 sample stage's settings and seed (so the method's own set is the first IPC of each class),
                 IPC of them kept by herding on the reference classifier's unit-norm features
                 (<method>-poolK-herding); control: IPC of the same pool kept at random (<method>-poolK-random),
                 so the gain of the selection is read apart from the gain of more samples.
    prototypes S "start from real prototypes" (D4M, Su et al. 2024; SDEdit, Meng et al. 2022): IPC real class
                 medoids (the `medoids` selection) noised to sigma S and denoised by the fine-tuned EDM model
                 (medoids-sigmaS); control: the medoids themselves (medoids).

These rows are never the method's row: the report shows them in a table of their own and the metrics stage
leaves them out. Each set is written atomically and skipped when present, so an interrupted stage resumes.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minimaxdd.baselines.coreset import herding_order, random_indices
from minimaxdd.baselines.registry import select
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet, load_synthetic, write_synthetic
from minimaxdd.diffusion.generation import SampleConfig, from_real_images, sample_checkpoint, without_default_guides
from minimaxdd.evaluation.reference_classifier import ReferenceConfig, embed, reference_classifier, reference_features
from minimaxdd.files import manifest
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, say
from minimaxdd.pipeline.config import DistillConfig, method_name
from minimaxdd.pipeline.sampling import per_class_prefix
from minimaxdd.settings import to_dict


def keep_per_class(s: SyntheticSet, k: int, feats: torch.Tensor | None, seed: int) -> SyntheticSet:
    """k images per class of s: by herding on `feats` (N, D) unit rows, or uniformly at random when feats is None
    (the `random` selection's draw)."""
    if feats is None:
        keep = random_indices(s.labels, len(s.class_names), k, seed)
    else:
        keep = torch.cat([idx[herding_order(feats[idx], k)]
                          for idx in ((s.labels == c).nonzero().squeeze(1) for c in range(len(s.class_names)))])
    return SyntheticSet(s.images[keep], s.labels[keep], s.class_names)


def extra_methods(cfg: DistillConfig) -> list[str]:
    """The row names the config asks for, each followed by its control."""
    x, ours = cfg.extras, method_name(cfg)
    names = [f"{ours}-pool{x.pool}-herding", f"{ours}-pool{x.pool}-random"] if x.pool else []
    if x.prototypes is not None:
        names += [f"medoids-sigma{x.prototypes:g}", "medoids"]
    return names


def stage_extras(run: Path, cfg: DistillConfig, ft: dict, chosen: dict | None, force: bool,
                 device: torch.device, by_ipc: dict | None = None) -> dict | None:
    """Every optional row's set at every IPC; None when the config asks for none. Each IPC samples (and
    denoises) with its own choice when `by_ipc` (choose.per_ipc) gives one, else with `chosen`."""
    if not extra_methods(cfg):
        return None
    sample = dataclasses.replace(cfg.sample, **(chosen or {}))
    per = {k: dataclasses.replace(cfg.sample, **(by_ipc or {}).get(str(k), chosen or {})) for k in cfg.ipc}
    conf = {"extras": to_dict(cfg.extras), "sample": without_default_guides(to_dict(sample)), "ipc": cfg.ipc}
    if any(v != sample for v in per.values()):                  # absent when one choice serves all: keys hold
        conf["sample_by_ipc"] = {str(k): without_default_guides(to_dict(v)) for k, v in per.items()}
    st = StageRun(run, "extras", key_of(ft["key"], conf, cfg.data, cfg.size, cfg.seed), conf, force)
    return st.run(device, lambda st: _make_extras(st, cfg, ft, conf, per, device))


def _make_extras(st: StageRun, cfg: DistillConfig, ft: dict, conf: dict, per: dict, device: torch.device) -> dict:
    """Every optional row's set at every IPC in st.dir, each sampled with `per[ipc]`; the stage's record."""
    ds = load_dataset(cfg.data, size=cfg.size)
    ref = reference_classifier(ds, ReferenceConfig(seed=cfg.seed), device)
    stats = channel_stats(ds.x_train)
    feats_of = lambda x: F.normalize(embed(ref, x, stats), dim=1)   # noqa: E731  (N, D) unit rows
    base = {k: SampleConfig(**to_dict(v), ckpt=ft["checkpoint"], out=str(st.dir), seed=cfg.seed, device=str(device),
                            data=cfg.data, size=cfg.size) for k, v in per.items()}   # each IPC's sampling settings
    sets: dict[str, str] = {}

    def put(name: str, k: int, make) -> None:     # noqa: ANN001  make() -> SyntheticSet, run only when missing
        out = st.dir / f"{name}-ipc{k}"
        if not (out / "data.pt").exists():
            t0 = time.time()
            write_synthetic(out, make(), manifest(conf, cfg.seed, time.time() - t0, method=name, ipc=k),
                            overwrite=True)
        sets[f"{name}:{k}"] = str(out)

    x, ours = cfg.extras, method_name(cfg)
    if x.pool:
        pools = {}                                                    # one pool per distinct choice
        for k in sorted(cfg.ipc, reverse=True):
            b = base[k]
            name = "pool" if b == base[max(cfg.ipc)] else f"pool-ipc{k}"
            if name not in pools:                                     # the largest IPC of its choice comes first
                pools[name] = _pool(st.dir / name, b, x.pool * k)
            part = per_class_prefix(pools[name], x.pool * k)
            say(f"extras: keep {k} of {x.pool * k} samples per class by herding, and at random")
            put(f"{ours}-pool{x.pool}-herding", k,
                lambda part=part, k=k: keep_per_class(part, k, feats_of(part.images), cfg.seed))
            put(f"{ours}-pool{x.pool}-random", k, lambda part=part, k=k: keep_per_class(part, k, None, cfg.seed))
    if x.prototypes is not None:
        for k in cfg.ipc:
            say(f"extras: {k} real medoids per class, and the same noised to sigma {x.prototypes:g} and denoised")
            put("medoids", k, lambda k=k: select(ds, "medoids", k, cfg.seed, device))
            medoids = load_synthetic(sets[f"medoids:{k}"])
            put(f"medoids-sigma{x.prototypes:g}", k, lambda k=k, medoids=medoids: SyntheticSet(
                from_real_images(base[k], medoids.images, medoids.labels, x.prototypes), medoids.labels,
                medoids.class_names))
    return st.finish(device, sets=sets, methods=extra_methods(cfg))


def _pool(path: Path, base: SampleConfig, n: int) -> SyntheticSet:
    """n samples per class (kept in `path` so that a resumed stage does not sample again)."""
    if (path / "data.pt").exists():
        return load_synthetic(path)
    say(f"extras: sampling a pool of {n} images per class")
    t0 = time.time()
    s, info = sample_checkpoint(dataclasses.replace(base, ipc=n), reference_features)
    write_synthetic(path, s, manifest(to_dict(base), base.seed, time.time() - t0, **info), overwrite=True)
    return s
