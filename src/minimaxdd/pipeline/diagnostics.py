"""The `metrics` stage of `distill`: diagnostics (evaluation.metrics) of every set at the largest IPC, beside
their accuracies, and a t-SNE figure; RUN/metrics.json, skipped when its key is unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minimaxdd.evaluation import metrics
from minimaxdd.files import write_json
from minimaxdd.pipeline.bookkeeping import key_of, precision_part, say
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.precision import resolve_precision


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
    for method, name in zip(sets, metrics.set_names(list(sets.values()))):
        entry = m["sets"][name]
        accs = [r for r in rows if r["method"] == method and r["ipc"] == k]
        entry["accuracy"] = ({"mean": accs[0]["mean"], "std": accs[0]["std"], "model": accs[0]["model"]}
                             if accs else None)
        named[f"{method} (IPC {k})"] = entry
    m["sets"], m["key"] = named, key
    write_json(out, m)
    return m
