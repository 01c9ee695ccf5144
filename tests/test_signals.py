"""SIGTERM (`kill PID`, a batch system's time limit) in a real `python -m minimaxdd` process: handled as Ctrl-C is,
with a message, exit code 143 (128 + SIGTERM), no traceback and the run's lock released, so the next run needs
no stale-lock take-over (issue 30)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from minimaxdd import files
from minimaxdd.cli import main
from minimaxdd.diffusion import checkpoints as ckpt

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--data", "digits", "--model", "dit-n/2", "--batch", "16", "--log-every", "1", "--precision", "fp32",
              "--device", "cpu"]

# `minimaxdd ARGS` that says when it has written its first checkpoint and then waits there to be signalled: the
# signal lands at a known point (inside the run, holding its lock) however fast the machine is
_HOLD_AFTER_FIRST_CHECKPOINT = """
import sys, time
from minimaxdd.cli import main
from minimaxdd.diffusion import checkpoints
save = checkpoints.save
def save_and_hold(*a, **k):
    save(*a, **k)
    print("checkpointed", flush=True)
    time.sleep(600)
checkpoints.save = save_and_hold
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow     # a real training process, signalled mid-run, then resumed (about 10 s)
def test_sigterm_mid_run_says_so_releases_the_lock_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MINIMAXDD_QUIET": "1"}
    p = subprocess.Popen([sys.executable, "-c", _HOLD_AFTER_FIRST_CHECKPOINT, "train", *TINY_TRAIN, "--steps", "10",
                          "--checkpoint-every", "5", "--out", str(run)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = None
    while said not in ("checkpointed\n", ""):
        said = p.stdout.readline()
    assert said == "checkpointed\n" and files.lock_path(run).exists()     # the run holds its lock now
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, out + err
    assert "minimaxdd train: terminated (SIGTERM); nothing half-written was kept" in err
    assert "Traceback" not in err
    assert not files.lock_path(run).exists()
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["ckpt-00000005.safetensors"]
    with warnings.catch_warnings(record=True) as said_then:
        warnings.simplefilter("always")
        assert main(["train", *TINY_TRAIN, "--steps", "10", "--checkpoint-every", "5", "--resume",
                     "--out", str(run)]) == 0
    assert not [w for w in said_then if "stale lock" in str(w.message)]     # there was none to take over
    assert ckpt.list_checkpoints(run)[-1].name == "ckpt-00000010.safetensors"


def test_sigterm_in_process_restores_the_handler_it_replaced():
    before = signal.getsignal(signal.SIGTERM)
    assert main(["datasets"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
