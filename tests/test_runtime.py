"""runtime: progress bars write plain lines now and then into logs, and stay silent when asked."""
from __future__ import annotations

import importlib
import io
import os
import sys

import pytest
import torch

from minimaxdd import runtime
from minimaxdd.runtime import LogLines, progress


def test_progress_writes_lines_not_carriage_returns_when_stderr_is_a_file(monkeypatch, capsys):
    monkeypatch.delenv("MINIMAXDD_QUIET", raising=False)
    with progress(total=1000, desc="train", unit="step") as bar:     # capsys's stderr is not a terminal
        assert isinstance(bar, LogLines)
        for i in range(1000):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")                 # refreshes on every call
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and err.endswith("\n")
    # the start, every tenth, the end: not one line per update
    assert 10 <= len(lines) <= 12, lines
    assert lines[0].startswith("train:   0%") and lines[-1].startswith("train: 100%") and "1000/1000" in lines[-1]


def test_progress_says_where_an_interrupted_loop_stopped(monkeypatch):
    monkeypatch.setattr(runtime, "LOG_LINE_SECONDS", 1e9)               # lines by progress only
    out = io.StringIO()
    bar = LogLines(range(100), desc="dm", file=out, mininterval=0)
    for i in bar:
        if i == 24:
            break
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("dm:  24%")


def test_progress_is_silent_when_quiet(monkeypatch, capsys):
    monkeypatch.setenv("MINIMAXDD_QUIET", "1")
    for _ in progress(range(10), desc="x"):
        pass
    assert capsys.readouterr().err == ""


def test_compile_keeps_inductors_cache_apart_per_cpu_capability(monkeypatch, tmp_path):
    # one inductor cache for two ATEN_CPU_CAPABILITY settings gave NaN weights and a malloc abort (torch 2.13.0)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from minimaxdd.runtime import INDUCTOR_CACHE_VARIABLE, compile_module
    monkeypatch.delenv(INDUCTOR_CACHE_VARIABLE, raising=False)
    net = torch.nn.Linear(3, 2)
    compiled = compile_module(net)
    cap = torch.backends.cpu.get_cpu_capability().lower()
    assert os.environ[INDUCTOR_CACHE_VARIABLE] == os.path.join(default_cache_dir(), f"cpu-{cap}")
    assert torch.equal(compiled(torch.ones(1, 3)), net(torch.ones(1, 3)))
    monkeypatch.setenv(INDUCTOR_CACHE_VARIABLE, default_cache_dir())  # torch's own default, written by torch
    compile_module(net)
    assert os.environ[INDUCTOR_CACHE_VARIABLE] == os.path.join(default_cache_dir(), f"cpu-{cap}")
    monkeypatch.setenv(INDUCTOR_CACHE_VARIABLE, str(tmp_path))     # the user's own choice is kept
    compile_module(net)
    assert os.environ[INDUCTOR_CACHE_VARIABLE] == str(tmp_path)


def test_inductors_default_cache_dir_is_named_even_if_torch_moves_its_function(monkeypatch):
    # compile_module reads it from torch's internal cache_dir_utils; without that module the same rule applies
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from minimaxdd.runtime import inductor_default_cache_dir
    expected = default_cache_dir()
    assert inductor_default_cache_dir() == expected
    monkeypatch.setitem(sys.modules, "torch._inductor.runtime.cache_dir_utils", None)   # its import now fails
    with pytest.raises(ImportError):
        importlib.import_module("torch._inductor.runtime.cache_dir_utils")
    assert inductor_default_cache_dir() == expected
