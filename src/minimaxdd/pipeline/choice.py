"""The `choose` stage: sampling settings (guidance scale, step count, the guides' knobs) chosen on training data only.

Each candidate samples a small set from the fine-tuned model (with a seed of its own, so the choice is
not made on the final set's images), a classifier of the evaluation protocol trains on it, and its
accuracy on a validation split carved from the *training* set (stratified, seeded) scores the candidate.
The best mean accuracy wins; ties go to the first candidate listed. The test set is never read.
With `choose.per_ipc` the candidates are scored at every IPC of the run and each IPC is sampled with its
own winner (a set that favours fidelity at IPC 10 may favour diversity at IPC 50).
The generator itself was trained on the full training set, validation images included, so the scores
are optimistic for all candidates alike; they rank candidates, they are not results.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import torch

from minimaxdd.data.dataset import Dataset, channel_stats, validation_split
from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint, without_default_guides
from minimaxdd.evaluation import train_test
from minimaxdd.evaluation.protocols import get_protocol
from minimaxdd.evaluation.reference_classifier import reference_features
from minimaxdd.pipeline.bookkeeping import StageRun, key_of, precision_part, say
from minimaxdd.pipeline.config import GUIDE_KNOBS, DistillConfig, epochs_for
from minimaxdd.settings import to_dict

CANDIDATE_SEED_OFFSET = 7919   # ours: candidates sample with seed + this, never the final set's seed


def candidates(cfg: DistillConfig) -> list[dict[str, Any]]:
    """Every combination of (cfg, steps) and the guide knobs listed (`GUIDE_KNOBS`) to try; an empty list on an axis
    keeps sample's value (and an unlisted guide knob stays out of the candidates, so older runs' keys hold)."""
    c = cfg.choose
    axes = {"cfg": c.cfg or [cfg.sample.cfg], "steps": c.steps or [cfg.sample.steps]}
    axes.update({k: getattr(c, k) for k in GUIDE_KNOBS if getattr(c, k)})
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def candidate_set(cfg: DistillConfig, ckpt: str, cand: dict, ipc: int, out: Path,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One candidate's small set, sampled with the candidates' own seed: (images, labels) as `sample_checkpoint`."""
    sample = dataclasses.replace(cfg.sample, **cand)
    # mode guidance takes its modes from the training part of the split only, never from the images that score
    s, _ = sample_checkpoint(SampleConfig(**to_dict(sample), ckpt=ckpt, out=str(out), ipc=ipc,
                                          seed=cfg.seed + CANDIDATE_SEED_OFFSET, device=str(device), data=cfg.data,
                                          size=cfg.size, holdout=[cfg.choose.val_fraction, cfg.seed]),
                              reference_features)
    return s.images, s.labels


def validation_accuracy(cfg: DistillConfig, ds: Dataset, split: tuple, images: torch.Tensor, labels: torch.Tensor,
                        ipc: int, device: torch.device, epochs: int | None = None) -> float:
    """Validation accuracy (mean over `choose.repeats`) of the run's first classifier trained on a set under the
    run's hard-label protocol, compiled as `evaluate.compile` says; `epochs` None: `choose.epochs`, else the run's
    evaluation epochs at this IPC."""
    tr, va = split
    ev = cfg.evaluate
    if epochs is None:
        epochs = cfg.choose.epochs if cfg.choose.epochs is not None else epochs_for(cfg, ipc)
    # the hard-label protocol: a soft one's teacher would have trained on the validation images
    r = train_test.evaluate_set(images, labels, ds.x_train[va], ds.y_train[va], ds.num_classes, ev.models[0],
                                get_protocol(get_protocol(ev.protocol).hard_name), cfg.choose.repeats, epochs,
                                cfg.seed, device, ev.precision, stats=channel_stats(ds.x_train[tr]),
                                compile=ev.compile, image_size=ev.image_size, held_out="validation")
    return r.mean


def _score(cfg: DistillConfig, ckpt: str, cand: dict, ds: Dataset, split: tuple, ipc: int, out: Path,
           device: torch.device) -> float:
    """Validation accuracy of a classifier trained on one candidate's samples."""
    images, labels = candidate_set(cfg, ckpt, cand, ipc, out, device)
    return validation_accuracy(cfg, ds, split, images, labels, ipc, device)


def choice_conf(cfg: DistillConfig) -> dict:
    """The choose section as the stage key sees it (per_ipc only when set, so older runs' keys hold)."""
    c = to_dict(cfg.choose)
    for k in ("per_ipc", *GUIDE_KNOBS):
        if not c.get(k):
            c.pop(k, None)
    return c


def stage_choose(run: Path, cfg: DistillConfig, ft: dict, force: bool, device: torch.device) -> dict:
    """Score each candidate on the validation split; the record's `sample` holds the chosen settings (at the
    first IPC scored) and, with `choose.per_ipc`, `by_ipc` each IPC's."""
    cands = candidates(cfg)
    conf = {"choose": choice_conf(cfg), "candidates": cands}
    size = [cfg.evaluate.image_size] if cfg.evaluate.image_size else []     # absent when unset: older keys hold
    st = StageRun(run, "choose", key_of(ft["key"], conf, without_default_guides(to_dict(cfg.sample)),
                                        cfg.evaluate.models[0],
                                        cfg.evaluate.protocol, cfg.seed, *size,
                                        *precision_part(cfg.evaluate.precision)),
                  conf, force)
    return st.run(device, lambda st: _choose(st, cfg, ft, cands, device),
                  note=lambda r: f" ({r.get('by_ipc') or r['sample']})")


def _choose(st: StageRun, cfg: DistillConfig, ft: dict, cands: list[dict], device: torch.device) -> dict:
    """Each candidate sampled and scored at each IPC the choice is made at; the stage's record."""
    if len(cands) == 1:
        return st.finish(device, sample=cands[0], scores=None)
    say(f"choose: {len(cands)} candidates, sampled in {cfg.sample.precision}, scored by {cfg.evaluate.models[0]} "
        f"trained in {cfg.evaluate.precision}")
    ds = load_dataset(cfg.data, size=cfg.size)
    split = validation_split(ds, cfg.choose.val_fraction, cfg.seed)
    ipcs = cfg.ipc if cfg.choose.per_ipc else [cfg.choose.ipc or min(cfg.ipc)]
    scores, by_ipc = [], {}
    for ipc in ipcs:
        here = []
        for cand in cands:
            acc = _score(cfg, ft["checkpoint"], cand, ds, split, ipc, st.dir, device)
            say(f"choose: {cand} at IPC {ipc} -> validation accuracy {100 * acc:.2f}%")
            here.append({**cand, "ipc": ipc, "val_accuracy": acc})
        best = max(range(len(cands)), key=lambda i: (here[i]["val_accuracy"], -i))
        by_ipc[str(ipc)] = cands[best]
        scores += here
        say(f"choose: {cands[best]} at IPC {ipc} (validation split of {len(split[1])} training images)")
    extra = {"by_ipc": by_ipc} if cfg.choose.per_ipc else {}
    return st.finish(device, sample=by_ipc[str(ipcs[0])], scores=scores, val_images=len(split[1]), ipc=ipcs[0],
                     **extra)
