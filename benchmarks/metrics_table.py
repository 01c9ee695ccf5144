"""Diagnostics of distilled sets beside their accuracies (issue 6's table): one feature pass over the
real training set, then MMD, FID, precision / recall, density / coverage, representativeness and
spread of every set found in the given distill runs, at each IPC.

    python benchmarks/metrics_table.py --data npz:../shared/data/cifar10-500pc.npz --ipc 10,50 \\
        --run runs/cifar-distill [--run runs/cifar-simple] --out benchmarks/results/metrics-cifar10-500pc.json

A run contributes its own synthetic set (RUN/sample/ipcK, named by its objective) and its
baselines (RUN/baselines/METHOD-ipcK); accuracies are read from RUN/evaluate/*.json (rows that
were not evaluated show as blank). Sets are symlinked under distinct names into a scratch folder,
because metrics names each set by its folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from minimaxdd.evaluation import metrics
from minimaxdd.files import write_json
from minimaxdd.pipeline.config import set_name

KEYS = metrics.KEYS


def collect(runs: list[Path], ipcs: list[int], model: str) -> list[dict]:
    sets, seen = [], set()
    for run in runs:
        if (run / "config.json").exists():      # a distill run: its objective and its baselines
            cfg = json.loads((run / "config.json").read_text())
            ours, baselines = set_name(cfg["finetune"]["objective"]), cfg["evaluate"]["baselines"]
        else:                                    # an ablation variant, OUT/<objective>/
            ours, baselines = set_name(run.name), []
        found = [(ours, run / "sample" / f"ipc{k}", k) for k in ipcs]
        for m in baselines:
            found += [(m, run / "baselines" / f"{m}-ipc{k}", k) for k in ipcs]
        for method, path, k in found:
            if (method, k) in seen or not (path / "data.pt").exists():
                continue
            seen.add((method, k))
            row = run / "evaluate" / f"{method}-ipc{k}-{model}.json"
            acc = json.loads(row.read_text()) if row.exists() else None
            sets.append({"method": method, "ipc": k, "path": str(path), "run": str(run),
                         "accuracy": None if acc is None else {"mean": acc["mean"], "std": acc["std"],
                                                               "epochs": acc["epochs"], "model": model}})
    return sets


def markdown(d: dict) -> str:
    out = [f"Features: {d['features']}. Real: `{d['real']}`.", "",
           "| set | IPC | accuracy (%) | MMD | FID | precision | recall | density | coverage | represent. | spread |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in sorted(d["sets"], key=lambda s: (s["ipc"], s["method"])):
        a = s["accuracy"]
        acc = "" if a is None else f"{100 * a['mean']:.2f} +- {100 * a['std']:.2f}"
        vals = " | ".join(f"{metrics.metric(s['metrics'], k):.4g}" for k in KEYS)
        out.append(f"| {s['method']} | {s['ipc']} | {acc} | {vals} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--ipc", default="10,50")
    ap.add_argument("--run", action="append", required=True,
                    help="a distill run directory, or an ablation variant (ABL/simple); repeat for more")
    ap.add_argument("--model", default="convnet3", help="whose accuracy to show")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    ipcs = [int(v) for v in a.ipc.split(",")]
    sets = collect([Path(r) for r in a.run], ipcs, a.model)
    if not sets:
        raise SystemExit(f"no synthetic sets found in {a.run} at IPC {ipcs}")
    with tempfile.TemporaryDirectory() as tmp:
        links = []
        for s in sets:
            link = Path(tmp) / f"{s['method']}-ipc{s['ipc']}"
            link.symlink_to(Path(s["path"]).resolve())
            links.append(str(link))
        m = metrics.run_metrics(links, a.data, device=a.device)
    for s, name in zip(sets, metrics.set_names(links)):
        got = m["sets"][name]
        s["metrics"] = {k: got[k] for k in KEYS}
        s["per_class"] = got.get("per_class")
    result = {"features": m["features"], "real": a.data, "sets": sets}
    write_json(a.out, result)
    Path(a.out).with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
