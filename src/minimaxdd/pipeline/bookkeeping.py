"""The bookkeeping every stage of `distill` shares: RUN/<stage>/stage.json, its key, skip and resume.

    base       train a diffusion model from scratch, or point at pretrained weights (pipeline.base)
    finetune   Difffit + the Minimax criteria (or another Table-5 objective; "none" skips it) (pipeline.finetuning)
    choose     guidance scale / steps chosen on a validation split of the training set (pipeline.choice)
    sample     IPC images per class (the largest IPC once; smaller IPCs are its per-class prefixes,
               which per-image seeds make identical to sampling them separately) (pipeline.sampling)
    extras     optional rows beside ours, each with its control, when `extras` asks (pipeline.extras)
    baselines  random, herding, k-center (and DM if asked) at each IPC (pipeline.baseline_sets)
    evaluate   every set with every classifier, plus the full training set (with evaluate.soft_labels, every
               set under the soft-label protocol too, in rows of their own) (pipeline.evaluation)
    metrics    MMD, FID, precision / recall / coverage, ... of each set at the largest IPC, t-SNE
               (pipeline.diagnostics)
    report     RUN/results.json, RUN/report.md and its figures (pipeline.report)

Each stage writes into RUN/<stage>/ and records RUN/<stage>/stage.json: a key (a hash of the
stage's config and of the keys of the stages it reads), the config, wall time and peak memory.
A stage whose stage.json holds the same key is skipped; a changed config reruns that stage and,
through the keys, everything that reads it. An interrupted stage resumes: training and
fine-tuning from their latest checkpoint, baselines and evaluation item by item (each item is
written atomically with its own key).
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from minimaxdd.files import write_json

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


def say(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


class StageRun:
    """One stage of one run: its folder RUN/<name>/ and RUN/<name>/stage.json ({key, done, config, time_s, ...}).

    `done`: stage.json holds this key and says done (the stage is skipped); `resumable`: it holds this key but
    the stage was interrupted (training resumes from its latest checkpoint)."""

    def __init__(self, run: Path, name: str, key: str, config: Any, force: bool):
        self.dir = run / name
        self.name, self.key, self.config = name, key, config
        self.file = self.dir / "stage.json"
        old = json.loads(self.file.read_text()) if self.file.exists() else None
        self.same = old is not None and old.get("key") == key and not force
        self.done = self.same and bool(old.get("done"))
        self.resumable = self.same and not old.get("done")
        self.record = old if self.done else None

    def run(self, device: torch.device, body: Callable[[StageRun], dict],
            note: Callable[[dict], str] | None = lambda record: "") -> dict:
        """The opening every stage shares: a done stage's record as it is (said as `<name>: done<note>, skipped`;
        `note=None` says nothing), else begin the stage and return `body(self)`, which ends with `self.finish`."""
        if self.done:
            if note is not None:
                say(f"{self.name}: done{note(self.record)}, skipped")
            return self.record
        self.begin(device)
        return body(self)

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
