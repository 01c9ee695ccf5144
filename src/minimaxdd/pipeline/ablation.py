"""`minimaxdd ablation` (the paper's Table 5) and `minimaxdd sweep` (its Fig. 6) on any base model and data.

Every variant is a distill run that shares the base model and the random-selection baseline:

    OUT/base/, OUT/baselines/, OUT/evaluate/    shared (random real images at each IPC)
    OUT/<variant>/finetune|sample|evaluate      one per objective (ablation) or value (sweep)
    OUT/ablation.md|json or OUT/sweep-<param>.md|json|png

Stages are skipped and resumed exactly as in `distill`, so an interrupted ablation continues
where it stopped and adding an objective runs only that one.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
import typing
from pathlib import Path

import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.files import write_json, write_text
from minimaxdd.pipeline.base import stage_base
from minimaxdd.pipeline.baseline_sets import stage_baselines
from minimaxdd.pipeline.bookkeeping import say
from minimaxdd.pipeline.config import (
    NO_FINETUNING,
    DistillConfig,
    build_config,
    load_distill_preset,
    merge,
    method_name,
    resolve_precisions,
)
from minimaxdd.pipeline.evaluation import stage_evaluate
from minimaxdd.pipeline.finetuning import stage_finetune
from minimaxdd.pipeline.sampling import stage_sample
from minimaxdd.runtime import pick_device
from minimaxdd.settings import default_of, field_types
from minimaxdd.training.finetune import FinetuneConfig
from minimaxdd.training.minimax import OBJECTIVES

# The fine-tuning knobs of the paper's Fig. 6 (and the run length); their types come from FinetuneConfig.
SWEEP_PARAMS = ("lambda_r", "lambda_d", "memory", "epochs", "steps")


# what a distill preset lends a study: its data and its fine-tuning, sampling and evaluation settings (not its
# base training, guidance choice or baselines: the base is given, and every variant samples with sample.cfg)
PRESET_KEYS = ("data", "size", "seed", "finetune", "sample", "evaluate")


def study_preset(name: str | None) -> dict | None:
    """The part of a distill preset (name or .json path) that ablation and sweep take; None without one."""
    if name is None:
        return None
    p = load_distill_preset(name)
    return {k: v for k, v in p.items() if k in PRESET_KEYS}


def _config(base: str, data: str | None, ipcs: str | list[int], repeats: int, overrides: dict,
            device: str, preset: str | None = None) -> DistillConfig:
    """The shared distill config: defaults <- the preset's data, finetune, sample and evaluate settings <- these
    arguments <- `--set`. The evaluation protocol is `--set evaluate.protocol=...`, else the preset's, else the
    base checkpoint's default (idc for the official DiT and what was fine-tuned from it), else the package's;
    the sampling settings left null come from each fine-tuned checkpoint likewise (`sample` prints them)."""
    pre = study_preset(preset)
    data = data or (pre or {}).get("data")
    if not data:
        raise UserError("give the dataset: --data SPEC, or a --preset that names one")
    layer = {"data": data, "ipc": ipcs, "base": {"pretrained": base},
             "evaluate": {"repeats": repeats, "baselines": ["random"], "full_epochs": 0, "metrics": False}}
    source = "given" if "protocol" in overrides.get("evaluate", {}) else None
    if source is None and "protocol" in (pre or {}).get("evaluate", {}):
        source = "preset"
    if source is None:
        from_base = ckpt.base_defaults(base).get("evaluate", {}).get("protocol")
        source = "checkpoint" if from_base else "default"
        if from_base:
            layer["evaluate"]["protocol"] = from_base
    cfg = build_config(pre, merge(layer, overrides))
    say(f"evaluation protocol {cfg.evaluate.protocol} ({source})")
    dev = pick_device(device)
    return resolve_precisions(dataclasses.replace(cfg, device=str(dev)), dev)   # stage keys hold the precision used


def seed_dirs(root: Path, cfg: DistillConfig, seeds: list[int] | None) -> list[tuple[Path, DistillConfig]]:
    """(folder, config) per sampling seed: the config's own seed in ROOT itself (a one-seed study's layout),
    every other seed s in ROOT/seed-s/ with `seed` s (its sampling noise, selection and classifier seeds)."""
    return [(root if s == cfg.seed else root / f"seed-{s}", dataclasses.replace(cfg, seed=s))
            for s in (seeds or [cfg.seed])]


def combine_seeds(per_seed: list[tuple[int, list[dict]]]) -> list[dict]:
    """One row per (IPC, classifier, protocol) from each seed's rows: the mean and population std over seeds of
    each seed's mean accuracy, every seed's row under `per_seed`. One seed: its rows unchanged."""
    if len(per_seed) == 1:
        return per_seed[0][1]
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for seed, rows in per_seed:
        for r in rows:
            groups.setdefault((r["method"], r["ipc"], r["model"], r["protocol"]), []).append((seed, r))
    out = []
    for (method, k, model, protocol), rs in groups.items():
        means = [r["mean"] for _, r in rs]
        gens = [r["generation_accuracy"] for _, r in rs if r.get("generation_accuracy") is not None]
        out.append({"method": method, "ipc": k, "model": model, "protocol": protocol,
                    "mean": statistics.fmean(means), "std": statistics.pstdev(means), "std_over": "seeds",
                    "seeds": [s for s, _ in rs], "generation_accuracy": statistics.fmean(gens) if gens else None,
                    "per_seed": [{"seed": s, **{f: r.get(f) for f in ("mean", "std", "runs", "generation_accuracy")}}
                                 for s, r in rs]})
    return out


def _variant(out: Path, name: str, cfg: DistillConfig, base: dict, device: torch.device,
             seeds: list[int] | None = None) -> tuple[list[dict], dict, dict]:
    """Fine-tune once (with the config's seed) in OUT/NAME/, then sample and evaluate at each sampling seed."""
    sub = out / name
    sub.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ft = stage_finetune(sub, cfg, base, False, device)
    per_seed, sample = [], {}
    for d, c in seed_dirs(sub, cfg, seeds):
        d.mkdir(parents=True, exist_ok=True)
        sample = stage_sample(d, c, ft, False, device)
        per_seed.append((c.seed, stage_evaluate(d, c, sample, None, False, device, full=False)))
    say(f"{name}: {time.time() - t0:.0f} s")
    return combine_seeds(per_seed), ft, sample


def _shared(out: Path, cfg: DistillConfig, device: torch.device, seeds: list[int] | None = None
            ) -> tuple[dict, list[dict]]:
    """The base model (OUT/base/) and random real images at each selection seed (OUT[/seed-s]/baselines/)."""
    base = stage_base(out, cfg, False, device)
    per_seed = []
    for d, c in seed_dirs(out, cfg, seeds):
        bl = stage_baselines(d, c, False, device)
        per_seed.append((c.seed, stage_evaluate(d, c, None, bl, False, device, full=False, write_results=False,
                                                set_aside_stale=False)))
    return base, combine_seeds(per_seed)


def _cell(rows: list[dict], k: int) -> str:
    r = next((r for r in rows if r["ipc"] == k), None)
    return "" if r is None else f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}"


def run_ablation(base: str, data: str | None, ipcs: str | list[int], objectives: list[str], out: str | Path,
                 repeats: int = 3, overrides: dict | None = None, device: str = "auto",
                 preset: str | None = None, seeds: list[int] | None = None) -> dict:
    """Fine-tune, sample and evaluate each objective from one base; OUT/ablation.md and .json. `seeds`: sampling
    seeds (default: the config's seed alone); each objective is fine-tuned once and sampled at each."""
    bad = [o for o in objectives if o != NO_FINETUNING and o not in OBJECTIVES]
    if bad:
        raise UserError(f"unknown objective(s) {bad}; choose from none, {', '.join(OBJECTIVES)}")
    seeds = _check_seeds(seeds)
    out = Path(out)
    cfg = _config(base, data, ipcs, repeats, overrides or {}, device, preset)
    dev = torch.device(cfg.device)
    write_json(out / "config.json", {**cfg.to_dict(), "objectives": objectives})
    base_rec, random_rows = _shared(out, cfg, dev, seeds)
    table = []
    for obj in objectives:
        c = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, objective=obj))
        rows, ft, sample = _variant(out, obj, c, base_rec, dev, seeds)
        gen = [r.get("generation_accuracy") for r in rows if r["ipc"] == max(cfg.ipc)]
        table.append({"objective": obj, "method": method_name(c), "rows": rows,
                      "finetune_time_s": ft.get("time_s") if obj != NO_FINETUNING else 0.0,
                      "finetune_steps": ft.get("steps"), "sample_time_s": sample.get("time_s"),
                      "generation_accuracy": gen[0] if gen else None})
    result = {"base": base, "data": cfg.data, "ipc": cfg.ipc, "seeds": seeds or [cfg.seed], "config": cfg.to_dict(),
              "variants": table, "random": random_rows}
    write_json(out / "ablation.json", result)
    write_text(out / "ablation.md", ablation_markdown(result))
    return result


def ablation_markdown(res: dict) -> str:
    ipcs = res["ipc"]
    ev = res["config"]["evaluate"]
    model = ev["models"][0]
    lines = [f"Ablation of the fine-tuning objective (Table 5 of Gu et al. 2024) on `{res['data']}`, base "
             f"`{res['base']}`; {model}, `{ev['protocol']}` protocol, final-epoch test accuracy (%), "
             f"{spread_words(res.get('seeds') or [res['config']['seed']], ev['repeats'])}.", "",
             "| objective | " + " | ".join(f"IPC {k}" for k in ipcs) +
             f" | generation accuracy (IPC {max(ipcs)}) | fine-tuning time |",
             "| --- | " + " | ".join("---:" for _ in ipcs) + " | ---: | ---: |"]
    for v in res["variants"]:
        label = "none (base model)" if v["objective"] == "none" else v["objective"]
        rows = [r for r in v["rows"] if r["model"] == model and r["protocol"] == ev["protocol"]]
        gen = "" if v["generation_accuracy"] is None else f"{100 * v['generation_accuracy']:.1f}%"
        lines.append(f"| {label} | " + " | ".join(_cell(rows, k) for k in ipcs) +
                     f" | {gen} | {v['finetune_time_s'] or 0:.0f} s ({v['finetune_steps'] or 0} steps) |")
    rnd = [r for r in res["random"] if r["model"] == model and r["protocol"] == ev["protocol"]]
    lines.append("| random real | " + " | ".join(_cell(rnd, k) for k in ipcs) + " | | |")
    return "\n".join(lines) + "\n"


def spread_words(seeds: list[int], repeats: int) -> str:
    """What a table's mean +- std is over."""
    if len(seeds) == 1:
        return f"mean +- std over {repeats} classifier repeats"
    return (f"mean +- std over sampling seeds {', '.join(map(str, seeds))} (random real: the same selection "
            f"seeds) of each seed's mean over {repeats} classifier repeats")


def _check_seeds(seeds: list[int] | None) -> list[int] | None:
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0):
        raise UserError(f"--seeds must be distinct non-negative integers, e.g. 0,1,2; got {seeds}")
    return seeds


def _sweep_values(param: str, values: list[str]) -> list[float | int]:
    if param not in SWEEP_PARAMS:
        raise UserError(f"--param must be one of {', '.join(SWEEP_PARAMS)}, got {param!r}")
    tp = field_types(FinetuneConfig)[param]
    kind = int if tp is int or int in typing.get_args(tp) else float
    try:
        return [kind(v) for v in values]
    except ValueError as e:
        raise UserError(f"--values for {param} must be {kind.__name__}s, e.g. 0,0.004,0.008: {e}") from e


def run_sweep(base: str, data: str, ipcs: str | list[int], param: str, values: list, out: str | Path,
              objective: str = default_of(FinetuneConfig, "objective"), repeats: int = 3,
              overrides: dict | None = None, device: str = "auto", preset: str | None = None,
              seeds: list[int] | None = None) -> dict:
    """Accuracy against one fine-tuning knob (the paper's Fig. 6); OUT/sweep-<param>.json / .png / .md.
    `seeds`: sampling seeds per point, as in run_ablation."""
    values = _sweep_values(param, values)
    seeds = _check_seeds(seeds)
    out = Path(out)
    cfg = _config(base, data, ipcs, repeats, overrides or {}, device, preset)
    dev = torch.device(cfg.device)
    base_rec, random_rows = _shared(out, cfg, dev, seeds)
    # Every point spells out all the fine-tuning settings, so the point at the default values is the
    # same run whichever knob is swept: it lives in OUT/default/ and sweeps sharing OUT run it once.
    default = dataclasses.replace(cfg.finetune, objective=objective)
    points = []
    for v in values:
        other = {"epochs": "steps", "steps": "epochs"}.get(param)
        f = dataclasses.replace(default, **{param: v, **({other: None} if other else {})})
        name = "default" if f == default else f"{param}={v}"
        rows, ft, _ = _variant(out, name, dataclasses.replace(cfg, finetune=f), base_rec, dev, seeds)
        points.append({"value": v, "dir": name, "rows": rows, "finetune_time_s": ft.get("time_s")})
    res = {"base": base, "data": cfg.data, "param": param, "objective": objective, "ipc": cfg.ipc,
           "seeds": seeds or [cfg.seed], "config": cfg.to_dict(), "points": points, "random": random_rows}
    res["plot"] = str(sweep_plot(res, out / f"sweep-{param}.png"))
    write_json(out / f"sweep-{param}.json", res)
    write_text(out / f"sweep-{param}.md", sweep_markdown(res))
    return res


def sweep_markdown(res: dict) -> str:
    """The sweep as a table: one row per value, one column per IPC, random real last."""
    ipcs, ev = res["ipc"], res["config"]["evaluate"]
    model = ev["models"][0]
    fixed = {k: v for k, v in res["config"]["finetune"].items() if k in SWEEP_PARAMS and k != res["param"]}
    lines = [f"Accuracy against `{res['param']}` ({res['objective']} fine-tuning; the other knobs "
             f"{', '.join(f'{k}={v}' for k, v in fixed.items())}) on `{res['data']}`, base `{res['base']}`; {model}, "
             f"`{ev['protocol']}` protocol, final-epoch test accuracy (%), "
             f"{spread_words(res['seeds'], ev['repeats'])}.", "",
             f"| {res['param']} | " + " | ".join(f"IPC {k}" for k in ipcs) + " | fine-tuning time |",
             "| ---: | " + " | ".join("---:" for _ in ipcs) + " | ---: |"]
    for p in res["points"]:
        rows = [r for r in p["rows"] if r["model"] == model and r["protocol"] == ev["protocol"]]
        lines.append(f"| {p['value']} | " + " | ".join(_cell(rows, k) for k in ipcs) +
                     f" | {p['finetune_time_s'] or 0:.0f} s |")
    rnd = [r for r in res["random"] if r["model"] == model and r["protocol"] == ev["protocol"]]
    lines.append("| random real | " + " | ".join(_cell(rnd, k) for k in ipcs) + " | |")
    return "\n".join(lines) + "\n"


def log_axis(values: list[float]) -> bool:
    """Whether a sweep's values (e.g. 0.008, 0.08, 0.8) read better on a log axis: all positive, spanning 20x."""
    return bool(values) and min(values) > 0 and max(values) >= 20 * min(values)


def sweep_plot(res: dict, path: Path) -> Path:
    """Accuracy (mean +- std) against the swept value, per IPC, with random real as dashed lines; a log axis
    when the (positive) values span a factor of 20 or more."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k in res["ipc"]:
        xs, ys, es = [], [], []
        for p in res["points"]:
            r = next((r for r in p["rows"] if r["ipc"] == k), None)
            if r is not None:
                xs.append(p["value"])
                ys.append(100 * r["mean"])
                es.append(100 * r["std"])
        line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{res['objective']}, IPC {k}")
        rnd = next((r for r in res["random"] if r["ipc"] == k), None)
        if rnd is not None:
            ax.axhline(100 * rnd["mean"], ls="--", lw=1, color=line[0].get_color(), label=f"random real, IPC {k}")
    if log_axis([p["value"] for p in res["points"]]):
        ax.set_xscale("log")
    ax.set_xlabel(res["param"])
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
