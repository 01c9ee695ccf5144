"""Sample a trained run at several IPCs and samplers, evaluate each set with the harness, grid it.

Each row: sample IPC k with a sampler and step count (timed), then train --repeats ConvNet-3
classifiers (`dc` protocol, epochs per IPC as in the calibration rows) and report the final test
accuracy mean +- std, plus the generation accuracy (the full-data reference ConvNet-3's agreement
with the conditioning label). Rows are appended to --out as they finish; rerunning skips done rows.

    python benchmarks/diffusion_quality.py --run runs/cifar10-cpu --real npz:../shared/data/cifar10-500pc.npz \
        --rows ddpm:50:10:300,dpm-solver:20:10:300,ddpm:50:50:100 --out benchmarks/results/quality-cifar10.json \
        --grid docs/samples-cifar10.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.grid import save_grid
from minimaxdd.data.sources import load_dataset
from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.reference_classifier import generation_accuracy
from minimaxdd.evaluation.train_test import evaluate_set
from minimaxdd.files import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--rows", required=True, help="sampler:steps:ipc:epochs,...")
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", default=None, help="PNG of the first row's images (10 per class)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--precision", default="auto", help="sampling precision (auto: bf16 where this machine runs it fast)")
    ap.add_argument("--batch-size", type=int, default=100)
    a = ap.parse_args()
    ds = load_dataset(a.real)
    stats = channel_stats(ds.x_train)
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {"run": a.run, "real": a.real, "rows": []}
    done = {(r["sampler"], r["steps"], r["ipc"], r["epochs"], r.get("cfg", 1.0)) for r in doc["rows"]}
    for spec in a.rows.split(","):
        sampler, steps, ipc, epochs = spec.split(":")
        steps, ipc, epochs = int(steps), int(ipc), int(epochs)
        if (sampler, steps, ipc, epochs, a.cfg) in done:
            continue
        t0 = time.time()
        s, info = sample_checkpoint(SampleConfig(ckpt=a.run, out="-", ipc=ipc, steps=steps, sampler=sampler, cfg=a.cfg,
                                                 precision=a.precision, batch_size=a.batch_size, device="cpu"))
        t_sample = time.time() - t0
        if a.grid and not doc["rows"]:
            save_grid(s.images, s.labels, a.grid, per_row=10, scale=2)
        gen = generation_accuracy(ds, s.images, s.labels)
        res = evaluate_set(s.images, s.labels, ds.x_test, ds.y_test, ds.num_classes, "convnet3", PROTOCOLS["dc"],
                           a.repeats, epochs, 0, "cpu", "bf16", stats=stats)
        row = {"sampler": sampler, "steps": steps, "ipc": ipc, "epochs": epochs, "cfg": a.cfg,
               "accuracy": {"mean": res.mean, "std": res.std, "runs": res.runs},
               "generation_accuracy": gen["generation_accuracy"], "reference_test_accuracy": gen["reference_test_accuracy"],
               "sample_time_s": round(t_sample, 1), "sample_images_per_s": info["images_per_s"],
               "checkpoint_step": info["checkpoint_step"], "eval_time_s": res.train_time_s}
        doc["rows"].append(row)
        write_json(out, doc)
        print(f"{sampler} {steps} steps IPC {ipc}: {100 * res.mean:.2f} +- {100 * res.std:.2f} "
              f"(generation accuracy {100 * gen['generation_accuracy']:.1f}%, sampling {t_sample:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
