"""`minimaxdd distill`: from a dataset to a distilled set and an honest report, in stages.

The stages and their bookkeeping are in `pipeline.stages`; the typed config in `pipeline.config`.
`--from-stage S` reruns S and every stage after it.
"""
from __future__ import annotations

import time
from pathlib import Path

from minimaxdd.errors import UserError
from minimaxdd.files import run_lock, write_json
from minimaxdd.pipeline.choice import stage_choose
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.pipeline.report import write_report
from minimaxdd.pipeline.stages import (
    STAGES,
    say,
    stage_base,
    stage_baselines,
    stage_evaluate,
    stage_finetune,
    stage_metrics,
    stage_sample,
)
from minimaxdd.runtime import pick_device


def distill(cfg: DistillConfig, out: str | Path, from_stage: str | None = None) -> list[dict]:
    """Run (or resume) every stage of a distillation into `out`, holding its lock; returns the result rows."""
    if from_stage is not None and from_stage not in STAGES:
        raise UserError(f"--from-stage must be one of {', '.join(STAGES)}, got {from_stage!r}")
    with run_lock(out):      # one lock for the run: the stages inside it take none of their own
        return _distill(cfg, Path(out), from_stage)


def _distill(cfg: DistillConfig, run_dir: Path, from_stage: str | None) -> list[dict]:
    run_dir.mkdir(parents=True, exist_ok=True)
    first = STAGES.index(from_stage) if from_stage else len(STAGES)
    force = {s: i >= first for i, s in enumerate(STAGES)}
    device = pick_device(cfg.device)
    write_json(run_dir / "config.json", {**cfg.to_dict(), "device": str(device)})
    t0 = time.time()
    base = stage_base(run_dir, cfg, force["base"], device)
    ft = stage_finetune(run_dir, cfg, base, force["finetune"], device)
    chosen = stage_choose(run_dir, cfg, ft, force["choose"], device)
    sample = stage_sample(run_dir, cfg, ft, force["sample"], device, chosen["sample"])
    baselines = stage_baselines(run_dir, cfg, force["baselines"], device)
    rows = stage_evaluate(run_dir, cfg, sample, baselines, force["evaluate"], device)
    stage_metrics(run_dir, cfg, sample, baselines, rows, force["metrics"], device)
    path = write_report(run_dir)
    say(f"done in {time.time() - t0:.0f} s; results {run_dir / 'results.json'}, report {path}")
    return rows
