"""The `evaluate` stage of `distill`: every set with every classifier (and the full training set), one JSON row
per (set, classifier, protocol) in RUN/evaluate/, each with its own key, so an interrupted or partly changed
evaluation redoes only the rows it must."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from minimaxdd.baselines.registry import BASELINES
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.evaluation import ddranking, train_test
from minimaxdd.evaluation.protocols import NO_AUG, SOFT_SUFFIX, get_protocol
from minimaxdd.evaluation.reference_classifier import generation_accuracy
from minimaxdd.evaluation.teachers import Teacher, get_teacher
from minimaxdd.files import write_json
from minimaxdd.pipeline.bookkeeping import key_of, say
from minimaxdd.pipeline.config import DistillConfig, epochs_for, method_name


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


def soft_protocol(cfg: DistillConfig) -> str | None:
    """The soft-label protocol of the run: `evaluate.soft_protocol`, else `<protocol>-soft`; None without
    `evaluate.soft_labels`."""
    ev = cfg.evaluate
    if not ev.soft_labels:
        return None
    return ev.soft_protocol or get_protocol(ev.protocol).hard_name + SOFT_SUFFIX


def eval_protocols(cfg: DistillConfig) -> list[str]:
    """The run's protocol and, with `evaluate.soft_labels`, its soft-label protocol beside it, and that one's
    no-augmentation arm where it has one (DD-Ranking's ARS needs it)."""
    soft = soft_protocol(cfg)
    out = [cfg.evaluate.protocol]
    if soft is not None and soft != cfg.evaluate.protocol:
        out += [soft, *([NO_AUG[soft]] if soft in NO_AUG else [])]
    return out


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
        if ev.teacher_file:
            extra.append(("teacher_file", ev.teacher_file))
    if ev.report_best:    # absent when off: keys of rows made without the checks hold
        extra.append(("report_best", ev.check_every))
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
    # real-image controls (medoids) are baselines and get none
    generated = {method_name(cfg)} | (optional - set(BASELINES))
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
                teacher = get_teacher(get_protocol(protocol), ds, model, device, ev.image_size, ev.teacher_epochs,
                                      ev.precision, ev.teacher_file)
            say(f"evaluate: {method} {'full data' if k is None else f'IPC {k}'} with {model}, {protocol} "
                f"({ev.repeats} repeats, {ev.precision})")
            row = _evaluate_row(cfg, ds, stats, method, k, path, model, epochs, device, protocol, teacher,
                                method in generated)
            row["key"] = rk
            if method in optional:
                row["optional"] = True
            write_json(f, row)
            rows.append(row)
    scores = ddranking_scores(cfg, rows)
    if scores:
        write_json(run / "ddranking.json", scores)
    if write_results:
        by_row = {(s["method"], s["ipc"], s["model"], s["protocol"]): s for s in scores}
        write_json(run / "results.json", [{**{k: v for k, v in r.items() if k not in ("key", "per_class")},
                                           **({"ddranking": by_row[_id(r)]} if _id(r) in by_row else {})}
                                          for r in rows])
    return rows


def _id(r: dict) -> tuple:
    return r["method"], r["ipc"], r["model"], r["protocol"]


def ddranking_scores(cfg: DistillConfig, rows: list[dict]) -> list[dict]:
    """DD-Ranking's HLR, IOR, LRS and ARS (`evaluation.ddranking`) of every non-random set under the run's soft
    protocol, from the run's rows: the set and the random baseline at the same IPC under the soft protocol and
    its no-augmentation arm, the set under the hard protocol, and the full-data hard row. A score whose rows
    the run lacks is left out; none without soft labels."""
    soft = soft_protocol(cfg)
    if soft is None:
        return []
    hard, noaug = cfg.evaluate.protocol, NO_AUG.get(soft)
    acc = {_id(r): r["mean"] for r in rows}
    out = []
    for r in rows:
        if r["protocol"] != soft or r["method"] in ("random", "full") or r["ipc"] is None:
            continue
        k, m = r["ipc"], r["model"]
        s = ddranking.scores(acc.get(("full", None, m, hard)), acc.get((r["method"], k, m, hard)), r["mean"],
                             acc.get(("random", k, m, soft)), acc.get((r["method"], k, m, noaug)),
                             acc.get(("random", k, m, noaug)))
        if s:
            out.append({"method": r["method"], "ipc": k, "model": m, "protocol": soft, "hard_protocol": hard,
                        **s})
    return out


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
                  teacher: Teacher | None, generated: bool = False) -> dict:
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
                                image_size=ev.image_size, teacher=teacher.net if teacher else None,
                                report_best=ev.report_best, check_every=ev.check_every)
    row = {"method": method, "ipc": k, "model": model, "protocol": protocol.name, "mean": r.mean,
           "std": r.std, "runs": r.runs, "epochs": r.epochs, "per_class": r.per_class,
           "time_s": r.train_time_s, "num_images": r.num_images, "set": path, "image_size": r.image_size}
    if teacher is not None:
        row.update(teacher.record())
    if r.checks is not None:      # evaluate.report_best: beside the result, under a key that says it is not one
        row[train_test.BEST_OF_CHECKS] = r.to_dict()[train_test.BEST_OF_CHECKS]
    if k is not None and generated and ev.generation_accuracy and not protocol.soft:
        g = generation_accuracy(ds, x, y, device=device)
        row["generation_accuracy"] = g["generation_accuracy"]
        row["reference_test_accuracy"] = g["reference_test_accuracy"]
    return row
