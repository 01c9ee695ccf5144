"""Calibration of the evaluation harness: coreset baselines and full data, ConvNet-3, `dc` protocol.

Each row (method, IPC) is selected, evaluated over --repeats seeds and appended to a JSON
file at once, so an interrupted run resumes where it stopped (rows already present with
the same epochs are skipped).

    python benchmarks/calibration.py --real npz:../shared/data/cifar10-500pc.npz \
        --out benchmarks/results/calibration-cifar10-500pc.json \
        --rows random:1:1000,random:10:300,herding:10:300,kcenter:10:300 --full-epochs 30

`dm` rows run distribution matching with --dm-iterations / --dm-batch-real (the paper's
20000 / 256 by default; shortened runs say so in the row).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from minimaxdd.baselines.registry import select
from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.runner import format_table
from minimaxdd.evaluation.train_test import evaluate_set
from minimaxdd.files import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default="random:1:1000,random:10:1000,random:50:1000",
                    help="comma list of method:ipc:epochs")
    ap.add_argument("--full-epochs", type=int, default=0, help="also train on the full training set (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="convnet3")
    ap.add_argument("--precision", default="auto", help="auto: bf16 where this machine runs it fast, else fp32")
    ap.add_argument("--dm-iterations", type=int, default=20000, help="dm rows: iterations (the DM paper: 20000)")
    ap.add_argument("--dm-batch-real", type=int, default=256, help="dm rows: real images per class per iteration")
    a = ap.parse_args()
    from minimaxdd.baselines.distribution_matching import DMConfig
    dm = DMConfig(iterations=a.dm_iterations, batch_real=a.dm_batch_real)

    ds = load_dataset(a.real)
    stats = channel_stats(ds.x_train)
    out = Path(a.out)
    done = json.loads(out.read_text())["rows"] if out.exists() else []
    have = {(r["method"], r["ipc_asked"], r["epochs"]) for r in done}
    todo = [(m, int(i), int(e)) for m, i, e in (s.split(":") for s in a.rows.split(","))]
    if a.full_epochs:
        todo.append(("full", 0, a.full_epochs))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    for method, ipc, epochs in todo:
        if (method, ipc, epochs) in have:
            continue
        t0 = time.time()
        if method == "full":
            x, y = ds.x_train, ds.y_train
        else:
            s = select(ds, method, ipc, seed=0, dm=dm)
            x, y = s.images, s.labels
        t_sel = time.time() - t0
        r = evaluate_set(x, y, ds.x_test, ds.y_test, ds.num_classes, a.model, PROTOCOLS["dc"], a.repeats,
                         epochs=epochs, precision=a.precision, stats=stats)
        row = {"method": method, "ipc_asked": ipc, "real": a.real, "select_time_s": round(t_sel, 1),
               "machine": machine, **r.to_dict()}
        if method == "full":
            row["synth"] = "full"
        if method == "dm":
            row["dm"] = {"iterations": dm.iterations, "batch_real": dm.batch_real, "lr_img": dm.lr_img,
                         "momentum": dm.momentum}
        done.append(row)
        write_json(out, {"rows": done})
        print(format_table([row]), f"  ({r.train_time_s:.0f} s)", flush=True)
    print(format_table(done))


if __name__ == "__main__":
    main()
