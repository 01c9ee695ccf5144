"""Sets under hard labels and under RDED's soft-label protocol, with DD-Ranking's scores (issues 29 and 31).

    python benchmarks/soft_labels.py --data fashion-mnist --teacher-epochs 10 \
        --set random:10=RUN/baselines/random-ipc10 --set herding:10=RUN/baselines/herding-ipc10 \
        --set minimax:10=RUN/sample/ipc10 ... --full-epochs 1 --out benchmarks/results/soft-fashion-mnist.json

For every set (METHOD:IPC=PATH, a set folder, .pt or .npz): ConvNet-3 trained on it under `dc` (hard labels,
the presets' shortened epochs: 300 at IPC 10, 100 at IPC 50, unless --hard-epochs says otherwise), under
`rded` (RDED's student training on a fully trained teacher's soft labels, its 300 epochs) and under
`rded-noaug` (the same without augmentation or mixing, the arm ARS needs); the full real training set under
`dc` for HLR. Final-epoch test accuracy, mean and std over --repeats classifiers. Then, per set, DD-Ranking's
HLR, IOR (against `random` at the same IPC), LRS and ARS (`minimaxdd.evaluation.ddranking`). The teacher
(`evaluation.teachers`, recipe "full") is trained once on the whole training set and cached; its test
accuracy is in the output. The test set selects nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from minimaxdd.data.dataset import channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import conform, load_synthetic
from minimaxdd.evaluation.ddranking import scores
from minimaxdd.evaluation.protocols import get_protocol
from minimaxdd.evaluation.teachers import get_teacher
from minimaxdd.evaluation.train_test import evaluate_set
from minimaxdd.files import write_json
from minimaxdd.precision import machine_report

HARD_EPOCHS = {10: 300, 50: 100}   # the small-data presets' shortened dc (fashion-mnist.json, cifar10-500pc.json)


def parse_set(spec: str) -> tuple[str, int, str]:
    """METHOD:IPC=PATH -> (method, ipc, path)."""
    head, path = spec.split("=", 1)
    method, ipc = head.rsplit(":", 1)
    return method, int(ipc), path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets", help="METHOD:IPC=PATH")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=None, help="override the teacher recipe's 200 epochs")
    ap.add_argument("--hard-epochs", type=json.loads, default=None, help='{"10": 300, "50": 100}')
    ap.add_argument("--full-epochs", type=int, default=10, help="dc epochs of the full-data row (HLR)")
    ap.add_argument("--hard", action="append", default=[], help="METHOD:IPC=ROW.json: that set's dc row from a "
                    "distill / ablation run (same protocol and epochs), instead of training it again")
    ap.add_argument("--full", type=Path, default=None, help="a results.json (its `full` dc row) or a row .json: the "
                    "full-data dc row of a distill run on the same data, instead of training it again")
    ap.add_argument("--out", type=Path, help="written after every set, so a stopped run keeps what it measured")
    ap.add_argument("--resume", action="store_true", help="keep what --out already holds for the same teacher: its "
                    "full-data row (refused unless it is the one --full / --full-epochs names) and the rows of the "
                    "same set paths; train only the sets it lacks")
    a = ap.parse_args()
    if a.resume and a.out is None:
        ap.error("--resume needs --out: the file of the run to resume")
    torch.set_flush_denormal(True)
    t0 = time.time()
    ds = load_dataset(a.data)
    stats = channel_stats(ds.x_train)
    hard_epochs = {int(k): v for k, v in (a.hard_epochs or HARD_EPOCHS).items()}
    rded, noaug, dc = get_protocol("rded"), get_protocol("rded-noaug"), get_protocol("dc")
    teacher = get_teacher(rded, ds, "convnet3", "cpu", epochs=a.teacher_epochs)
    print(f"teacher: {teacher.description}, test accuracy {100 * teacher.test_accuracy:.2f}%", flush=True)

    def run(x, y, protocol, epochs, soft):
        r = evaluate_set(x, y, ds.x_test, ds.y_test, ds.num_classes, "convnet3", protocol, a.repeats, epochs, 0,
                         "cpu", stats=stats, teacher=teacher.net if soft else None,
                         teacher_test_accuracy=teacher.test_accuracy if soft else None)
        return {"mean": r.mean, "std": r.std, "runs": r.runs, "epochs": r.epochs, "seconds": r.train_time_s}

    reused = {}
    for spec in a.hard:
        method, ipc, path = parse_set(spec)
        r = json.loads(Path(path).read_text())
        if r["protocol"] != "dc" or r["epochs"] != hard_epochs[ipc]:
            raise SystemExit(f"{path}: a dc row at {hard_epochs[ipc]} epochs is needed, got {r['protocol']} "
                             f"at {r['epochs']}")
        reused[(method, ipc)] = reused_row(r, path)
    rows: list[dict] = []
    kept = resumable(a.out, teacher.record()) if a.resume else {"rows": {}}
    given = reused_full(a.full) if a.full else None
    full = (same_full(kept["full_dc"], given, a.full_epochs, a.out) if kept.get("full_dc")
            else given or run(ds.x_train, ds.y_train, dc, a.full_epochs, False))
    print(f"full dc: {100 * full['mean']:.2f} +- {100 * full['std']:.2f}", flush=True)

    def save(done: bool) -> None:
        if a.out:
            write_json(a.out, {"command": "python benchmarks/soft_labels.py --data " + a.data + "".join(
                f" --set {s}" for s in a.sets) + "".join(f" --hard {h}" for h in a.hard)
                + (f" --full {a.full}" if a.full else f" --full-epochs {a.full_epochs}")
                + (f" --teacher-epochs {a.teacher_epochs}" if a.teacher_epochs else "") + f" --repeats {a.repeats}"
                + (" --resume" if a.resume else ""),
                "complete": done, "teacher": teacher.record(), "full_dc": full, "rows": rows,
                "seconds": round(time.time() - t0, 1), "machine": machine_report(),
                "cpu": platform.processor() or platform.machine(),
                **({"resumed": kept["earlier"]} if kept.get("earlier") else {})})

    for spec in a.sets:
        method, ipc, path = parse_set(spec)
        if (method, ipc, path) in kept["rows"]:
            rows.append(kept["rows"][(method, ipc, path)])
            print(f"{method} IPC {ipc}: kept from {a.out}", flush=True)
            continue
        s = conform(load_synthetic(path), ds.class_names, ds.channels, ds.size)
        row = {"method": method, "ipc": ipc, "path": path,
               "dc": reused.get((method, ipc)) or run(s.images, s.labels, dc, hard_epochs[ipc], False),
               "rded": run(s.images, s.labels, rded, None, True),
               "rded-noaug": run(s.images, s.labels, noaug, None, True)}
        rows.append(row)
        print(f"{method} IPC {ipc}: " + ", ".join(f"{k} {100 * row[k]['mean']:.2f} +- {100 * row[k]['std']:.2f}"
                                                 for k in ("dc", "rded", "rded-noaug")), flush=True)
        save(False)
    for row in rows:
        rnd = next((r for r in rows if r["method"] == "random" and r["ipc"] == row["ipc"]), None)
        if rnd is not None:
            row["ddranking"] = scores(full["mean"], row["dc"]["mean"], row["rded"]["mean"], rnd["rded"]["mean"],
                                      row["rded-noaug"]["mean"], rnd["rded-noaug"]["mean"])
            print(f"{row['method']} IPC {row['ipc']}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                     row["ddranking"].items()), flush=True)
    save(True)


def resumable(out: Path | None, teacher: dict) -> dict:
    """What an earlier run's --out file lets this one keep: its full-data row and its finished set rows, keyed by
    (method, ipc, path). Nothing when the file is absent; an error when it was made with another teacher, since
    its soft rows would not be comparable."""
    if out is None:
        raise SystemExit("--resume needs --out: the file of the run to resume")
    if not out.exists():
        return {"rows": {}}
    blob = json.loads(out.read_text())
    if blob.get("teacher") != json.loads(json.dumps(teacher)):     # as the file holds it (tuples are lists)
        raise SystemExit(f"{out}: made with another teacher ({blob.get('teacher', {}).get('teacher')}, "
                         f"{blob.get('teacher', {}).get('teacher_test_accuracy')}); its rows cannot be kept. "
                         "Give another --out, or drop --resume")
    rows = {(r["method"], r["ipc"], r["path"]): {k: v for k, v in r.items() if k != "ddranking"}
            for r in blob.get("rows", []) if all(k in r for k in ("dc", "rded", "rded-noaug"))}
    earlier = {k: blob[k] for k in ("command", "seconds", "complete", "stopped", "resumed") if k in blob}
    return {"full_dc": blob.get("full_dc"), "rows": rows, "earlier": earlier}


def same_full(kept: dict, given: dict | None, full_epochs: int, out: Path) -> dict:
    """The resumed file's full-data row, once it is the one this command names: the same `--full` row (its runs),
    or, without `--full`, a row trained for `--full-epochs`. HLR is measured against it, so a different one would
    mix two references in one table."""
    if given is not None and (given["runs"], given["epochs"]) != (kept["runs"], kept["epochs"]):
        raise SystemExit(f"{out} holds another full-data row (from {kept.get('from', 'training')}, "
                         f"{kept['epochs']} epochs) than --full {given['from']} ({given['epochs']} epochs). "
                         "Give the --full of the run being resumed, another --out, or drop --resume")
    if given is None and kept.get("from"):
        raise SystemExit(f"{out} holds the full-data row of {kept['from']}; give --full {kept['from']}, "
                         "another --out, or drop --resume")
    if given is None and kept["epochs"] != full_epochs:
        raise SystemExit(f"{out} holds a full-data row trained {kept['epochs']} epochs, not --full-epochs "
                         f"{full_epochs}; give --full-epochs {kept['epochs']}, another --out, or drop --resume")
    return kept


def reused_full(path: Path) -> dict:
    """The full-data dc row of a distill run: a results file (rows, one with method `full`) or the row itself."""
    blob = json.loads(path.read_text())
    rows = blob["rows"] if isinstance(blob, dict) and "rows" in blob else blob if isinstance(blob, list) else [blob]
    full = [r for r in rows if r.get("method") == "full" and r.get("protocol") == "dc"]
    if len(full) != 1:
        raise SystemExit(f"{path}: expected one full-data dc row, found {len(full)}")
    return reused_row(full[0], path)


def reused_row(r: dict, path: str | Path) -> dict:
    """A pipeline row (evaluate/*.json, results.json) in this script's row form, with the file it came from."""
    return {"mean": r["mean"], "std": r["std"], "runs": r["runs"], "epochs": r["epochs"], "seconds": r.get("time_s"),
            "from": str(path)}

if __name__ == "__main__":
    main()
