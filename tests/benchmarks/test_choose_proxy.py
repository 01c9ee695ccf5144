"""benchmarks/choose_proxy.py: matching a candidate to a choose record, and how a proxy's ranking is judged."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("choose_proxy", ROOT / "benchmarks" / "choose_proxy.py")
choose_proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_proxy)

KNOWN = [{"cfg": 2.0, "steps": 18, "mode_guidance": 0.0, "ipc": 10, "val_accuracy": 0.73},
         {"cfg": 2.0, "steps": 18, "mode_guidance": 0.2, "ipc": 10, "val_accuracy": 0.74}]


def test_a_candidate_matches_the_record_with_every_knob_equal_and_unnamed_guides_off():
    assert choose_proxy.match(KNOWN, {"cfg": 2.0, "steps": 18}) == 0.73
    assert choose_proxy.match(KNOWN, {"cfg": 2.0, "steps": 18, "mode_guidance": 0.2}) == 0.74
    assert choose_proxy.match(KNOWN, {"cfg": 3.0, "steps": 18}) is None
    assert choose_proxy.match(KNOWN, {"cfg": 2.0, "steps": 18, "mode_guidance": 0.5}) is None
    assert choose_proxy.match(KNOWN, {"cfg": 2.0, "steps": 18, "deviation": 0.1}) is None


def rows(full, proxy):
    return [{"candidate": {"cfg": float(i)}, "full": f, "p": p} for i, (f, p) in enumerate(zip(full, proxy))]


def test_a_proxy_that_orders_as_full_does_agrees_and_picks_the_same_winner():
    r = choose_proxy.ranking(rows([0.70, 0.80, 0.75, 0.72], [0.1, 0.4, 0.3, 0.2]), "p")
    assert r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
    assert r["same_winner"] and r["regret"] == 0 and r["pick"] == {"cfg": 1.0}


def test_a_reversed_proxy_disagrees_and_its_regret_is_in_full_units():
    r = choose_proxy.ranking(rows([0.70, 0.80, 0.75, 0.72], [0.4, 0.1, 0.2, 0.3]), "p")
    assert r["spearman"] == pytest.approx(-1.0)
    assert not r["same_winner"] and r["regret"] == pytest.approx(0.10) and r["pick"] == {"cfg": 0.0}


def test_a_lower_is_better_proxy_is_ranked_by_its_negative():
    r = choose_proxy.ranking(rows([0.70, 0.80, 0.75], [30.0, 10.0, 20.0]), "p", sign=-1)
    assert r["spearman"] == pytest.approx(1.0) and r["same_winner"]
