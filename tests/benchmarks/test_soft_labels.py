"""benchmarks/soft_labels.py's inputs: the set specs, the reused full-data row of a distill run, and --resume."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("soft_labels", ROOT / "benchmarks" / "soft_labels.py")
soft_labels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soft_labels)

FULL = {"method": "full", "ipc": None, "protocol": "dc", "mean": 0.86, "std": 0.005, "runs": [0.855, 0.86, 0.865],
        "epochs": 1, "time_s": 242.0}


def test_a_set_spec_names_method_ipc_and_path_and_the_path_may_hold_colons():
    assert soft_labels.parse_set("minimax+modes:10=runs/a:b/sample/ipc10") == ("minimax+modes", 10,
                                                                               "runs/a:b/sample/ipc10")


def test_the_full_row_comes_from_a_results_file_a_row_list_or_the_row_itself(tmp_path):
    other = {**FULL, "method": "random", "ipc": 10, "mean": 0.7}
    soft = {**FULL, "protocol": "rded", "mean": 0.9}
    for blob in ({"command": "distill", "rows": [other, FULL, soft]}, [other, FULL], FULL):
        p = tmp_path / "r.json"
        p.write_text(json.dumps(blob))
        got = soft_labels.reused_full(p)
        assert (got["mean"], got["runs"], got["epochs"], got["seconds"], got["from"]) == (
            0.86, FULL["runs"], 1, 242.0, str(p))
    p.write_text(json.dumps({"rows": [other, soft]}))
    with pytest.raises(SystemExit, match="expected one full-data dc row, found 0"):
        soft_labels.reused_full(p)


TEACHER = {"teacher": "convnet3 trained 60 epochs", "teacher_test_accuracy": 0.68, "teacher_recipe": {"seed": 0, "milestones": (0.5,)}}
ROW = {"mean": 0.6, "std": 0.01, "runs": [0.59, 0.6, 0.61], "epochs": 300}


def test_resume_keeps_finished_rows_of_the_same_teacher_and_drops_their_scores(tmp_path):
    out = tmp_path / "soft.json"
    assert soft_labels.resumable(out, TEACHER) == {"rows": {}}          # nothing to resume yet
    done = {"method": "random", "ipc": 50, "path": "runs/r50", "dc": ROW, "rded": ROW, "rded-noaug": ROW,
            "ddranking": {"IOR": 0.0}}
    half = {"method": "herding", "ipc": 50, "path": "runs/h50", "dc": ROW}   # stopped inside its set
    out.write_text(json.dumps({"command": "c", "seconds": 10.0, "complete": False, "stopped": "by hand",
                               "teacher": json.loads(json.dumps(TEACHER)), "full_dc": ROW, "rows": [done, half]}))
    kept = soft_labels.resumable(out, TEACHER)
    assert list(kept["rows"]) == [("random", 50, "runs/r50")]
    assert "ddranking" not in kept["rows"][("random", 50, "runs/r50")]    # recomputed with the new rows
    assert kept["full_dc"] == ROW
    assert kept["earlier"] == {"command": "c", "seconds": 10.0, "complete": False, "stopped": "by hand"}


def test_resume_refuses_rows_made_with_another_teacher(tmp_path):
    out = tmp_path / "soft.json"
    out.write_text(json.dumps({"teacher": {**TEACHER, "teacher_test_accuracy": 0.7}, "rows": []}))
    with pytest.raises(SystemExit, match="made with another teacher.*drop --resume"):
        soft_labels.resumable(out, TEACHER)
    with pytest.raises(SystemExit, match="--resume needs --out"):
        soft_labels.resumable(None, TEACHER)


def test_resume_keeps_the_full_row_only_when_the_command_names_the_same_one(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [FULL]}))
    kept = soft_labels.reused_full(results)                      # as an earlier run with this --full saved it
    out = tmp_path / "soft.json"
    assert soft_labels.same_full(kept, soft_labels.reused_full(results), 10, out) is kept
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**FULL, "runs": [0.8, 0.81, 0.82]}))
    with pytest.raises(SystemExit, match="another full-data row.*other.json.*drop --resume"):
        soft_labels.same_full(kept, soft_labels.reused_full(other), 10, out)
    with pytest.raises(SystemExit, match=f"give --full {results}"):           # resumed without its --full
        soft_labels.same_full(kept, None, 10, out)
    trained = {"mean": 0.86, "std": 0.0, "runs": [0.86], "epochs": 1, "seconds": 5.0}
    assert soft_labels.same_full(trained, None, 1, out) is trained
    with pytest.raises(SystemExit, match="trained 1 epochs, not --full-epochs 10; give --full-epochs 1"):
        soft_labels.same_full(trained, None, 10, out)


def test_resume_without_out_is_refused_before_any_data_loads(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["soft_labels.py", "--data", "no-such-data", "--resume"])
    monkeypatch.setattr(soft_labels, "load_dataset", lambda spec: pytest.fail("loaded data before refusing"))
    with pytest.raises(SystemExit) as e:
        soft_labels.main()
    assert e.value.code == 2 and "--resume needs --out" in capsys.readouterr().err
