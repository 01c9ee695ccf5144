"""`minimaxdd evaluate`: the soft-label protocols (with their cached teacher) and the evaluation image size."""
import json

from minimaxdd.cli import main


def test_evaluate_under_a_soft_protocol_at_another_size(tmp_path, capsys):
    d, r = tmp_path / "D", tmp_path / "r.json"
    assert main(["select", "--method", "random", "--real", "digits", "--ipc", "2", "--out", str(d)]) == 0
    args = ["evaluate", str(d), "--real", "digits", "--protocol", "dc-soft", "--teacher-epochs", "1", "--epochs", "1",
            "--repeats", "1", "--image-size", "16", "--precision", "fp32", "--device", "cpu", "--out", str(r)]
    assert main(args) == 0
    res = json.loads(r.read_text())
    assert res["protocol"] == "dc-soft" and res["protocol_config"]["temperature"] == 20.0
    assert res["image_size"] == 16 and "teacher" in res
    assert res["config"]["image_size"] == 16 and res["config"]["teacher_epochs"] == 1
    assert " dc-soft " in capsys.readouterr().out
