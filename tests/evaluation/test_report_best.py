"""`report_best`: periodic test checks beside the final-epoch result, for comparison with published tables only."""
from __future__ import annotations

import json

import pytest

from minimaxdd.baselines.coreset import random_indices
from minimaxdd.evaluation import train_test
from minimaxdd.evaluation.train_test import BEST_OF_CHECKS, check_epochs, evaluate_set


@pytest.mark.parametrize("epochs,every,want", [(10, None, list(range(1, 11))), (300, None, list(range(30, 301, 30))),
                                               (7, 3, [3, 6, 7]), (5, 10, [5]), (25, None, [2 * i for i in
                                                                                            range(1, 13)] + [25])])
def test_check_epochs_every_k_and_always_the_last(epochs, every, want):
    assert check_epochs(epochs, every) == want


_PREDICT = train_test.predict


def _run(digits, monkeypatch, **kw):
    """evaluate_set on 3 digits per class, 5 epochs, 2 repeats unless told; also the number of test-set passes (`predict`
    calls on the test images)."""
    calls = []

    def counting(model, x, *a, **k):
        calls.append(len(x))
        return _PREDICT(model, x, *a, **k)
    monkeypatch.setattr(train_test, "predict", counting)
    idx = random_indices(digits.y_train, digits.num_classes, 3, 0)
    kw.setdefault("repeats", 2)
    r = evaluate_set(digits.x_train[idx], digits.y_train[idx], digits.x_test, digits.y_test, digits.num_classes,
                     epochs=5, precision="fp32", **kw)
    assert set(calls) <= {len(digits.x_test)}
    return r, len(calls)


def test_report_best_is_off_by_default_and_leaves_the_final_epoch_bit_identical(digits, monkeypatch):
    off, passes = _run(digits, monkeypatch)
    assert passes == 2                                # off (the default): one test pass per repeat, after training
    assert off.checks is None and BEST_OF_CHECKS not in off.to_dict() and "checks" not in off.to_dict()
    on, passes = _run(digits, monkeypatch, report_best=True, check_every=2)
    assert passes == 2 * (2 + 1)                      # epochs 2 and 4 per repeat, then the final test (epoch 5)
    assert on.runs == off.runs and on.per_class == off.per_class and on.mean == off.mean
    assert [[e for e, _ in c] for c in on.checks] == [[2, 4, 5]] * 2
    assert [c[-1][1] for c in on.checks] == on.runs   # the last check is the final-epoch test itself
    rec = on.to_dict()[BEST_OF_CHECKS]
    assert rec["runs"] == [max(a for _, a in c) for c in on.checks]
    assert all(b >= f for b, f in zip(rec["runs"], on.runs))
    assert rec["mean"] == pytest.approx(sum(rec["runs"]) / 2) and rec["epochs_checked"] == [2, 4, 5]
    assert on.to_dict()["mean"] == off.to_dict()["mean"]


def test_report_best_checks_a_tenth_of_the_epochs_by_default(digits, monkeypatch):
    r, passes = _run(digits, monkeypatch, report_best=True, repeats=1)
    assert [[e for e, _ in c] for c in r.checks] == [[1, 2, 3, 4, 5]] and passes == 5  # 4 + the final


def test_evaluate_cli_report_best_prints_and_records_it_beside_the_result(tmp_path, capsys):
    from minimaxdd.cli import main
    out = tmp_path / "r.json"
    assert main(["evaluate", "--real", "digits", "--full", "--epochs", "2", "--repeats", "1", "--device", "cpu",
                 "--precision", "fp32", "--report-best", "--check-every", "1", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    b = d[BEST_OF_CHECKS]
    assert b["epochs_checked"] == [1, 2] and b["checks"][0][-1] == d["runs"][0]   # the last check is the result
    assert b["runs"] == [max(b["checks"][0])] and b["mean"] >= d["mean"]
    printed = capsys.readouterr().out
    assert f"{BEST_OF_CHECKS}: {100 * b['mean']:.2f}" in printed and f"{100 * d['mean']:>8.2f} +- " in printed


def test_choose_never_asks_for_the_checks(digits, monkeypatch, tmp_path):
    """choose scores candidates on a validation split by the final epoch; evaluate.report_best does not reach it."""
    from types import SimpleNamespace

    from minimaxdd.data.dataset import validation_split
    from minimaxdd.pipeline import choice
    from minimaxdd.pipeline.config import build_config
    idx = random_indices(digits.y_train, digits.num_classes, 2, 0)
    monkeypatch.setattr(choice, "sample_checkpoint",
                        lambda c, embed=None: (SimpleNamespace(images=digits.x_train[idx], labels=digits.y_train[idx]), None))
    asked, real = [], train_test.evaluate_set

    def spy(*a, **kw):
        asked.append(kw.get("report_best", False))
        return real(*a, **kw)
    monkeypatch.setattr(train_test, "evaluate_set", spy)
    cfg = build_config(None, {"data": "digits", "evaluate": {"report_best": True, "check_every": 1},
                              "choose": {"epochs": 2}})
    _, passes = _run_choose(choice, cfg, digits, validation_split(digits, 0.1, 0), tmp_path, monkeypatch)
    assert asked == [False] and passes == 1            # one classifier, tested once, after its last epoch


def _run_choose(choice, cfg, ds, split, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_test, "predict", lambda *a, **k: calls.append(1) or _PREDICT(*a, **k))
    score = choice._score(cfg, "ckpt", {"cfg": 1.0, "steps": 3}, ds, split, 2, tmp_path, "cpu")
    return score, len(calls)
