"""precision auto: the machine's choice, its cache, the warning for a slow bf16, and the real micro-benchmark
under the AVX2-only kernels (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2) that most laptops have."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from minimaxdd import precision as P
from minimaxdd.errors import UserError
from minimaxdd.runtime import autocast

SLOW_BF16 = {"fp32_ms": 2.0, "bf16_ms": 24.0, "ratio": 12.0}     # an AVX2-only CPU (issue 27: 5-60x)
FAST_BF16 = {"fp32_ms": 2.0, "bf16_ms": 0.9, "ratio": 0.45}      # AMX / AVX512-BF16


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache folder and no measurement remembered by this process."""
    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_decided", {})
    monkeypatch.setattr(P, "_warned", set())
    return tmp_path


def fake_machine(monkeypatch, measured, capability=None):
    """This CPU measured as `measured` (with torch capability AVX512 where bf16 is fast, AVX2 where it is slow);
    returns the list of measurements actually made."""
    calls = []
    cap = capability or ("AVX512" if measured["ratio"] < 1 else "AVX2")
    monkeypatch.setattr(P, "cpu_capability", lambda: cap)
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")

    def measure(reps=3):
        calls.append(1)
        return dict(measured)
    monkeypatch.setattr(P, "measure_cpu", measure)
    return calls


@pytest.mark.parametrize("measured, choice", [(SLOW_BF16, "fp32"), (FAST_BF16, "bf16"),
                                              ({"fp32_ms": 2.0, "bf16_ms": 1.9, "ratio": 0.95}, "fp32")])
def test_decide_takes_bf16_only_where_clearly_faster(measured, choice):
    assert P.decide(measured) == choice


def test_auto_follows_the_measurement_on_both_kinds_of_cpu(fresh, monkeypatch):
    fake_machine(monkeypatch, SLOW_BF16)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(P, "_decided", {})
    (fresh / P.CACHE_FILE).unlink()
    fake_machine(monkeypatch, FAST_BF16)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    assert P.resolve_precision("fp32", "cpu") == "fp32"            # an explicit choice stands
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # bf16 where it is fast: no warning
        assert P.resolve_precision("bf16", "cpu") == "bf16"


def test_measurement_is_cached_per_machine_and_isa_setting(fresh, monkeypatch):
    calls = fake_machine(monkeypatch, SLOW_BF16)
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert len(calls) == 1                                          # remembered within the process
    monkeypatch.setattr(P, "_decided", {})                          # a new process: read from the cache folder
    assert P.resolve_precision("auto", "cpu") == "fp32" and len(calls) == 1
    data = json.loads((fresh / P.CACHE_FILE).read_text())
    (key, rec), = data["machines"].items()
    assert key == P.machine_key() and torch.__version__ in key and P.cpu_model() in key
    assert rec["choice"] == "fp32" and rec["ratio"] == 12.0 and rec["capability"] == P.cpu_capability()
    assert P.cpu_choice()["cached"] is True
    # the ISA limits change the kernels, so they are part of the key: measured anew, kept beside the first
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert P.resolve_precision("auto", "cpu") == "fp32" and len(calls) == 2
    assert len(json.loads((fresh / P.CACHE_FILE).read_text())["machines"]) == 2


def test_a_corrupt_cache_is_measured_again(fresh, monkeypatch):
    calls = fake_machine(monkeypatch, FAST_BF16)
    (fresh / P.CACHE_FILE).write_text("{not json")
    assert P.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 1
    assert json.loads((fresh / P.CACHE_FILE).read_text())["version"] == P.CACHE_VERSION


def test_forced_bf16_on_a_slow_cpu_runs_and_warns_once_with_the_ratio(fresh, monkeypatch):
    fake_machine(monkeypatch, SLOW_BF16)
    with pytest.warns(UserWarning, match=r"12\.0x the time of fp32.*precision auto"):
        assert P.resolve_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # once per process
        assert P.resolve_precision("bf16", "cpu") == "bf16"


def test_cuda_uses_the_device_report(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "cuda") == "bf16"
    assert P.resolve_precision("bf16", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(P, "_warned", set())
    assert P.resolve_precision("auto", "cuda:0") == "fp32"
    with pytest.warns(UserWarning, match="does not support bf16"):
        assert P.resolve_precision("bf16", "cuda:0") == "bf16"


def test_unknown_precision_and_unresolved_autocast_are_refused():
    with pytest.raises(UserError, match="fp16.*auto, fp32, bf16"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(UserError, match="resolve it"):
        autocast(torch.device("cpu"), "auto")


def test_manifest_fields_and_start_line(fresh, monkeypatch):
    fake_machine(monkeypatch, SLOW_BF16)
    d = P.describe_precision("auto", "fp32", "cpu")
    assert d["precision_requested"] == "auto" and d["precision"] == "fp32"
    assert d["precision_measurement"]["ratio"] == 12.0
    assert P.precision_line("auto", "fp32", "cpu").startswith("precision fp32 (auto: bf16 measured at 12.0x")
    assert P.describe_precision("fp32", "fp32", "cpu") == {"precision_requested": "fp32", "precision": "fp32"}


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROBE = ("import json, time; from minimaxdd import precision as P; t = time.perf_counter(); "
         "c = P.resolve_precision('auto', 'cpu'); "
         "print(json.dumps({'choice': c, 'seconds': time.perf_counter() - t, **P.cpu_choice()}))")


def test_real_micro_benchmark_under_avx2_only_kernels_never_picks_bf16(tmp_path):
    """The decision itself, not a mocked string: torch and oneDNN limited to AVX2 (the kernels of a CPU without
    native bf16) measure bf16 slower than fp32, and auto takes fp32."""
    env = {**os.environ, **AVX2_ONLY, "MINIMAXDD_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["capability"] == "AVX2" and r["choice"] == "fp32" and r["cached"] is False
    assert r["ratio"] > 1 / P.BF16_MAX_RATIO, r                     # measurably slower, not a tie
    assert r["seconds"] < 5, r                                       # ~0.2 s here; a loose bound, not a timing test
    key = json.loads((tmp_path / P.CACHE_FILE).read_text())["machines"]
    assert any("ONEDNN_MAX_CPU_ISA=AVX2" in k for k in key)


def test_an_avx2_x86_cpu_never_takes_bf16_whatever_a_noisy_measurement_says(fresh, monkeypatch):
    """On x86, native bf16 comes only with AVX-512: below it a measurement that happens to favour bf16 (another
    process loading the CPU) must not choose it."""
    assert not P.bf16_possible("AVX2", "x86_64") and not P.bf16_possible("DEFAULT", "AMD64")
    assert P.bf16_possible("AVX512", "x86_64") and P.bf16_possible("DEFAULT", "aarch64")
    assert P.decide(FAST_BF16, "AVX2") == "fp32" and P.decide(FAST_BF16, "AVX512") == "bf16"
