"""Training throughput of the evaluation loop, ours vs the usual way, measured in one run.

ours:  the whole set is one normalised tensor; DSA is applied to the batch at once
       (minimaxdd.evaluate.train_classifier), fp32 or bf16 autocast.
usual: a torch Dataset holding HWC uint8 arrays whose __getitem__ converts, normalises
       and augments one image (one DSA op drawn per image, as per-image transform
       pipelines do), fed through a DataLoader (batch 256, shuffle, num_workers=0: on 2
       cores workers only compete with the training threads), fp32.

Reports images/s of training for ConvNet-3 and ResNet-18 at 32 px, and the wall time of one
`dc` evaluation run (1000 epochs) at IPC 10 and 50, projected from --epochs timed epochs.

    python benchmarks/throughput.py --out benchmarks/results/throughput.json --images 1024 --epochs 10 --trials 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from minimaxdd.data import augment
from minimaxdd.data.dataset import channel_stats, normalise
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.train_test import train_classifier
from minimaxdd.files import write_json
from minimaxdd.precision import resolve_precision
from minimaxdd.runtime import autocast

DC = PROTOCOLS["dc"]


class PerImageDSA(Dataset):
    """The usual pipeline: per-item conversion, normalisation and a random DSA op."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, mean, std, seed: int):
        self.x, self.y = x_hwc, y
        self.mean, self.std = mean[:, None, None], std[:, None, None]
        self.g = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = torch.from_numpy(self.x[i]).permute(2, 0, 1).float().div(255)
        img = (img - self.mean) / self.std
        op = augment.DSA_OPS[self.rng.choice(augment.DSA_STRATEGY)]
        return op(img[None], self.g)[0], int(self.y[i])


def usual_train(x_u8: torch.Tensor, y: torch.Tensor, model_name: str, epochs: int, seed: int, precision: str) -> float:
    """Train the usual way; returns seconds."""
    torch.manual_seed(seed)
    mean, std = channel_stats(x_u8)
    model = build_model(model_name, x_u8.shape[1], 10, x_u8.shape[2])
    opt = torch.optim.SGD(model.parameters(), lr=DC.lr, momentum=DC.momentum, weight_decay=DC.weight_decay)
    ds = PerImageDSA(x_u8.permute(0, 2, 3, 1).numpy(), y.numpy(), mean, std, seed)
    dl = DataLoader(ds, batch_size=DC.batch_size, shuffle=True, num_workers=0,
                    generator=torch.Generator().manual_seed(seed))
    dev = torch.device("cpu")
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in dl:
            with autocast(dev, precision):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def ours_train(x_u8, y, model_name, epochs, seed, precision, compile=False) -> float:
    mean, std = channel_stats(x_u8)
    xn = normalise(x_u8, mean, std, "cpu")
    t0 = time.perf_counter()
    train_classifier(xn, y, model_name, 10, DC, epochs, seed, torch.device("cpu"), precision, compile=compile)
    return time.perf_counter() - t0


def data(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return x, torch.arange(n) % 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    ap.add_argument("--images", type=int, default=1024, help="images per throughput measurement")
    ap.add_argument("--epochs", type=int, default=20, help="epochs timed for the IPC 10 / 50 projections")
    ap.add_argument("--trials", type=int, default=3, help="alternating repeats of each pair (mean +- std)")
    ap.add_argument("--only", choices=("throughput", "dc"), default=None, help="run one half (appends to --out)")
    ap.add_argument("--compile", action="store_true",
                    help="ours trains through torch.compile (`evaluate --compile`); the compile is timed apart")
    a = ap.parse_args()
    os.environ["MINIMAXDD_QUIET"] = "1"
    rows = json.loads(Path(a.out).read_text())["rows"] if (a.only and Path(a.out).exists()) else []

    def pair(label, n, model, epochs, prec_ours, prec_usual="fp32"):
        x, y = data(n)
        # warm-up: first-call costs (and with --compile the compile, on these very shapes) land on neither side
        t0 = time.perf_counter()
        ours_train(x, y, model, 1, 0, prec_ours, a.compile)
        warm = time.perf_counter() - t0
        usual_train(x[:32], y[:32], model, 1, 0, prec_usual)
        ours, usual = [], []
        for t in range(a.trials):  # interleaved, so drift in machine speed hits both
            ours.append(ours_train(x, y, model, epochs, t, prec_ours, a.compile))
            usual.append(usual_train(x, y, model, epochs, t, prec_usual))
        ours_ips = [n * epochs / s for s in ours]
        usual_ips = [n * epochs / s for s in usual]
        ratio = [u / o for o, u in zip(ours, usual)]
        row = {"what": label, "model": model, "images": n, "epochs": epochs,
               "ours_precision": prec_ours + (" compiled" if a.compile else ""), "ours_warmup_s": round(warm, 1),
               "usual_precision": prec_usual, "ours_img_s": [round(v, 1) for v in ours_ips],
               "usual_img_s": [round(v, 1) for v in usual_ips], "speedup": [round(v, 2) for v in ratio],
               "speedup_mean": float(np.mean(ratio)), "speedup_std": float(np.std(ratio)),
               "ours_s_per_epoch": float(np.mean(ours)) / epochs, "usual_s_per_epoch": float(np.mean(usual)) / epochs}
        rows.append(row)
        print(f"{label:<28}{model:<10} ours {prec_ours} {np.mean(ours_ips):7.1f} img/s | usual {prec_usual} "
              f"{np.mean(usual_ips):7.1f} img/s | speedup {np.mean(ratio):.2f} +- {np.std(ratio):.2f}", flush=True)
        write_json(a.out, {"machine": machine, "rows": rows})

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    print(machine)
    ours = resolve_precision("auto", "cpu")     # what `evaluate` runs in by default on this machine
    for model, n in (("convnet3", a.images), ("resnet18", a.images // 8)) if a.only != "dc" else ():
        for prec in ("fp32", "bf16"):
            pair("throughput", n, model, 2, prec, prec)  # same precision: the loop alone
        pair("throughput", n, model, 2, ours, "fp32")  # as each is run by default
    for ipc in (10, 50) if a.only != "throughput" else ():
        pair(f"dc evaluation, IPC {ipc}", ipc * 10, "convnet3", a.epochs, ours, "fp32")
    for r in rows:
        if r["what"].startswith("dc"):
            r["ours_projected_1000_epochs_s"] = r["ours_s_per_epoch"] * DC.epochs
            r["usual_projected_1000_epochs_s"] = r["usual_s_per_epoch"] * DC.epochs
            print(f"{r['what']}: one 1000-epoch run ~ {r['ours_projected_1000_epochs_s'] / 60:.1f} min ours, "
                  f"{r['usual_projected_1000_epochs_s'] / 60:.1f} min usual")
    write_json(a.out, {"machine": machine, "rows": rows})


if __name__ == "__main__":
    main()
