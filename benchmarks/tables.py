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


def speed(path: Path) -> str:
    """A `diffusion_speed.py --compile --solver ...` run: img/s, ratio to the pattern, share of the matmul rate."""
    d = json.loads(path.read_text())
    c, g = d["config"], d["matmul_gflops"]
    shape = f"{c['channels']}x{c['size']}x{c['size']}"
    f = lambda r, k: f"{r[k]['mean']:.3g}"
    ratio = lambda r, k, base: f"{r[f'{k}/{base}']['mean']:.2f} +- {r[f'{k}/{base}']['std']:.2f}x"
    pct = lambda r, k: f"{100 * r[k]['matmul_fraction']:.0f}%"
    out = [f"{shape} inputs, 1000 classes, learned sigma; {c['trials']} trials; GEMM rate in the run: fp32 "
           f"{g['fp32']:.0f}, bf16 {g['bf16']:.0f} GFLOP/s. Ratios per trial, mean +- std.", "",
           "**Fine-tuning and training** (img/s; % of the matmul rate of its precision)", "",
           "| model | GFLOP / fwd | Difffit: pattern fp32 | ours bf16 | ours compiled | ratio eager / compiled | "
           "training from scratch fp32 / bf16 (batch " + str(c["train_batch"]) + ") |",
           "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in d["rows"]:
        train = (f"{f(r, 'train_fp32')} ({pct(r, 'train_fp32')}) / {f(r, 'train_bf16')} ({pct(r, 'train_bf16')})"
                 if "train_fp32" in r else "not run")
        out.append(f"| {r['model']} | {r['forward_gflop_per_image']:.2f} | {f(r, 'pattern_ft')} ({pct(r, 'pattern_ft')}) | "
                   f"{f(r, 'ours_ft_bf16')} | {f(r, 'ours_ft_bf16_compiled')} ({pct(r, 'ours_ft_bf16_compiled')}) | "
                   f"{ratio(r, 'ours_ft_bf16', 'pattern_ft')} / **{ratio(r, 'ours_ft_bf16_compiled', 'pattern_ft')}** | "
                   f"{train} |")
    gen = [k for k in d["rows"][0] if k.startswith("ours_generate_") and "/" not in k]
    out += ["", "**Sampling** (img/s with guidance; ratio to the pattern's 50 ancestral steps; % of the "
            "matmul rate of its precision)", "",
            "| model | pattern fp32, 50 steps | ours fp32 (eager) | ours bf16 (eager) | ours compiled step | "
            + " | ".join(f"generate {k[len('ours_generate_'):].replace(':time:', ' ')}" for k in gen) + " |",
            "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in gen) + " |"]
    for r in d["rows"]:
        cells = [f"{f(r, k)} (**{ratio(r, k, 'pattern_sample')}**, {pct(r, k)})" for k in gen]
        out.append(f"| {r['model']} | {f(r, 'pattern_sample')} ({pct(r, 'pattern_sample')}) | "
                   f"{f(r, 'ours_sample_fp32')} ({ratio(r, 'ours_sample_fp32', 'pattern_sample')}) | "
                   f"{f(r, 'ours_sample_bf16')} ({ratio(r, 'ours_sample_bf16', 'pattern_sample')}) | "
                   f"{f(r, 'ours_sample_bf16_compiled')} ({ratio(r, 'ours_sample_bf16_compiled', 'pattern_sample')}, "
                   f"{pct(r, 'ours_sample_bf16_compiled')}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def section(name: str) -> None:
    """Print one section's tables (nothing where its results are missing)."""
    if name in ("calibration", "dm"):
        for p in sorted(RESULTS.glob(f"{name}-*.json")):
            print(f"### {p.stem}\n\n{calibration(p)}\n")
    elif name == "solvers":
        for p in sorted(RESULTS.glob("*-solvers.json")):
            print(solvers(p))
    elif name in ("throughput", "throughput-compiled"):
        if (RESULTS / f"{name}.json").exists():
            print(throughput(RESULTS / f"{name}.json"))
    elif name == "speed":
        for f in ("diffusion_speed_frozen.json", "diffusion_speed_frozen_fm.json"):
            if (RESULTS / f).exists():
                print(f"`benchmarks/results/{f}`: {speed(RESULTS / f)}\n")
    else:
        raise SystemExit(f"unknown section {name!r}")


# A line of a prose part that is exactly one of these names is replaced by that section's tables.
PLACEHOLDERS = {"SOLVERS_TABLE": "solvers", "THROUGHPUT_COMPILED": "throughput-compiled", "SPEED_TABLE": "speed"}


def fill(path: str) -> None:
    """Print a prose part with its placeholder lines replaced by their sections."""
    import contextlib
    import io

    for line in Path(path).read_text().splitlines(keepends=True):
        if line.rstrip("\n") in PLACEHOLDERS:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                section(PLACEHOLDERS[line.rstrip("\n")])
            line = buf.getvalue()
        print(line, end="")


def main() -> None:
    """python benchmarks/tables.py [SECTION ...] | fill PART.md

    Sections: calibration, dm, solvers, throughput, throughput-compiled, speed (default: the first four).
    `fill` prints PART.md with its placeholder lines (PLACEHOLDERS) replaced by their sections.
    """
    import sys

    if sys.argv[1:2] == ["fill"]:
        return fill(sys.argv[2])
    for name in sys.argv[1:] or ["calibration", "dm", "solvers", "throughput"]:
        section(name)


if __name__ == "__main__":
    main()
