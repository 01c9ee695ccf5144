"""Sampler quality at fewer steps: sample one checkpoint with several samplers and evaluate each set.

Each spec is SAMPLER:SPACING:STEPS:SEED. For each, `minimaxdd sample` (bf16, one batch of all
images, no guidance) and `minimaxdd evaluate` (ConvNet-3, `dc`, --epochs, 3 repeats, generation
accuracy) run as the CLI runs them; a spec whose evaluation JSON already exists under --work is
not rerun, so the script resumes. The table goes to --out.

    python benchmarks/solvers.py --ckpt runs/fm-base --real fashion-mnist --work runs/solvers \\
        --specs ddpm:time:50:0,ddpm:time:25:0,ddpm:time:20:0,dpm-solver:time:20:0 \\
        --out benchmarks/results/fm-solvers.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minimaxdd.files import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--specs", required=True, help="comma-separated SAMPLER:SPACING:STEPS:SEED")
    ap.add_argument("--work", required=True, help="where the sets and their evaluations go")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cli = [sys.executable, "-m", "minimaxdd"]
    rows = []
    for spec in a.specs.split(","):
        sampler, spacing, steps, seed = spec.split(":")
        name = f"{sampler}-{spacing}-{steps}-s{seed}"
        synth, result = Path(a.work) / name, Path(a.work) / f"{name}-eval.json"
        if not result.exists():
            subprocess.run(cli + ["sample", a.ckpt, "--ipc", str(a.ipc), "--sampler", sampler, "--spacing", spacing,
                                  "--steps", steps, "--seed", seed, "--precision", "auto",
                                  "--batch-size", str(10 * a.ipc), "--out", str(synth), "--overwrite"], check=True)
            subprocess.run(cli + ["evaluate", str(synth), "--real", a.real, "--epochs", str(a.epochs),
                                  "--generation-accuracy", "--out", str(result)], check=True)
        ev = json.loads(result.read_text())
        man = json.loads((synth / "manifest.json").read_text())
        rows.append({"sampler": sampler, "spacing": spacing, "steps": int(steps), "seed": int(seed),
                     "mean": ev["mean"], "std": ev["std"], "runs": ev["runs"],
                     "generation_accuracy": ev["generation"]["generation_accuracy"],
                     "images_per_s": man["images_per_s"], "epochs": ev["epochs"]})
        print(f"{name}: {100 * ev['mean']:.2f} +- {100 * ev['std']:.2f}, generation accuracy "
              f"{100 * ev['generation']['generation_accuracy']:.0f}%", flush=True)
    write_json(a.out, {"ckpt": a.ckpt, "real": a.real, "ipc": a.ipc, "rows": rows})


if __name__ == "__main__":
    main()
