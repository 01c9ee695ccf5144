"""files: atomic writes (modes, failures that name the path), corrupt reads, strict JSON, and run locks."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from minimaxdd import files
from minimaxdd.errors import UserError
from minimaxdd.files import (
    atomic_dir,
    finite_or_null,
    lock_path,
    reading,
    run_lock,
    save_atomic,
    write_failure,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set the process umask for one test, restored after it."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask):
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)):
        umask(mask)
        d = tmp_path / f"m{mask:o}"
        write_json(d / "a.json", {"x": 1})
        save_atomic({"t": torch.zeros(2)}, d / "b.pt")
        with atomic_dir(d / "set") as tmp:
            (tmp / "c.txt").write_text("c")
        assert _mode(d / "a.json") == _mode(d / "b.pt") == file_mode
        assert _mode(d / "set") == dir_mode and _mode(d / "set" / "c.txt") == file_mode
        assert sorted(p.name for p in d.iterdir()) == ["a.json", "b.pt", "set"]   # no temporary left


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(UserError, match=r"cannot write .*b\.pt: the disk is full .*free some space"):
        save_atomic({"t": torch.zeros(2)}, tmp_path / "b.pt")
    assert list(tmp_path.iterdir()) == []
    # an existing set is untouched when its replacement fails half-way
    out = tmp_path / "set"
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(UserError, match="disk is full"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            _enospc()
    assert [p.name for p in tmp_path.iterdir()] == ["set"] and (out / "old.txt").read_text() == "old"
    assert not (out / "new.txt").exists()


def test_write_failures_are_told_apart_from_bugs(tmp_path, monkeypatch):
    # torch.save says a failed write without an errno: put down to the disk only when it is (nearly) full
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert write_failure(tmp_path / "x.pt", err) is None
    monkeypatch.setattr(files, "_free_bytes", lambda p: 1024)
    assert "the disk is full" in str(write_failure(tmp_path / "x.pt", err))
    # safetensors and Python quote the OS error
    e = write_failure(tmp_path / "c.safetensors", RuntimeError("I/O error: Disk quota exceeded (os error 122)"))
    assert "quota" in str(e) and "c.safetensors" in str(e)
    assert "read-only" in str(write_failure(tmp_path / "j", OSError(errno.EROFS, "Read-only file system")))
    assert write_failure(tmp_path / "j", ValueError("a bug")) is None


def test_reading_a_truncated_file_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    good = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000)}, str(good))
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match=r"t\.safetensors is truncated or corrupt .*re-download"):
        with reading(bad, "re-download it"):
            load_file(str(bad))
    torch.save({"a": torch.zeros(1000)}, tmp_path / "o.pt")
    (tmp_path / "o.pt").write_bytes((tmp_path / "o.pt").read_bytes()[:200])
    with pytest.raises(UserError, match=r"o\.pt is truncated or corrupt"):
        with reading(tmp_path / "o.pt", "rerun"):
            torch.load(tmp_path / "o.pt", weights_only=True)
    with pytest.raises(ZeroDivisionError):        # anything else passes unchanged
        with reading(bad, "x"):
            raise ZeroDivisionError


def test_finite_or_null_makes_strict_json():
    rec = finite_or_null({"loss": float("nan"), "a": [1.0, float("inf")], "n": 3, "s": "x"})
    assert rec == {"loss": None, "a": [1.0, None], "n": 3, "s": "x"}
    json.dumps(rec, allow_nan=False)


# ----------------------------------------------------------------------------- run locks

HOLDER = textwrap.dedent("""
    import sys, time
    from minimaxdd.files import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run (killed after the test)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path, holder):
    run = tmp_path / "run"
    with pytest.raises(UserError, match=rf"{run} is in use by another minimaxdd process: pid {holder.pid} on "):
        with run_lock(run):
            pass
    # a directory inside it too: a `train --out RUN/base` beside a distill of RUN
    with pytest.raises(UserError, match=rf"pid {holder.pid} .*it holds {run}, which contains {run / 'base'}"):
        with run_lock(run / "base"):
            pass
    holder.kill()
    holder.wait()
    with pytest.warns(UserWarning, match=rf"taking over the stale lock .*left by pid {holder.pid}.*no longer running"):
        with run_lock(run):           # kill -9 leaves the file; the kernel dropped the lock with the process
            assert json.loads(lock_path(run).read_text())["pid"] == os.getpid()
    assert not lock_path(run).exists()


def test_a_stale_lock_file_is_taken_over_and_the_lock_released_on_errors(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    lock_path(run).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then", "command": "x"}))
    with pytest.warns(UserWarning, match=rf"stale lock .*pid {dead.pid} on h \(started then\)"):
        with pytest.raises(ZeroDivisionError):
            with run_lock(run):
                assert files._HELD
                raise ZeroDivisionError
    assert not lock_path(run).exists() and not files._HELD


def test_the_lock_is_reentrant_within_a_process(tmp_path, monkeypatch):
    # the nested asks take no second flock (which would wait out LOCK_PATIENCE_S and then refuse): counted,
    # not timed
    flocks = []
    real = files._flock_patiently
    monkeypatch.setattr(files, "_flock_patiently", lambda fd: flocks.append(fd) or real(fd))
    run = tmp_path / "run"
    with run_lock(run):
        with run_lock(run), run_lock(run / "base"):        # distill's stages inside the run it holds
            assert not lock_path(run / "base").exists()
        assert lock_path(run).exists() and json.loads(lock_path(run).read_text())["pid"] == os.getpid()
    assert not lock_path(run).exists() and len(flocks) == 1
    with run_lock(run, enabled=False):                   # ranks other than 0
        assert not lock_path(run).exists()
