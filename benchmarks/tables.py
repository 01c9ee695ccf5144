"""Render benchmarks/results/*.json as the Markdown tables of BENCHMARKS.md and README.md.

    python benchmarks/tables.py                  # the calibration, DM, solver and throughput tables
    python benchmarks/tables.py readme           # rewrite README.md's current-results table in place
    bash benchmarks/build_benchmarks_md.sh       # rebuild BENCHMARKS.md from its parts and these tables
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parents[1] / "README.md"


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


def _rows(path: Path) -> list[dict]:
    """The accuracy rows of a results file: one row, a list of rows, or {"rows": [...]}."""
    d = json.loads(path.read_text())
    if isinstance(d, list):
        return d
    return d["rows"] if "rows" in d else [d]


def _acc(results: Path, file: str, method: str, ipc: int | None) -> tuple[float, float]:
    """(mean, std) in % of the row `method` at `ipc` of results/`file`."""
    for r in _rows(results / file):
        if r["method"] == method and r.get("ipc") == ipc:
            return 100 * r["mean"], 100 * r["std"]
    raise SystemExit(f"{file}: no row {method} at IPC {ipc}")


def _over_seeds(results: Path, seed0: tuple[str, str], seeds_file: str, method: str, ipc: int) -> tuple[float, float]:
    """Mean +- population std over sampling (or selection) seeds of each seed's mean over classifier repeats:
    seed 0 is the distill run's row (file, method), the other seeds come from a file of `benchmarks/seeds.py`.
    Before issue 28 that script trained every seed's classifiers with the run's seed (0), where the pipeline's one
    seed path trains seed s's with seed s; the table marks cells from such files (a), not those from later ones."""
    import numpy as np

    means = [_acc(results, seed0[0], seed0[1], ipc)[0]]
    row = next(r for r in _rows(results / seeds_file) if r["method"] == method and r["ipc"] == ipc)
    means += [100 * s["mean"] for s in row["per_seed"] if s["seed"] != 0]
    return float(np.mean(means)), float(np.std(means))


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} +- {std:.2f}"


def _half(results: Path, spec: str | tuple, key: str, ipc: int) -> str:
    """One half ("ours" or "random real") of a three-seed cell, by the kinds of `CURRENT`'s "seeds" dict."""
    if isinstance(spec, str):
        return _pm(*_seed_rows(results, spec, ipc)[key])
    if len(spec) == 4:             # a seeds file of the one seed path: no mark
        return _pm(*_over_seeds(results, (spec[0], spec[1]), spec[2], spec[3], ipc))
    method = "generated" if key == "ours" else "random real"
    return _pm(*_over_seeds(results, (spec[0], spec[1]), spec[2], method, ipc)) + " (a)"


def _seed_rows(results: Path, file: str, ipc: int) -> dict[str, tuple[float, float]]:
    """{"ours", "random real"}: mean +- population std over seeds (in %) from a file of the pipeline's one
    seed path (`minimaxdd sweep --seeds`, `ablation --seeds`, `benchmarks/seeds.py` from issue 28 on): a sweep
    file's default point and its random row, or a seeds.py file's rows."""
    d = json.loads((results / file).read_text())
    if "points" in d:
        default = next(p for p in d["points"] if p["dir"] == "default")
        rows = {"ours": default["rows"], "random real": d["random"]}
        pick = {k: next(r for r in v if r["ipc"] == ipc) for k, v in rows.items()}
    else:
        pick = {"ours": next(r for r in d["rows"] if r["method"] == "minimax" and r["ipc"] == ipc),
                "random real": next(r for r in d["rows"] if r["method"] == "random" and r["ipc"] == ipc)}
    return {k: (100 * r["mean"], 100 * r["std"]) for k, r in pick.items()}


# The current results: per row, the file (under benchmarks/results/) of each cell. Baselines and the full-data
# row of a U-Net run are those of the same preset's earlier run where the U-Net run reused them (same data,
# seeds and protocol: BENCHMARKS.md, "The small-data generator"); a column the preset no longer evaluates
# (Fashion-MNIST's k-center and full data since the 45-minute preset) comes from the run that did, by its key.
# "seeds": a sweep file (the pipeline's one seed path, both halves), a tuple of the old seeds.py path (marked
# (a)), or {"ours": ..., "random real": ...} of these per half: a (run file, method, seeds file, method) of the
# one seed path, a sweep file name, or an old-path tuple (run file, method, seeds file) marked (a).
FM, FM_UNET, CIFAR = "distill-fashion-mnist.json", "distill-fashion-mnist-unet", "distill-cifar10-500pc-unet/results.json"
FM45 = "distill-fashion-mnist-45min/results.json"
CURRENT = [
    {"name": "digits, `make demo`", "ipc": 10, "epochs": 150, "full_epochs": 30,
     "ours": "precision-demo-avx2-auto.json", "base": "precision-demo-avx2-auto.json",
     "full": "precision-demo-avx2-auto.json", "seeds": "seeds-digits-demo.json"},
    {"name": "Fashion-MNIST, `--preset fashion-mnist`", "ipc": 10, "epochs": 300, "full_epochs": 1,
     "ours": FM45, "base": FM45, "kcenter": FM, "full": FM,
     "seeds": {"ours": (FM45, "minimax", "distill-fashion-mnist-45min/seeds.json", "minimax"),
               "random real": "fm-lambda-sweep/sweep-lambda_d.json"}},
    {"name": "Fashion-MNIST, `--preset fashion-mnist`", "ipc": 50, "epochs": 100, "full_epochs": 1,
     "ours": FM45, "base": FM45, "kcenter": FM, "full": FM,
     "seeds": {"ours": (FM45, "minimax", "distill-fashion-mnist-45min/seeds.json", "minimax"),
               "random real": (FM, "random", "seeds-fashion-mnist-ipc50.json")}},
    {"name": "CIFAR-10 pool (500/class), `--preset cifar10-500pc`", "ipc": 10, "epochs": 300, "full_epochs": 10,
     "ours": "cifar10-500pc-guidance/minimax-ipc10-cfg4.json", "base": CIFAR, "full": CIFAR,
     "seeds": ((CIFAR, "minimax"), (CIFAR, "random"), "seeds-cifar10-500pc.json")},
    {"name": "CIFAR-10 pool (500/class), `--preset cifar10-500pc`", "ipc": 50, "epochs": 100, "full_epochs": 10,
     "ours": CIFAR, "base": CIFAR, "full": CIFAR,
     "seeds": ((CIFAR, "minimax"), (CIFAR, "random"), "seeds-cifar10-500pc.json")},
]
CURRENT_BEGIN = "<!-- current-results: generated by `python benchmarks/tables.py readme` from benchmarks/results; "\
                "do not edit -->"
CURRENT_END = "<!-- end of current-results -->"


def current(results: Path = RESULTS) -> str:
    """The current-results table (README and the top of BENCHMARKS.md), between its marker comments."""
    out = [CURRENT_BEGIN,
           "| dataset, preset | IPC | ConvNet-3 `dc` epochs | **minimax (ours)** | random real | herding | k-center | "
           "full data | over 3 seeds: ours / random real |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in CURRENT:
        ipc = c["ipc"]
        cells = [f"**{_pm(*_acc(results, c['ours'], 'minimax', ipc))}**"]
        cells += [_pm(*_acc(results, c.get(m, c["base"]), m, ipc)) for m in ("random", "herding", "kcenter")]
        cells.append(f"{_pm(*_acc(results, c['full'], 'full', None))} ({c['full_epochs']} ep.)")
        if isinstance(c["seeds"], (dict, str)):        # per half, or one sweep file for both halves
            halves = c["seeds"] if isinstance(c["seeds"], dict) else dict.fromkeys(("ours", "random real"), c["seeds"])
            cells.append(" / ".join(_half(results, halves[k], k, ipc) for k in ("ours", "random real")))
        elif c["seeds"]:
            ours0, real0, seeds = c["seeds"]
            cells.append(f"{_pm(*_over_seeds(results, ours0, seeds, 'generated', ipc))} / "
                         f"{_pm(*_over_seeds(results, real0, seeds, 'random real', ipc))} (a)")
        else:
            cells.append("not measured")
        out.append(f"| {c['name']} | {ipc} | {c['epochs']} | " + " | ".join(cells) + " |")
    return "\n".join(out + [CURRENT_END])


def replace_current(text: str, table: str) -> str:
    """`text` with its block between the current-results markers replaced by `table` (markers included)."""
    start, end = text.find(CURRENT_BEGIN), text.find(CURRENT_END)
    if start < 0 or end < start:
        raise SystemExit("no current-results markers in the text")
    return text[:start] + table + text[end + len(CURRENT_END):]


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
    elif name == "current":
        print(current())
    elif name == "speed":
        for f in ("diffusion_speed_frozen.json", "diffusion_speed_frozen_fm.json"):
            if (RESULTS / f).exists():
                print(f"`benchmarks/results/{f}`: {speed(RESULTS / f)}\n")
    else:
        raise SystemExit(f"unknown section {name!r}")


# A line of a prose part that is exactly one of these names is replaced by that section's tables.
PLACEHOLDERS = {"CURRENT_TABLE": "current", "SOLVERS_TABLE": "solvers", "THROUGHPUT_COMPILED": "throughput-compiled", "SPEED_TABLE": "speed"}


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
    """python benchmarks/tables.py [SECTION ...] | fill PART.md | readme

    Sections: current, calibration, dm, solvers, throughput, throughput-compiled, speed (default: calibration,
    dm, solvers, throughput). `fill` prints PART.md with its placeholder lines (PLACEHOLDERS) replaced by their
    sections; `readme` rewrites README.md's current-results block from the JSON files.
    """
    import sys

    if sys.argv[1:2] == ["fill"]:
        return fill(sys.argv[2])
    if sys.argv[1:2] == ["readme"]:
        README.write_text(replace_current(README.read_text(), current()))
        return print(f"wrote the current-results table into {README}")
    for name in sys.argv[1:] or ["calibration", "dm", "solvers", "throughput"]:
        section(name)


if __name__ == "__main__":
    main()
