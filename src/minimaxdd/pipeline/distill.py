"""`minimaxdd distill`: from a dataset to a distilled set and an honest report, in stages.

The stages' shared bookkeeping is in `pipeline.bookkeeping`, each stage in a module of its own (base, finetuning,
choice, sampling, extras, baseline_sets, evaluation, diagnostics, report); the typed config in `pipeline.config`.
`--from-stage S` reruns S and every stage after it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from minimaxdd.errors import UserError
from minimaxdd.files import input_paths, json_dict, refuse_overlap, run_lock, write_json
from minimaxdd.pipeline.base import stage_base
from minimaxdd.pipeline.baseline_sets import stage_baselines
from minimaxdd.pipeline.bookkeeping import STAGES, say
from minimaxdd.pipeline.choice import stage_choose
from minimaxdd.pipeline.config import DistillConfig, precisions, resolve_precisions
from minimaxdd.pipeline.diagnostics import stage_metrics
from minimaxdd.pipeline.evaluation import stage_evaluate
from minimaxdd.pipeline.extras import stage_extras
from minimaxdd.pipeline.finetuning import stage_finetune
from minimaxdd.pipeline.report import write_report
from minimaxdd.pipeline.sampling import stage_sample
from minimaxdd.precision import auto_reason
from minimaxdd.runtime import pick_device


def distill(cfg: DistillConfig, out: str | Path, from_stage: str | None = None) -> list[dict]:
    """Run (or resume) every stage of a distillation into `out`, holding its lock; returns the result rows."""
    if from_stage is not None and from_stage not in STAGES:
        raise UserError(f"--from-stage must be one of {', '.join(STAGES)}, got {from_stage!r}")
    refuse_overlap(out, input_paths(cfg.data))
    if Path(out).is_dir() and not _a_distill_run(Path(out)):
        raise UserError(f"{out} is not empty and is not a distill run (no config.json and stage folders of ours); "
                        "a run writes only into its own folder: choose another --out or move its files away")
    with run_lock(out):      # one lock for the run: the stages inside it take none of their own
        return _distill(cfg, Path(out), from_stage)


def _a_distill_run(run: Path) -> bool:
    """Whether folder `run` is empty or a distill run: its config.json (a distill config) or a stage folder with
    its stage.json."""
    if not any(run.iterdir()):
        return True
    config = json_dict(run / "config.json") or {}
    return {"data", "base", "finetune"} <= config.keys() or any((run / s / "stage.json").is_file() for s in STAGES)


def _distill(cfg: DistillConfig, run_dir: Path, from_stage: str | None) -> list[dict]:
    run_dir.mkdir(parents=True, exist_ok=True)
    first = STAGES.index(from_stage) if from_stage else len(STAGES)
    force = {s: i >= first for i, s in enumerate(STAGES)}
    device = pick_device(cfg.device)
    given = cfg
    cfg = resolve_precisions(given, device)
    used = precisions(cfg)
    # the config as given (what reruns it elsewhere), and the precisions this machine resolved it to
    write_json(run_dir / "config.json", {**given.to_dict(), "device": str(device), "precision_used": used})
    say(precision_summary(precisions(given), used, device))
    t0 = time.time()
    done: dict[str, Any] = {}
    for name, run_stage in stage_steps(run_dir, cfg, device, force).items():
        done[name] = run_stage(done)
    say(f"done in {time.time() - t0:.0f} s; results {run_dir / 'results.json'}, report {done['report']}")
    return done["evaluate"]


def stage_steps(run_dir: Path, cfg: DistillConfig, device: torch.device,
                force: dict[str, bool] | None = None) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The stages of a run in the order of STAGES, each a function of the earlier stages' records (by name);
    `force[stage]` reruns that stage instead of skipping it when done."""
    f = force or {}
    return {
        "base": lambda r: stage_base(run_dir, cfg, f.get("base", False), device),
        "finetune": lambda r: stage_finetune(run_dir, cfg, r["base"], f.get("finetune", False), device),
        "choose": lambda r: stage_choose(run_dir, cfg, r["finetune"], f.get("choose", False), device),
        "sample": lambda r: stage_sample(run_dir, cfg, r["finetune"], f.get("sample", False), device,
                                         r["choose"]["sample"], r["choose"].get("by_ipc")),
        "extras": lambda r: stage_extras(run_dir, cfg, r["finetune"], r["choose"]["sample"], f.get("extras", False),
                                         device, r["choose"].get("by_ipc")),
        "baselines": lambda r: stage_baselines(run_dir, cfg, f.get("baselines", False), device),
        "evaluate": lambda r: stage_evaluate(run_dir, cfg, r["sample"], r["baselines"], f.get("evaluate", False),
                                             device, extras=r["extras"]),
        "metrics": lambda r: stage_metrics(run_dir, cfg, r["sample"], r["baselines"], r["evaluate"],
                                           f.get("metrics", False), device),
        "report": lambda r: write_report(run_dir),
    }


def precision_summary(asked: dict[str, str], used: dict[str, str], device: torch.device) -> str:
    """'precision: fp32 in every stage (auto: ...)', or one entry per section where they differ."""
    values = set(used.values())
    what = (f"{values.pop()} in every stage" if len(values) == 1 else
            ", ".join(f"{k} {v}" + (" (auto)" if asked[k] == "auto" else "") for k, v in used.items()))
    return f"precision: {what}" + (f" ({auto_reason(device)})" if "auto" in asked.values() else "")
