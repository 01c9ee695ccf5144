"""Peak memory and time of `metrics.set_metrics` on 60000 x 128 random features (10 classes, 500
synthetic): the size of the Fashion-MNIST diagnostics. Run under `/usr/bin/time -v` for the peak RSS.

    /usr/bin/time -v python benchmarks/metrics_memory.py
"""
import time

import torch

from minimaxdd.evaluation import metrics

g = torch.Generator().manual_seed(0)
real_f, real_y = torch.randn(60000, 128, generator=g), torch.arange(60000) % 10
syn_f, syn_y = torch.randn(500, 128, generator=g), torch.arange(500) % 10
t = time.time()
m = metrics.set_metrics(real_f, real_y, syn_f, syn_y, 10)
print(f"{time.time() - t:.0f} s", {k: round(v, 4) for k, v in m.items() if k != "per_class"})
