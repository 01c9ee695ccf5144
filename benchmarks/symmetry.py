"""`flip: auto` on real datasets: the mirror test of `evaluation.symmetry` per dataset, with its cost.

    python benchmarks/symmetry.py digits fashion-mnist npz:../shared/data/cifar10-500pc.npz \
        --out benchmarks/results/symmetry.json

Each row: held-out accuracy of a mirror-free ConvNet-3 on the images as they are, mirrored and turned a
quarter, the ratio the decision reads, the decision, and the seconds it took (no cache: measured afresh).
The test split is never read.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from minimaxdd.data.sources import load_dataset
from minimaxdd.evaluation.symmetry import MIRROR_KEEP, mirror_test
from minimaxdd.files import write_json
from minimaxdd.precision import machine_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    rows = []
    for spec in a.data:
        t0 = time.time()
        ds = load_dataset(spec)
        load_s = time.time() - t0
        m = mirror_test(ds, seed=a.seed, use_cache=False)
        rows.append({"data": spec, "load_s": round(load_s, 2), **dataclasses.asdict(m)})
        print(f"{spec}: {m.describe()}; turned {100 * m.turned_accuracy:.1f}%; {m.time_s:.0f} s "
              f"({m.train_images} training images, {m.epochs} epochs at {m.side} px)", flush=True)
    if a.out:
        write_json(a.out, {"command": "python benchmarks/symmetry.py " + " ".join(a.data), "threshold": MIRROR_KEEP,
                           "seed": a.seed, "machine": machine_report(),
                           "cpu": platform.processor() or platform.machine(), "rows": rows})


if __name__ == "__main__":
    main()
