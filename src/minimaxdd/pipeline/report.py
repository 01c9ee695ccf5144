"""`minimaxdd report RUN`: RUN/report.md with its figures, from what the distill stages wrote.

Everything comes from files in RUN (config.json, <stage>/stage.json, evaluate/*.json, the
synthetic and baseline sets), so the report can be rebuilt at any time without rerunning.
"""
from __future__ import annotations

import json
from pathlib import Path

from minimaxdd.data.grid import save_grid
from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.errors import UserError
from minimaxdd.evaluation.metrics import format_metrics
from minimaxdd.evaluation.protocols import PROTOCOLS
from minimaxdd.evaluation.train_test import BEST_OF_CHECKS
from minimaxdd.files import write_text
from minimaxdd.pipeline.bookkeeping import STAGES

ORDER = ("random", "herding", "kcenter", "medoids", "dm", "full")
OPTIONAL_NOTE = ("Each beside its control, from the `extras` stage: `*-poolK-herding` keeps IPC of K x IPC samples per "
                 "class by herding in the reference classifier's feature space, `*-poolK-random` keeps IPC of the same "
                 "pool at random; `medoids-sigmaS` is the real class medoids noised to sigma S and denoised by the "
                 "fine-tuned model, `medoids` the medoids themselves.")


def _load_rows(run: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((run / "evaluate").glob("*.json"))]
    return [r for r in rows if "mean" in r]


def _method_order(rows: list[dict]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ours = [m for m in methods if m not in ORDER]
    return ours + [m for m in ORDER if m in methods]


def _groups(rows: list[dict]) -> list[tuple[str, str]]:
    """(model, protocol) of each table, hard-label protocols first: tables never mix protocols."""
    keys = list(dict.fromkeys((r["model"], r["protocol"]) for r in rows))
    return sorted(keys, key=lambda mp: (_is_soft(mp[1]), keys.index(mp)))


def _is_soft(protocol: str) -> bool:
    """Whether rows under `protocol` learned from a teacher (a name no longer known counts as hard)."""
    return protocol in PROTOCOLS and PROTOCOLS[protocol].soft


def accuracy_tables(rows: list[dict]) -> str:
    """One Markdown table per (classifier, protocol); soft-label tables after the hard ones, said to be so."""
    out = []
    for model, proto in _groups(rows):
        rs = [r for r in rows if r["model"] == model and r["protocol"] == proto]
        ipcs = sorted({r["ipc"] for r in rs if r["ipc"] is not None})
        soft = _is_soft(proto)
        tacc = rs[0].get("teacher_test_accuracy")
        note = (" Soft labels: a teacher trained on the full real training set labels every augmented batch and "
                "the classifier learns its softened outputs; not comparable with the hard-label tables."
                + (f" Teacher: {rs[0].get('teacher', '?')}, {100 * tacc:.2f}% test accuracy." if tacc is not None
                   else "") if soft else "")
        size = rs[0].get("image_size")
        out += [f"**{model}**, `{proto}` protocol{f' at {size} px' if size else ''}, final-epoch test accuracy (%), "
                f"mean +- std over {len(rs[0]['runs'])} repeats (epochs in brackets).{note}", "",
                "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + (" |" if soft else " | full data |"),
                "| --- | " + " | ".join("---:" for _ in ipcs) + (" |" if soft else " | ---: |")]
        for m in _method_order(rs):
            cells = []
            for k in [*ipcs, *([] if soft else [None])]:
                r = next((r for r in rs if r["method"] == m and r["ipc"] == k), None)
                cells.append("" if r is None else f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} ({r['epochs']})")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def ddranking_table(scores: list[dict]) -> list[str]:
    """DD-Ranking's scores per (classifier, set, IPC), from RUN/ddranking.json (`pipeline.evaluation`)."""
    if not scores:
        return []
    out = ["## DD-Ranking scores", "",
           "HLR = full-data hard accuracy - the set's hard accuracy, IOR = the set's soft accuracy - random real's "
           "(percentage points); LRS = norm(0.5 IOR - 0.5 HLR), ARS = norm(0.5 gain over random with augmentation "
           "+ 0.5 without), norm(a) = (e^a - e^-1) / (e - e^-1) on fractions, in percent (NUS-HPC-AI-Lab/"
           "DD-Ranking). From our final-epoch accuracies, so not DD-Ranking's own numbers.", "",
           "| classifier | protocols | method | IPC | HLR | IOR | LRS | ARS |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in scores:
        cells = [f"{s[k]:.2f}" if k in s else "" for k in ("hlr", "ior", "lrs", "ars")]
        out.append(f"| {s['model']} | {s['hard_protocol']} / {s['protocol']} | {s['method']} | {s['ipc']} | "
                   + " | ".join(cells) + " |")
    return [*out, ""]


def best_of_checks_table(rows: list[dict]) -> list[str]:
    """`evaluate.report_best`: each row's final-epoch accuracy beside the best of its periodic test checks, in a
    section apart from the accuracy tables; nothing when no row has checks."""
    rs = [r for r in rows if BEST_OF_CHECKS in r]
    if not rs:
        return []
    out = ["## For comparison with published tables only", "",
           "SRe2L, RDED and DD-Ranking report the best test accuracy over periodic checks during training, which "
           "lets the test set pick the epoch. Our result is the final-epoch accuracy (the tables above); the column "
           "on the right is that published way of counting, given only to line our rows up with published ones. "
           "Mean +- std over repeats (%).", "",
           f"| classifier | protocol | method | IPC | final epoch (the result) | {BEST_OF_CHECKS} | epochs checked |",
           "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rs:
        b = r[BEST_OF_CHECKS]
        e = b["epochs_checked"]
        checked = ", ".join(map(str, e)) if len(e) <= 4 else f"{e[0]}, {e[1]}, ..., {e[-1]}"
        out.append(f"| {r['model']} | {r['protocol']} | {r['method']} | {'full' if r['ipc'] is None else r['ipc']} | "
                   f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {100 * b['mean']:.2f} +- {100 * b['std']:.2f} | "
                   f"{checked} |")
    return [*out, ""]


def generation_lines(rows: list[dict]) -> list[str]:
    """One sentence per generated set (method, IPC): its generation accuracy does not depend on the classifier
    being evaluated, so rows of several classifiers say the same number once."""
    seen, lines = set(), []
    for r in rows:
        if "generation_accuracy" not in r or (r["method"], r["ipc"]) in seen:
            continue
        seen.add((r["method"], r["ipc"]))
        lines.append(f"- Generation accuracy of the {r['method']} set at IPC {r['ipc']}: "
                     f"{100 * r['generation_accuracy']:.1f}% of its images are assigned to their own class by a "
                     f"classifier trained on the full data ({100 * r['reference_test_accuracy']:.1f}% on the real "
                     "test set).")
    return lines + [""] if lines else []


def accuracy_plot(rows: list[dict], path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r["ipc"] is not None]
    if not rs:
        return None
    groups = _groups(rs)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (model, proto) in zip(axes[0], groups):
        sub = [r for r in rs if r["model"] == model and r["protocol"] == proto]
        ipcs = sorted({r["ipc"] for r in sub})
        methods = [m for m in _method_order(sub) if m != "full"]
        w = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            xs, ys, es = [], [], []
            for j, k in enumerate(ipcs):
                r = next((r for r in sub if r["method"] == m and r["ipc"] == k), None)
                if r is not None:
                    xs.append(j + i * w - 0.4 + w / 2)
                    ys.append(100 * r["mean"])
                    es.append(100 * r["std"])
            ax.bar(xs, ys, w, yerr=es, label=m, capsize=2)
        full = next((r for r in rows if r["model"] == model and r["protocol"] == proto and r["ipc"] is None), None)
        if full is not None:
            ax.axhline(100 * full["mean"], color="k", ls="--", lw=1, label=f"full data ({full['epochs']} ep.)")
        ax.set_xticks(range(len(ipcs)), [f"IPC {k}" for k in ipcs])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, {proto}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stage_table(run: Path) -> str:
    """Wall time, peak memory and notes of each stage that ran."""
    out = ["| stage | wall time | peak memory (process RSS; CUDA) | images/s | notes |",
           "| --- | ---: | ---: | ---: | --- |"]
    for s in STAGES[:-1]:
        f = run / s / "stage.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        if not d.get("done"):
            out.append(f"| {s} | (interrupted) | | | |")
            continue
        mem = f"{d.get('peak_rss_mb', 0):.0f} MB" + (f"; {d['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in d else "")
        notes = []
        for k in ("steps", "objective", "stopped", "trainable_params", "checkpoint"):
            if d.get(k) not in (None, ""):
                notes.append(f"{k} {d[k]}")
        out.append(f"| {s} | {d['time_s']:.0f} s | {mem} | {d.get('images_per_s', '')} | {'; '.join(notes)} |")
    ev = _load_rows(run)
    if ev:
        out.append(f"| evaluate | {sum(r['time_s'] for r in ev):.0f} s | | | {len(ev)} rows (classifier training) |")
    return "\n".join(out)


def _choice_lines(run: Path) -> list[str]:
    """The `choose` stage's candidates and their validation accuracies, if it compared any."""
    f = run / "choose" / "stage.json"
    d = json.loads(f.read_text()) if f.exists() else {}
    if not d.get("scores"):
        return []
    chosen = d.get("by_ipc") or {str(d["ipc"]): d["sample"]}
    knobs = [k for k in d["scores"][0] if k not in ("cfg", "steps", "ipc", "val_accuracy")]   # the guides' knobs
    lines = ["## Sampling settings chosen on training data", "",
             f"Each candidate sampled IPC images per class (a seed of its own), a classifier trained on them was "
             f"tested on {d['val_images']} training images held out as a validation split; the test set was not "
             f"read. Chosen: " + "; ".join(f"IPC {k}: {v}" for k, v in chosen.items()) + ".", "",
             "| guidance | steps | " + "".join(f"{k} | " for k in knobs) + "IPC | validation accuracy (%) |",
             "| ---: | ---: | " + "---: | " * len(knobs) + "---: | ---: |"]
    shown = lambda v: "default" if v is None else v   # noqa: E731  (null: the checkpoint's or the package's)
    lines += [f"| {shown(s['cfg'])} | {shown(s['steps'])} | " + "".join(f"{shown(s[k])} | " for k in knobs)
              + f"{s.get('ipc', d['ipc'])} | {100 * s['val_accuracy']:.2f} |" for s in d["scores"]]
    return lines + [""]


def _flip_lines(run: Path) -> list[str]:
    """How `flip: auto` was decided for the base model's training, if it was."""
    f = run / "base" / "stage.json"
    m = (json.loads(f.read_text()) if f.exists() else {}).get("flip_auto")
    if not m:
        return []
    return ["## Flips decided from the data", "",
            f"The base model's training set `flip: auto`. A ConvNet-3 trained without mirrors on "
            f"{m['train_images']} training images ({m['epochs']} epochs, {m['side']} px) classified "
            f"{m['val_images']} held-out training images with {100 * m['accuracy']:.1f}% accuracy as they are and "
            f"{100 * m['mirrored_accuracy']:.1f}% mirrored (chance {100 * m['chance']:.1f}%; "
            f"{100 * m['turned_accuracy']:.1f}% turned a quarter). "
            + ("It learned too little to tell" if m["keep"] is None else
               f"The mirrored images kept {m['keep']:.2f} of its accuracy above chance (on at >= {m['threshold']:.2f})")
            + f": flips **{'on' if m['flip'] else 'off'}**. The test set was not read.", ""]


def write_report(run: str | Path) -> Path:
    """RUN/report.md (and its figures) from what the stages wrote."""

    run = Path(run)
    if not (run / "config.json").exists():
        raise UserError(f"{run} is not a distill run (no config.json); run `minimaxdd distill --out {run}` first")
    cfg = json.loads((run / "config.json").read_text())
    rows = _load_rows(run)
    fig_dir = run / "figures"
    fig_dir.mkdir(exist_ok=True)
    lines = [f"# Distillation report: `{run.name}`", "",
             f"Data `{cfg['data']}`; IPC {', '.join(map(str, cfg['ipc']))}; seed {cfg['seed']}; "
             f"device {cfg['device']}.", ""]
    if not rows:
        lines += ["No evaluation has finished yet.", ""]
    else:
        main, optional = [r for r in rows if not r.get("optional")], [r for r in rows if r.get("optional")]
        lines += ["## Accuracy", "", accuracy_tables(main), *generation_lines(main)]
        if (run / "ddranking.json").exists():
            lines += ddranking_table(json.loads((run / "ddranking.json").read_text()))
        if optional:
            lines += ["## Optional rows (not the method's result)", "", OPTIONAL_NOTE, "",
                      accuracy_tables(optional), *generation_lines(optional)]
        lines += best_of_checks_table(rows)
        plot = accuracy_plot(main, fig_dir / "accuracy.png")
        if plot:
            lines += [f"![accuracy]({plot.relative_to(run)})", ""]
    stale = sorted((run / "evaluate" / "stale").glob("*.json"))
    if stale:
        lines += [f"{len(stale)} row(s) of an earlier configuration of this run (not shown) are kept in "
                  f"`evaluate/stale/`: {', '.join(f.stem for f in stale)}.", ""]
    # grids: synthetic next to random real images of the same classes
    k = max(cfg["ipc"])
    syn = run / "sample" / f"ipc{k}"
    rnd = run / "baselines" / f"random-ipc{k}"
    if (syn / "data.pt").exists():
        s = load_synthetic(syn)
        save_grid(s.images, s.labels, fig_dir / "synthetic.png", per_row=min(10, k))
        cells = ["synthetic", "![synthetic](figures/synthetic.png)"]
        if (rnd / "data.pt").exists():
            r = load_synthetic(rnd)
            save_grid(r.images, r.labels, fig_dir / "random-real.png", per_row=min(10, k))
            cells += ["random real", "![random real](figures/random-real.png)"]
        lines += ["## Images (one row per class)", "", "| " + " | ".join(cells[0::2]) + " |",
                  "| " + " | ".join("---" for _ in cells[0::2]) + " |", "| " + " | ".join(cells[1::2]) + " |", ""]
    for extra in ("tsne.png",):
        if (fig_dir / extra).exists():
            lines += [f"![{extra}](figures/{extra})", ""]
    lines += _flip_lines(run) + _choice_lines(run)
    metrics = run / "metrics.json"
    if metrics.exists():
        lines += ["## Diagnostics", "", format_metrics(json.loads(metrics.read_text())), ""]
    lines += ["## Stages", "", _stage_table(run), "",
              "## Config", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    path = run / "report.md"
    write_text(path, "\n".join(lines))
    return path
