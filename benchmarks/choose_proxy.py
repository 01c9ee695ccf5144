"""Cheaper ways to score `choose` candidates, and whether they rank the candidates as the full protocol does.

The `choose` stage samples a small set per candidate (its own seed) and trains the run's classifier on it for the
run's evaluation epochs (300 at IPC 10 on Fashion-MNIST: about 3 minutes a candidate on 2 cores), scored on a
validation split of the training set. This script samples each candidate's set exactly as `choose` does
(`pipeline.choice.candidate_set`) and scores it

    full        as `choose` does (`pipeline.choice.validation_accuracy` at the run's epochs), or the run's own
                `choose` record for a candidate it already scored (--known: same code, seeds and split)
    epochs-E    the same classifier and split trained for E epochs only (--short-epochs)
    coverage, recall, density, precision, -fd
                feature-space metrics of the set against the validation images, in the reference classifier's
                features (`evaluation.metrics.set_metrics`; no classifier is trained)

and reports, for each proxy, the Spearman and Kendall rank correlation with `full` over the candidates, whether
it picks `full`'s winner, and its regret (`full`'s best score minus `full`'s score of the proxy's pick), with the
seconds each proxy costs. One classifier per candidate is itself noisy: a proxy cannot be judged more finely
than the full protocol's own repeat spread. The test set is never read.

    python benchmarks/choose_proxy.py runs/fm-mode --ipc 10 --short-epochs 30,100 \\
        --candidates '[{"cfg": 1.0}, {"cfg": 1.5}, {"cfg": 2.0}, {"cfg": 3.0}, {"mode_guidance": 0.5}]' \\
        --known runs/fm-mode/choose/stage.json --out benchmarks/results/choose-proxy-fashion-mnist.json

A candidate lists only the knobs it changes; the others are the run's `sample` values (the chosen ones for the
guide knobs are not applied: a candidate is what it says). Sets are kept in --work (default RUN/choose-proxy) and
the output is written after every candidate, so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from scipy import stats as sps

from minimaxdd.data.dataset import validation_split
from minimaxdd.data.sources import load_dataset
from minimaxdd.evaluation.metrics import Features, real_sides, set_metrics
from minimaxdd.files import write_json
from minimaxdd.pipeline.choice import candidate_set, validation_accuracy
from minimaxdd.pipeline.config import DistillConfig, build_config, resolve_precisions
from minimaxdd.precision import machine_report
from minimaxdd.runtime import flush_denormals, pick_device

# Feature-space proxies: name -> sign (+1: higher is better).
FEATURE_PROXIES = {"coverage": 1, "recall": 1, "density": 1, "precision": 1, "fid": -1}


def run_config(run: Path, device: str) -> DistillConfig:
    """The run's config (RUN/config.json), resolved on this machine as distill resolves it."""
    given = json.loads((run / "config.json").read_text())
    given.pop("precision_used", None)
    dev = pick_device(device)
    cfg = build_config(None, given)
    return resolve_precisions(dataclasses.replace(cfg, device=str(dev)), dev)


def full_candidate(cfg: DistillConfig, cand: dict) -> dict:
    """A candidate with cfg and steps always named (as `choice.candidates` names them), for matching records."""
    return {"cfg": cfg.sample.cfg, "steps": cfg.sample.steps, **cand}


def known_scores(path: Path | None, ipc: int) -> list[dict]:
    """The scores of a `choose` stage record at this IPC ([] without one)."""
    if path is None:
        return []
    rec = json.loads(path.read_text())
    return [s for s in rec.get("scores") or [] if s.get("ipc") == ipc]


def match(known: list[dict], cand: dict) -> float | None:
    """The recorded validation accuracy of exactly this candidate: every knob equal, unnamed guide knobs off."""
    for s in known:
        knobs = {k: v for k, v in s.items() if k not in ("ipc", "val_accuracy")}
        names = set(knobs) | set(cand)
        if all(knobs.get(k, 0.0) == cand.get(k, 0.0) for k in names):
            return s["val_accuracy"]
    return None


def ranking(rows: list[dict], proxy: str, sign: int = 1) -> dict:
    """How a proxy's scores rank the rows against their `full` scores: Spearman and Kendall correlation, whether
    it picks full's winner, and its regret in full's units (0: the proxy's pick is full's best)."""
    full = [r["full"] for r in rows]
    mine = [sign * r[proxy] for r in rows]
    pick = max(range(len(rows)), key=lambda i: (mine[i], -i))
    best = max(range(len(rows)), key=lambda i: (full[i], -i))
    rho = sps.spearmanr(full, mine).statistic if len(rows) > 2 else float("nan")
    tau = sps.kendalltau(full, mine).statistic if len(rows) > 1 else float("nan")
    return {"proxy": proxy, "spearman": float(rho), "kendall": float(tau), "same_winner": pick == best,
            "regret": full[best] - full[pick], "pick": rows[pick]["candidate"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a distill run directory with a finished finetune stage")
    ap.add_argument("--candidates", required=True, help="JSON list of candidates, each {knob: value}")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--short-epochs", default="30,100", help="comma separated epoch counts")
    ap.add_argument("--known", default=None, help="a choose stage.json whose scores stand for `full` (same run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=None, help="where the candidates' sets are kept (default RUN/choose-proxy)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    flush_denormals()
    run = Path(a.run)
    ft = json.loads((run / "finetune" / "stage.json").read_text())
    if not ft.get("done"):
        raise SystemExit(f"{run} has no finished finetune stage; run distill to the end first")
    cfg = run_config(run, a.device)
    dev = torch.device(cfg.device)
    cands = [full_candidate(cfg, c) for c in json.loads(a.candidates)]
    shorts = [int(e) for e in a.short_epochs.split(",") if e]
    known = known_scores(Path(a.known) if a.known else None, a.ipc)
    work = Path(a.work) if a.work else run / "choose-proxy"
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    done = {json.dumps(r["candidate"], sort_keys=True): r for r in
            (json.loads(out.read_text()).get("rows", []) if out.exists() else [])}

    ds = load_dataset(cfg.data, size=cfg.size)
    split = validation_split(ds, cfg.choose.val_fraction, cfg.seed)
    va = split[1]
    t = time.time()
    feats = Features(ds, "reference", dev)
    val_f = feats(ds.x_train[va])
    sides = real_sides(val_f, ds.y_train[va], ds.num_classes, seed=cfg.seed)   # real-real distances: once, lazily
    feature_s = time.time() - t
    rows = []
    for i, cand in enumerate(cands):
        key = json.dumps(cand, sort_keys=True)
        if key in done:
            rows.append(done[key])
            continue
        row: dict = {"candidate": cand, "seconds": {}}
        f = work / f"ipc{a.ipc}-{i}.pt"
        t = time.time()
        if f.exists() and torch.load(f)["candidate"] == cand:
            images, labels = (torch.load(f)[k] for k in ("images", "labels"))
        else:
            images, labels = candidate_set(cfg, ft["checkpoint"], cand, a.ipc, work, dev)
            torch.save({"candidate": cand, "images": images, "labels": labels}, f)
            row["seconds"]["sample"] = round(time.time() - t, 1)
        t = time.time()
        m = set_metrics(val_f, ds.y_train[va], feats(images), labels, ds.num_classes, seed=cfg.seed, sides=sides)
        row.update({k: m[k] for k in FEATURE_PROXIES})
        row["seconds"]["features"] = round(time.time() - t, 1)   # the first candidate's: + the real side's distances
        recorded = match(known, cand)
        if recorded is not None:
            row["full"], row["full_from"] = recorded, str(a.known)
        else:
            t = time.time()
            row["full"] = validation_accuracy(cfg, ds, split, images, labels, a.ipc, dev)
            row["seconds"]["full"] = round(time.time() - t, 1)
        for e in shorts:
            t = time.time()
            row[f"epochs-{e}"] = validation_accuracy(cfg, ds, split, images, labels, a.ipc, dev, epochs=e)
            row["seconds"][f"epochs-{e}"] = round(time.time() - t, 1)
        print(f"{cand}: full {100 * row['full']:.2f}%, "
              + ", ".join(f"{e} epochs {100 * row[f'epochs-{e}']:.2f}%" for e in shorts)
              + f", coverage {row['coverage']:.3f}, fd {row['fid']:.1f}", flush=True)
        rows.append(row)
        done[key] = row
        write_json(out, {"run": str(run), "ipc": a.ipc, "complete": False, "rows": rows})
    proxies = [(f"epochs-{e}", 1) for e in shorts] + list(FEATURE_PROXIES.items())
    ranks = [ranking(rows, p, s) for p, s in proxies]
    write_json(out, {"run": str(run), "ipc": a.ipc, "checkpoint": ft["checkpoint"], "complete": True,
                     "validation_images": len(va), "classifier": cfg.evaluate.models[0],
                     "protocol": cfg.evaluate.protocol, "reference_features_s": round(feature_s, 1),
                     "machine": machine_report(), "rows": rows, "rankings": ranks})
    for r in ranks:
        print(f"{r['proxy']:<12} spearman {r['spearman']:+.2f}  kendall {r['kendall']:+.2f}  "
              f"same winner {r['same_winner']}  regret {100 * r['regret']:.2f} points")


if __name__ == "__main__":
    main()
