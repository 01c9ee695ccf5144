"""Render benchmarks/results/*.json as the Markdown tables of BENCHMARKS.md.

    python benchmarks/tables.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def calibration(path: Path) -> str:
    rows = json.loads(path.read_text())["rows"]
    out = [f"`{rows[0]['real']}` ({rows[0]['machine']})", "",
           "| method | IPC | epochs | accuracy (%) mean +- std | runs (%) | wall time (selection + all repeats) |",
           "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        ipc = "full" if r["method"] == "full" else str(r["ipc_asked"])
        if "dm" in r:
            r = {**r, "method": f"dm ({r['dm']['iterations']} it., real batch {r['dm']['batch_real']})"}
        runs = ", ".join(f"{100 * v:.1f}" for v in r["runs"])
        out.append(f"| {r['method']} | {ipc} | {r['epochs']} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {runs} | "
                   f"{r['train_time_s'] + r['select_time_s']:.0f} s |")
    return "\n".join(out)


def throughput(path: Path) -> str:
    d = json.loads(path.read_text())
    out = [f"Machine: {d['machine']}", "",
           "| what | model | images x epochs | ours | usual | ours img/s | usual img/s | speedup (usual time / ours) |",
           "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for r in d["rows"]:
        f = lambda v: f"{sum(v) / len(v):.1f}"
        out.append(f"| {r['what']} | {r['model']} | {r['images']} x {r['epochs']} | {r['ours_precision']} | "
                   f"{r['usual_precision']} | {f(r['ours_img_s'])} | {f(r['usual_img_s'])} | "
                   f"{r['speedup_mean']:.2f} +- {r['speedup_std']:.2f} |")
    for r in d["rows"]:
        if "ours_projected_1000_epochs_s" in r:
            out.append(f"\n{r['what']}: one 1000-epoch training run (one repeat), projected from {r['epochs']} "
                       f"timed epochs: {r['ours_projected_1000_epochs_s'] / 60:.1f} min ours, "
                       f"{r['usual_projected_1000_epochs_s'] / 60:.1f} min usual.")
    return "\n".join(out)


def solvers(path: Path) -> str:
    """Per sampler: each set's accuracy, then the mean and std over the sets (sampling seeds)."""
    import numpy as np

    d = json.loads(path.read_text())
    groups: dict[tuple, list] = {}
    for r in d["rows"]:
        groups.setdefault((r["sampler"], r["spacing"], r["steps"]), []).append(r)
    out = [f"`{d['ckpt']}`, IPC {d['ipc']}, ConvNet-3 `dc` {d['rows'][0]['epochs']} epochs x 3 repeats per set", "",
           "| sampler | spacing | steps | sets (seeds) | accuracy per set (%) | mean +- std over sets | "
           "generation accuracy per set | sampling img/s |",
           "| --- | --- | ---: | --- | --- | ---: | --- | ---: |"]
    for (sampler, spacing, steps), rows in groups.items():
        acc = np.array([100 * r["mean"] for r in rows])
        per = ", ".join(f"{a:.2f} +- {100 * r['std']:.2f}" for a, r in zip(acc, rows))
        gen = ", ".join(f"{100 * r['generation_accuracy']:.0f}%" for r in rows)
        ips = np.mean([r["images_per_s"] for r in rows])
        out.append(f"| {sampler} | {spacing} | {steps} | {', '.join(str(r['seed']) for r in rows)} | {per} | "
                   f"{acc.mean():.2f} +- {acc.std():.2f} | {gen} | {ips:.1f} |")
    return "\n".join(out)


def main() -> None:
    """python benchmarks/tables.py [calibration|dm|solvers|throughput] (default: all)."""
    import sys

    want = sys.argv[1:] or ["calibration", "dm", "solvers", "throughput"]
    if "calibration" in want:
        for p in sorted(RESULTS.glob("calibration-*.json")):
            print(f"### {p.stem}\n\n{calibration(p)}\n")
    if "dm" in want:
        for p in sorted(RESULTS.glob("dm-*.json")):
            print(f"### {p.stem}\n\n{calibration(p)}\n")
    if "solvers" in want:
        for p in sorted(RESULTS.glob("*-solvers.json")):
            print(solvers(p))
    if "throughput" in want and (RESULTS / "throughput.json").exists():
        print(throughput(RESULTS / "throughput.json"))
    if "throughput-compiled" in want and (RESULTS / "throughput-compiled.json").exists():
        print(throughput(RESULTS / "throughput-compiled.json"))


if __name__ == "__main__":
    main()
