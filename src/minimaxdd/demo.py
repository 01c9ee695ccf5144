"""`make demo`: the embedded default, on scikit-learn's digits (ships with scikit-learn).

Until the distillation pipeline lands, the demo is the harness itself: random real images
vs herding at 10 images per class, ConvNet-3 under the `dc` protocol (1000 epochs, 3
repeats), next to the full training set (50 epochs, stated in the table).
"""
from __future__ import annotations

import time
from pathlib import Path

from minimaxdd.data import load_dataset
from minimaxdd.evaluate import channel_stats, evaluate_set, format_table
from minimaxdd.protocols import PROTOCOLS
from minimaxdd.select import select
from minimaxdd.utils import manifest, write_json

IPC = 10
FULL_EPOCHS = 50  # full data: 1347 images x 50 epochs, a fraction of a minute on a CPU


def run(out: str | Path = "runs/demo", repeats: int = 3) -> list[dict]:
    t0 = time.time()
    ds = load_dataset("digits")
    stats = channel_stats(ds.x_train)
    dc = PROTOCOLS["dc"]
    rows = []
    for method in ("random", "herding"):
        s = select(ds, method, IPC, seed=0)
        r = evaluate_set(s.images, s.labels, ds.x_test, ds.y_test, ds.num_classes, "convnet3", dc, repeats, stats=stats)
        rows.append({"method": method, **r.to_dict()})
    r = evaluate_set(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, "convnet3", dc, repeats,
                     epochs=FULL_EPOCHS, stats=stats)
    rows.append({"method": "full data", "synth": "full", **r.to_dict()})
    print(f"\ndigits: {len(ds.x_train)} train / {len(ds.x_test)} test images, 8x8 grey; ConvNet-3, dc protocol, "
          f"{repeats} repeats, final-epoch test accuracy")
    print(format_table(rows))
    write_json(Path(out) / "results.json", {"rows": rows, "manifest": manifest({"ipc": IPC, "repeats": repeats}, 0, time.time() - t0)})
    print(f"\nwrote {Path(out) / 'results.json'} ({time.time() - t0:.0f} s)")
    return rows
