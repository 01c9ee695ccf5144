"""Time of measuring several sets against one real set: each set on its own (the real-real distances each time,
as `minimaxdd metrics` did before issue 29's last step) against the real side shared (`metrics.real_sides`, as
`run_metrics` does now), in one run, on random features of the Fashion-MNIST diagnostics' size (60000 real rows,
2000 per class used, 10 classes). The numbers must agree exactly; the ratio is the speed-up.

    python benchmarks/metrics_sets.py --sets 6 --dim 1152 --out benchmarks/results/metrics-sets.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from minimaxdd.evaluation import metrics
from minimaxdd.precision import cpu_model
from minimaxdd.runtime import flush_denormals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=6)
    ap.add_argument("--ipc", type=int, default=50, help="images per class of each set")
    ap.add_argument("--dim", type=int, default=1152, help="feature dimension (ConvNet-3 at 28 px pools to 1152)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    flush_denormals()
    g = torch.Generator().manual_seed(0)
    real_f, real_y = torch.randn(60000, a.dim, generator=g), torch.arange(60000) % 10
    sets = [(torch.randn(10 * a.ipc, a.dim, generator=g), torch.arange(10 * a.ipc) % 10) for _ in range(a.sets)]
    t = time.perf_counter()
    alone = [metrics.set_metrics(real_f, real_y, f, y, 10) for f, y in sets]
    alone_s = time.perf_counter() - t
    t = time.perf_counter()
    sides = metrics.real_sides(real_f, real_y, 10)
    shared = [metrics.set_metrics(real_f, real_y, f, y, 10, sides=sides) for f, y in sets]
    shared_s = time.perf_counter() - t
    assert shared == alone, "sharing the real side changed a number"
    out = {"sets": a.sets, "ipc": a.ipc, "dim": a.dim, "each_alone_s": round(alone_s, 1),
           "shared_s": round(shared_s, 1), "speedup": round(alone_s / shared_s, 2),
           "cpu": cpu_model(), "threads": torch.get_num_threads(),
           "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    print(json.dumps(out))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
