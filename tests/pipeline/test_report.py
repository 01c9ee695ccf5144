"""report.md from evaluation rows: one table per classifier and protocol (soft labels apart), and a generated
set's generation accuracy said once, however many classifiers evaluated it."""
import json

from minimaxdd.pipeline.report import accuracy_tables, generation_lines, write_report


def _row(method, model, protocol, ipc=10, mean=0.5, **kw):
    return {"method": method, "ipc": ipc, "model": model, "protocol": protocol, "mean": mean, "std": 0.01,
            "runs": [mean], "epochs": 300, "time_s": 1.0, **kw}


ROWS = [_row(m, model, p, generation_accuracy=0.8, reference_test_accuracy=0.9) if m == "minimax" and
        not p.endswith("-soft") else _row(m, model, p)
        for model in ("convnet6", "resnetap10", "resnet18") for p in ("idc", "idc-soft") for m in ("minimax", "random")]


def test_tables_never_mix_protocols_and_soft_tables_come_after():
    text = accuracy_tables(ROWS)
    heads = [line for line in text.splitlines() if line.startswith("**")]
    assert len(heads) == 6
    assert all("`idc` protocol" in h for h in heads[:3]) and all("`idc-soft` protocol" in h for h in heads[3:])
    assert all("Soft labels" in h and "not comparable" in h for h in heads[3:])
    # random real stands beside ours under each protocol
    tables = text.split("**")[2::2]
    assert all("| minimax |" in t and "| random |" in t for t in tables)


def test_generation_accuracy_is_said_once_per_set(tmp_path):
    lines = generation_lines(ROWS)
    assert sum("Generation accuracy" in line for line in lines) == 1
    run = tmp_path / "run"
    (run / "evaluate").mkdir(parents=True)
    for i, r in enumerate(ROWS):
        (run / "evaluate" / f"{i}.json").write_text(json.dumps(r))
    (run / "config.json").write_text(json.dumps({"data": "x", "ipc": [10], "seed": 0, "device": "cpu"}))
    report = write_report(run).read_text()
    assert report.count("Generation accuracy of the minimax set at IPC 10") == 1


def test_best_of_checks_only_when_recorded_apart_from_the_accuracy_tables(tmp_path):
    from minimaxdd.evaluation.train_test import BEST_OF_CHECKS
    best = {"mean": 0.7, "std": 0.0, "runs": [0.7], "epochs_checked": [30, 60, 90, 300], "checks": [[0.6, 0.7, 0.6, 0.5]]}
    with_best = [{**r, BEST_OF_CHECKS: best} for r in ROWS]
    assert accuracy_tables(with_best) == accuracy_tables(ROWS)       # the headline tables never show it
    run = tmp_path / "run"
    (run / "evaluate").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": "x", "ipc": [10], "seed": 0, "device": "cpu"}))
    for rows in (ROWS, with_best):
        for i, r in enumerate(rows):
            (run / "evaluate" / f"{i}.json").write_text(json.dumps(r))
        report = write_report(run).read_text()
        assert (BEST_OF_CHECKS in report) == (rows is with_best)
    accuracy_part, best_part = report.split("## For comparison with published tables only")
    assert BEST_OF_CHECKS not in accuracy_part
    assert f"| final epoch (the result) | {BEST_OF_CHECKS} |" in best_part
    assert "| convnet6 | idc | minimax | 10 | 50.00 +- 1.00 | 70.00 +- 0.00 | 30, 60, 90, 300 |" in best_part
