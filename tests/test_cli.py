"""The command line, in process (main(argv)) and once as `python -m minimaxdd`."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from minimaxdd.cli import main

FAST = ["--precision", "fp32", "--device", "cpu"]  # the same arithmetic on every machine (auto is the default)


def test_select_then_evaluate(tmp_path, capsys):
    d, r = tmp_path / "D", tmp_path / "r.json"
    assert main(["select", "--method", "random", "--real", "digits", "--ipc", "5", "--out", str(d)]) == 0
    assert "wrote 50 images" in capsys.readouterr().out
    assert (d / "data.pt").is_file() and (d / "manifest.json").is_file()
    man = json.loads((d / "manifest.json").read_text())
    assert man["config"]["method"] == "random" and man["ipc"] == 5 and man["num_images"] == 50

    assert main(["evaluate", str(d), "--real", "digits", "--epochs", "10", "--repeats", "2", "--out", str(r),
                 "--seed", "4", *FAST]) == 0
    out = capsys.readouterr().out
    res = json.loads(r.read_text())
    # accuracies are fractions of the 450 test images; mean and (population) std are those of the runs
    assert len(res["runs"]) == 2 and all(abs(a * 450 - round(a * 450)) < 1e-3 for a in res["runs"])
    assert res["mean"] == pytest.approx(statistics.fmean(res["runs"]), abs=1e-9)
    assert res["std"] == pytest.approx(statistics.pstdev(res["runs"]), abs=1e-9)
    assert res["model"] == "convnet3" and res["protocol"] == "dc" and res["ipc"] == 5 and res["seed"] == 4
    assert res["epochs"] == 10 and res["num_images"] == 50 and res["synth"] == str(d)
    assert res["config"]["precision"] == "fp32" and len(res["per_class"]) == 10
    assert res["precision"] == "fp32" and res["precision_requested"] == "fp32" and "precision fp32" in out
    assert f"{100 * res['mean']:.2f}" in out and "per-class accuracy" in out and str(r) in out


def test_evaluate_full(tmp_path, capsys):
    r = tmp_path / "full.json"
    assert main(["evaluate", "--full", "--real", "digits", "--epochs", "2", "--repeats", "1", "--out", str(r), *FAST]) == 0
    res = json.loads(r.read_text())
    assert res["synth"] == "full" and res["num_images"] == 1347 and res["ipc"] is None and len(res["runs"]) == 1
    assert " full " in capsys.readouterr().out


def test_evaluate_names_its_classifier_and_still_takes_the_old_flag_with_a_warning(tmp_path, capsys):
    run = ["evaluate", "--full", "--real", "digits", "--epochs", "1", "--repeats", "1", *FAST]
    r = tmp_path / "a.json"
    assert main([*run, "--classifier", "convnet4", "--out", str(r)]) == 0
    assert json.loads(r.read_text())["model"] == "convnet4" and "deprecated" not in capsys.readouterr().err
    assert main([*run, "--model", "convnet4", "--out", str(r)]) == 0      # the flag's name before issue 28
    assert json.loads(r.read_text())["config"]["classifier"] == "convnet4"
    assert "--model is deprecated" in capsys.readouterr().err
    assert main([*run, "--model", "convnet4", "--classifier", "convnet3"]) == 2
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["evaluate", "{tmp}/nope", "--real", "digits"], "does not exist"),
    (["evaluate", "--real", "digits"], "needs a synthetic set"),
    (["evaluate", "--full", "--real", "mnistt"], "unknown dataset 'mnistt'"),
    (["select", "--method", "random", "--real", "mnistt", "--ipc", "1", "--out", "{tmp}/o"], "unknown dataset 'mnistt'"),
    (["select", "--method", "random", "--real", "digits", "--ipc", "1000", "--out", "{tmp}/o"], "--ipc 1000"),
    (["select", "--method", "random", "--real", "digits", "--ipc", "1", "--out", "{tmp}"], "already exists"),
])
def test_errors_exit_2_with_a_message(tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert needle in captured.err and captured.err.startswith(f"minimaxdd {argv[0]}: error:")
    assert "Traceback" not in captured.err
    assert not (tmp_path / "o").exists()


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["select", "--method", "mean", "--real", "digits", "--ipc", "1", "--out", "x"])
    assert e.value.code == 2 and "invalid choice: 'mean'" in capsys.readouterr().err


def test_datasets_lists_sources(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "cifar10" in out and "imagewoof" in out


def test_python_dash_m_help():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "minimaxdd", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "select" in p.stdout and "evaluate" in p.stdout and p.stdout.startswith("usage: minimaxdd")


def test_machine_reports_the_measurement_and_the_choice(tmp_path, monkeypatch, capsys):
    from minimaxdd import precision as P
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_decided", {})
    assert main(["machine"]) == 0
    out = capsys.readouterr().out
    choice = json.loads((tmp_path / P.CACHE_FILE).read_text())["machines"][P.machine_key()]["choice"]
    assert f"precision auto on the CPU: {choice}" in out and "bf16 autocast against fp32" in out
    assert P.cpu_capability() in out and str(tmp_path) in out
    monkeypatch.setattr(P, "_decided", {})                      # another process: the cached measurement
    assert main(["machine"]) == 0 and "from the cache" in capsys.readouterr().out
