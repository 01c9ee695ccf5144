"""Bad inputs and faults, one table: each case runs the command line (in process, `cli.main(argv)`) and checks
the exit code, that the message names the problem and the fix, that no traceback shows, that nothing
half-written is left and that what was there before keeps its bytes. A few cases run `python -m minimaxdd`
for what only a real process shows (a closed output pipe, a traceback for a genuine bug, kill -9).

Exit codes (minimaxdd.errors): 2 for every error a user can fix, 130 for Ctrl-C, 141 for a closed pipe.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors import SafetensorError

from minimaxdd import cli, files
from minimaxdd.baselines import distribution_matching, registry
from minimaxdd.cli import main
from minimaxdd.diffusion import checkpoints as ckpt

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--precision", "fp32", "--device", "cpu"]
TINY_TRAIN = ["--data", "digits", "--model", "dit-n/2", "--batch", "16", "--log-every", "1", *FAST]
SELECT = ["select", "--method", "random", "--ipc", "1"]


# ---------------------------------------------------------------------------------------------
# what the cases build


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny trained run (dit-n/2 on digits, 2 steps): the checkpoint of the sample / finetune / resume cases."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", *TINY_TRAIN, "--steps", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    return out


@dataclass
class Ctx:
    """What a case's set-up gets: its folder, the base run, and clean-ups to run after the case."""
    tmp: Path
    base: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)


def npz(ctx: Ctx, name: str = "d.npz", **over) -> str:
    """An npz dataset (2 classes, 4 images each, 1x4x4), with `over` replacing or adding arrays."""
    x = np.arange(8 * 16, dtype=np.uint8).reshape(8, 1, 4, 4)
    a = {"x_train": x, "y_train": np.repeat(np.arange(2), 4), "x_test": x, "y_test": np.repeat(np.arange(2), 4)}
    a.update(over)
    a = {k: v for k, v in a.items() if v is not None}
    np.savez(ctx.tmp / name, **a)
    return f"npz:{ctx.tmp / name}"


def folder(ctx: Ctx, classes=("a", "b"), bad: bytes | None = None, bad_name: str = "2.png") -> str:
    """An image folder of 8x8 grey PNGs; `bad`: the bytes of one more file in train/<first class>/."""
    root = ctx.tmp / "f"
    for s in ("train", "val"):
        for c in classes:
            (root / s / c).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), 40 * i).save(root / s / c / f"{i}.png")
    if bad is not None:
        (root / "train" / classes[0] / bad_name).write_bytes(bad)
    return f"imagefolder:{root}"


def existing(ctx: Ctx, name: str = "out") -> Path:
    """An output of ours that was there before the command: the case checks that it keeps its bytes."""
    d = ctx.tmp / name
    d.mkdir()
    (d / "data.pt").write_bytes(b"the previous run's set")
    (d / "manifest.json").write_text(json.dumps({"command": "minimaxdd select", "config": {}}))
    return d


def copy_base(ctx: Ctx) -> Path:
    run = ctx.tmp / "run"
    shutil.copytree(ctx.base, run)
    return run


def without_optimiser_state(ctx: Ctx) -> Path:
    run = copy_base(ctx)
    (run / "ckpt-00000002.optim.pt").unlink()
    return run


def with_a_damaged_last_checkpoint(ctx: Ctx) -> Path:
    run = copy_base(ctx)
    (run / "ckpt-00000002.safetensors").write_bytes(b"\0" * 100)
    return run


def foreign_safetensors(ctx: Ctx) -> Path:
    from safetensors.torch import save_file

    f = ctx.tmp / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(f))
    return f


def truncated(ctx: Ctx) -> Path:
    f = ctx.tmp / "cut.safetensors"
    f.write_bytes(ckpt.list_checkpoints(ctx.base)[-1].read_bytes()[:4000])
    return f


class Evil:
    """A pickle that would run a shell command if it were unpickled as it asks."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_with_a_malicious_pickle(ctx: Ctx) -> str:
    d = ctx.tmp / "cifar-10-batches-py"
    d.mkdir()
    for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (d / n).write_bytes(pickle.dumps(Evil(ctx.tmp / "PWNED")))
    return f"cifar10:{d}"


def malicious_pt(ctx: Ctx) -> Path:
    f = ctx.tmp / "set.pt"
    f.write_bytes(pickle.dumps(Evil(ctx.tmp / "PWNED"), protocol=2))     # torch.load's own protocol
    return f


def wrong_keys_checkpoint(ctx: Ctx) -> Path:
    """Our checkpoint, its metadata intact, with one EMA tensor left out."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = ckpt.list_checkpoints(ctx.base)[-1]
    tensors = load_file(str(src))
    dropped = sorted(k for k in tensors if k.startswith("ema."))[0]
    del tensors[dropped]
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    out = ctx.tmp / "ckpt-00000002.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


def rgb_set(ctx: Ctx) -> Path:
    f = ctx.tmp / "rgb.pt"
    torch.save({"images": torch.zeros(10, 3, 8, 8, dtype=torch.uint8), "labels": torch.arange(10),
                "class_names": [str(i) for i in range(10)]}, f)
    return f


HOLDER = textwrap.dedent("""
    import sys, time
    from minimaxdd.files import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def held_by_another_process(ctx: Ctx, run: Path) -> int:
    """Another process holding the lock of `run` until the case ends; returns its pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    ctx.cleanups.append(lambda: (p.kill(), p.wait(), p.stdout.close()))
    return p.pid


def enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def raises(exc: BaseException):
    """A stand-in (for a command or a writer) that raises `exc`."""
    def stand_in(*a, **kw):
        raise exc
    return stand_in


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]          # builds the bad input under ctx.tmp, returns the command line
    says: tuple[str, ...] = ()                # regexes the error message must match (problem, then fix)
    rc: int = 2
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    leaves: bool = False                      # True: it may write (a kept checkpoint, a finished set)
    check: Callable[[Ctx, str, str], None] | None = None   # more checks: (ctx, stdout, stderr)


def _no_code_ran(ctx: Ctx, out: str, err: str) -> None:
    assert not (ctx.tmp / "PWNED").exists()


def _diverged_run(ctx: Ctx, out: str, err: str) -> None:
    bad = int(re.search(r"at step (\d+)", err).group(1))
    run = ctx.tmp / "nan"
    assert ckpt.list_checkpoints(run) == [run / f"ckpt-{bad - 1:08d}.safetensors"]     # the last finite one only
    model, _ = ckpt.load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for line in (run / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"log.jsonl holds {c}"))


def _seed_0(ctx: Ctx, out: str, err: str) -> None:
    assert json.loads(out)["seed"] == 0


def _same_bytes_at_any_batch_size(ctx: Ctx, out: str, err: str) -> None:
    argv = ["sample", str(ctx.base), "--ipc", "2", "--steps", "3", "--batch-size", "64", "--device", "cpu"]
    assert main([*argv, "--out", str(ctx.tmp / "b64")]) == 0
    a = torch.load(ctx.tmp / "b3" / "data.pt", weights_only=True)
    b = torch.load(ctx.tmp / "b64" / "data.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])


def _pid_named(ctx: Ctx, out: str, err: str) -> None:
    assert f"pid {ctx.pid} " in err


def _distill_in_use(ctx: Ctx) -> list[str]:
    ctx.pid = held_by_another_process(ctx, ctx.tmp / "run")
    return ["distill", "--data", "digits", "--out", str(ctx.tmp / "run")]


CASES = [
    # --- data: paths, npz keys and dtypes, labels, classes, image files, pickles, names
    Case("npz-missing", lambda c: [*SELECT, "--real", f"npz:{c.tmp}/nope.npz", "--out", f"{c.tmp}/o"],
         (r"npz file .*nope\.npz does not exist", r"pass npz:PATH")),
    Case("npz-wrong-keys", lambda c: [*SELECT, "--real", npz(c, y_test=None), "--out", f"{c.tmp}/o"],
         (r"lacks keys \['y_test'\]", r"save it with x_train, y_train, x_test, y_test")),
    Case("npz-image-dtype", lambda c: [*SELECT, "--real", npz(c, x_train=np.full((8, 1, 4, 4), 1000, np.int32)),
                                       "--out", f"{c.tmp}/o"],
         (r"x_train is int32 with values in \[1000, 1000\]", r"save images as uint8 0-255 or float in \[0, 1\]")),
    Case("npz-float-labels", lambda c: [*SELECT, "--real", npz(c, y_train=np.zeros(8)), "--out", f"{c.tmp}/o"],
         (r"y_train is float64", r"save labels as integers 0\.\.K-1")),
    Case("npz-labels-out-of-range", lambda c: [*SELECT, "--real", npz(c, y_train=np.array([0, 1, 5, 1] * 2),
                                                                      class_names=np.array(["a", "b"])),
                                               "--out", f"{c.tmp}/o"],
         (r"train labels span 0\.\.5 but there are 2 class names", r"fix the labels or class_names")),
    Case("npz-one-class", lambda c: [*SELECT, "--real", npz(c, y_train=np.zeros(8, np.int64),
                                                            y_test=np.zeros(8, np.int64)), "--out", f"{c.tmp}/o"],
         (r"1 class \['0'\]; distillation and its evaluation need at least 2 classes", r"add the images of another")),
    Case("npz-class-without-train-images", lambda c: [*SELECT, "--real", npz(c, y_train=np.array([0, 2] * 4),
                                                                             y_test=np.array([0, 1, 2, 0] * 2)),
                                                      "--out", f"{c.tmp}/o"],
         (r"class 1 \('1'\) has no training images", r"add images or remove the class")),
    Case("npz-object-array", lambda c: [*SELECT, "--real", npz(c, class_names=np.array([{"a": 1}, 2], object)),
                                        "--out", f"{c.tmp}/o"],
         (r"cannot read npz file", r"no object arrays")),
    Case("imagefolder-corrupt-image", lambda c: [*SELECT, "--real", folder(c, bad=b"\x89PNG\r\n\x1a\n" + b"\0" * 20),
                                                 "--out", f"{c.tmp}/o"],
         (r"cannot decode image .*train/a/2\.png", r"delete or replace the file")),
    Case("imagefolder-non-image-file", lambda c: [*SELECT, "--real", folder(c, bad=b"just text", bad_name="3.jpg"),
                                                  "--out", f"{c.tmp}/o"],
         (r"cannot decode image .*train/a/3\.jpg", r"delete or replace the file")),
    Case("imagefolder-one-class", lambda c: [*SELECT, "--real", folder(c, classes=("cat",)), "--out", f"{c.tmp}/o"],
         (r"1 class \['cat'\]; .*at least 2 classes \(with one, every classifier scores 100%\)",)),
    Case("imagefolder-no-train", lambda c: [*SELECT, "--real", f"imagefolder:{c.tmp}", "--out", f"{c.tmp}/o"],
         (r"train does not exist", r"expected .*/train/<class>/\*")),
    Case("cifar-malicious-pickle", lambda c: [*SELECT, "--real", cifar_with_a_malicious_pickle(c),
                                              "--out", f"{c.tmp}/o"],
         (r"refused global posix\.system: only numpy arrays are allowed", r"use the original CIFAR python files"),
         check=_no_code_ran),
    Case("unknown-dataset", lambda c: [*SELECT, "--real", "mnistt", "--out", f"{c.tmp}/o"],
         (r"unknown dataset 'mnistt'", r"known sources: digits")),
    Case("unknown-method", lambda c: ["select", "--method", "mean", "--real", "digits", "--ipc", "1",
                                      "--out", f"{c.tmp}/o"],
         (r"invalid choice: 'mean'",)),
    # --- IPC and outputs
    Case("ipc-0", lambda c: [*SELECT[:-1], "0", "--real", "digits", "--out", f"{c.tmp}/o"],
         (r"--ipc must be at least 1, got 0",)),
    Case("ipc-too-large", lambda c: [*SELECT[:-1], "1000", "--real", "digits", "--out", f"{c.tmp}/o"],
         (r"--ipc 1000 asks for more images than these classes have", r"lower --ipc")),
    Case("out-exists", lambda c: [*SELECT, "--real", "digits", "--out", str(existing(c))],
         (r"out already exists", r"pass --overwrite to replace it or choose another --out")),
    Case("select-disk-full", lambda c: [*SELECT, "--real", "digits", "--out", str(existing(c)), "--overwrite"],
         (r"cannot write .*/out: the disk is full \(no space left on device\)", r"free some space"),
         patch=lambda m: m.setattr(Image.Image, "save", enospc)),
    # --- training: run directories, resume, divergence, a full disk
    Case("train-existing-run", lambda c: ["train", *TINY_TRAIN, "--steps", "3", "--out", str(copy_base(c))],
         (r"already holds a run", r"pass --resume to continue it, --overwrite to start over")),
    Case("train-resume-missing-optimiser-state",
         lambda c: ["train", *TINY_TRAIN, "--steps", "3", "--resume", "--out", str(without_optimiser_state(c))],
         (r"ckpt-00000002\.optim\.pt \(the optimiser state\) is missing", r"--fresh-state")),
    Case("train-resume-truncated-checkpoint",
         lambda c: ["train", *TINY_TRAIN, "--steps", "3", "--resume", "--out",
                    str(with_a_damaged_last_checkpoint(c))],
         (r"ckpt-00000002\.safetensors is truncated or corrupt", r"delete ckpt-00000002\.safetensors and the files "
                                                                  r"beside it .* or start over with --overwrite")),
    Case("train-lr-1e9", lambda c: ["train", *TINY_TRAIN, "--steps", "8", "--checkpoint-every", "1", "--keep", "0",
                                    "--lr", "1e9", "--out", f"{c.tmp}/nan"],
         (r"the loss became non-finite at step \d+ \(loss=(nan|inf)", r"the last finite checkpoint, .* is kept",
          r"Likely fixes: a lower --lr \(it was 1e\+09\), --grad-clip 1\.0"), leaves=True, check=_diverged_run),
    Case("train-disk-full", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--out", f"{c.tmp}/run"],
         (r"cannot write .*run/ckpt-00000002\.optim\.pt: the disk is full", r"free some space or choose another"),
         patch=lambda m: m.setattr(torch, "save", enospc)),
    Case("finetune-lr-1e9", lambda c: ["finetune", "--ckpt", str(c.base), "--data", "digits", "--steps", "8",
                                       "--lr", "1e9", *FAST, "--out", f"{c.tmp}/ft"],
         (r"the loss became non-finite at step \d+", r"no checkpoint had been written, so nothing of the run was kept",
          r"a lower --lr \(it was 1e\+09\)")),
    Case("dm-non-finite-loss", lambda c: ["select", "--method", "dm", "--real", "digits", "--ipc", "1",
                                          "--iterations", "5", "--out", f"{c.tmp}/dm"],
         (r"DM: the loss became non-finite \(nan\) at iteration 1", r"a lower --lr-img \(it was 1\)"),
         patch=lambda m: m.setattr(distribution_matching, "dm_loss",
                                   lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))),
    Case("train-disk-full-at-the-weights", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--out", f"{c.tmp}/run"],
         (r"cannot write .*run/ckpt-00000002\.safetensors: the disk is full", r"free some space"),
         patch=lambda m: m.setattr(safetensors.torch, "save_file", raises(SafetensorError(
             "Error while serializing: I/O error: No space left on device (os error 28)")))),
    Case("train-batch-0", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--batch", "0", "--out", f"{c.tmp}/r"],
         (r"--batch 0 must be between 1 and the number of training images \(1347\)",)),
    Case("train-unknown-model", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--model", "dit-q/2",
                                           "--out", f"{c.tmp}/r"],
         (r"unknown model 'dit-q/2'; choose one of: ",)),
    Case("train-no-data", lambda c: ["train", "--steps", "2", "--out", f"{c.tmp}/r"],
         (r"train needs --data \(or a --preset that sets it\)",)),
    # --- checkpoints: missing, truncated, without our metadata, wrong keys
    Case("sample-missing-checkpoint", lambda c: ["sample", f"{c.tmp}/nope.safetensors", "--ipc", "1",
                                                 "--out", f"{c.tmp}/o"],
         (r"checkpoint .*nope\.safetensors does not exist",)),
    Case("sample-truncated-checkpoint", lambda c: ["sample", str(truncated(c)), "--ipc", "1", "--out", f"{c.tmp}/o"],
         (r"cut\.safetensors is truncated or corrupt", r"re-download it, or re-run the training that wrote it")),
    Case("sample-foreign-safetensors",
         lambda c: ["sample", str(foreign_safetensors(c)), "--ipc", "1", "--out", f"{c.tmp}/o"],
         (r"w\.safetensors is a safetensors file without minimaxdd metadata",)),
    Case("sample-ipc-0", lambda c: ["sample", str(c.base), "--ipc", "0", "--out", f"{c.tmp}/o"],
         (r"--ipc must be at least 1, got 0",)),
    Case("finetune-truncated-checkpoint", lambda c: ["finetune", "--ckpt", str(truncated(c)), "--data", "digits",
                                                     "--steps", "1", *FAST, "--out", f"{c.tmp}/o"],
         (r"cut\.safetensors is truncated or corrupt", r"re-download it")),
    Case("finetune-wrong-checkpoint-keys", lambda c: ["finetune", "--ckpt", str(wrong_keys_checkpoint(c)),
                                                      "--data", "digits", "--steps", "1", *FAST, "--out", f"{c.tmp}/o"],
         (r"do not fit this model:\n  missing: ", r"check --model")),
    # --- evaluation inputs
    Case("evaluate-missing-set", lambda c: ["evaluate", f"{c.tmp}/nope", "--real", "digits"],
         (r"synthetic set .*nope does not exist", r"pass a directory written by")),
    Case("evaluate-malicious-pt", lambda c: ["evaluate", str(malicious_pt(c)), "--real", "digits"],
         (r"cannot read .*set\.pt as a synthetic set", r"torch\.save'd dict of tensors"), check=_no_code_ran),
    Case("evaluate-wrong-channels", lambda c: ["evaluate", str(rgb_set(c)), "--real", "digits", "--epochs", "1"],
         (r"the synthetic images have 3 channels and the real ones 1", r"convert them \(e\.g\. to grey\)")),
    # --- distill: settings checked before anything is written, presets, the run's lock
    Case("distill-set-not-an-int", lambda c: ["distill", "--data", "digits", "--set", "base.train.steps=abc",
                                              "--out", f"{c.tmp}/run"],
         (r"base\.train\.steps: expected int \| null, got 'abc'",)),
    Case("distill-unknown-setting", lambda c: ["distill", "--data", "digits", "--set", "sample.stepz=3",
                                               "--out", f"{c.tmp}/run"],
         (r"unknown setting\(s\) sample\.stepz; known under sample: .*steps",)),
    Case("distill-unknown-preset", lambda c: ["distill", "--preset", "nope", "--out", f"{c.tmp}/run"],
         (r"unknown preset 'nope'",)),
    Case("distill-run-in-use", _distill_in_use,
         (r"run is in use by another minimaxdd process: pid \d+ on ", r"Wait for it to finish, stop it \(kill \d+\)"),
         check=_pid_named),
    # --- what passes: a value of 0 is a value; the same bytes at any batch size
    Case("distill-seed-0-overrides-the-preset", lambda c: ["distill", "--preset", "digits", "--seed", "0", "--set",
                                                           "seed=5", "--print-config"], rc=0, check=_seed_0),
    Case("sample-same-bytes-at-any-batch-size", lambda c: ["sample", str(c.base), "--ipc", "2", "--steps", "3",
                                                           "--batch-size", "3", "--device", "cpu",
                                                           "--out", f"{c.tmp}/b3"],
         rc=0, leaves=True, check=_same_bytes_at_any_batch_size),
    # --- the command line's own catch-all: Ctrl-C, OS errors a user can fix
    Case("ctrl-c", lambda c: ["datasets"], (r"interrupted; nothing half-written was kept",), rc=130,
         patch=lambda m: m.setitem(cli.COMMANDS, "datasets", raises(KeyboardInterrupt()))),
    Case("safetensors-write-failure", lambda c: ["datasets"],
         (r"writing a \.safetensors file: the disk is full",),
         patch=lambda m: m.setitem(cli.COMMANDS, "datasets", raises(SafetensorError(
             "Error while serializing: I/O error: No space left on device (os error 28)")))),
    Case("permission-denied", lambda c: ["datasets"],
         (r"/root/x: permission denied; choose a path you may write",),
         patch=lambda m: m.setitem(cli.COMMANDS, "datasets", raises(PermissionError(errno.EACCES, "denied",
                                                                                    "/root/x")))),
    # ---- issue 30, part A: security and lost data, SIGTERM, output paths (one helper's rows go here)
    Case("lock-is-a-symlink", lambda c: [*SELECT, "--real", "digits", "--out", str(lock_is(c, "symlink"))],
         (r"o\.lock is a symbolic link \(to .*victim\.txt\), where the lock file of .*/o goes",
          r"remove the link \(rm .*o\.lock\) or choose another --out")),
    Case("lock-is-a-dangling-symlink", lambda c: [*SELECT, "--real", "digits", "--out", str(lock_is(c, "dangling"))],
         (r"o\.lock is a symbolic link \(to .*created-by-us\)", r"remove the link")),
    Case("lock-is-a-hard-link", lambda c: [*SELECT, "--real", "digits", "--out", str(lock_is(c, "hardlink"))],
         (r"o\.lock, where the lock file of .*/o goes, is a hard link to another file \(2 names\)",
          r"will not overwrite it: move it away or choose another --out")),
    Case("lock-is-someone-elses-file", lambda c: [*SELECT, "--real", "digits", "--out", str(lock_is(c, "foreign"))],
         (r"o\.lock, where the lock file .* goes, holds something other than a minimaxdd lock", r"move it away")),
    Case("lock-is-a-fifo", lambda c: [*SELECT, "--real", "digits", "--out", str(lock_is(c, "fifo"))],
         (r"o\.lock, where the lock file .* goes, is not a regular file", r"move it away")),
    Case("select-out-is-the-input", lambda c: [*SELECT, "--real", folder(c), "--out", f"{c.tmp}/f", "--overwrite"],
         (r"--out .*/f is the input .*/f: writing there would write over or delete the command's own input",
          r"put --out outside .*/f")),
    Case("select-out-inside-the-input", lambda c: [*SELECT, "--real", folder(c), "--out", f"{c.tmp}/f/train/sel"],
         (r"--out .*/f/train/sel is inside the input .*/f:", r"put --out outside")),
    Case("select-out-contains-the-input", lambda c: [*SELECT, "--real", npz_in(c, "data"), "--out", f"{c.tmp}/data",
                                                     "--overwrite"],
         (r"--out .*/data contains the input .*/data/d\.npz", r"put --out outside")),
    Case("select-overwrite-a-foreign-folder", lambda c: [*SELECT, "--real", "digits", "--out", str(photos(c)),
                                                         "--overwrite"],
         (r"photos exists and is not a folder minimaxdd wrote \(it has no manifest\.json of ours\)",
          r"--overwrite replaces only this tool's own output: move it away or choose another --out")),
    Case("select-out-is-a-foreign-file", lambda c: [*SELECT, "--real", "digits", "--out", str(notes(c)), "--overwrite"],
         (r"notes\.txt exists and is not a folder minimaxdd wrote", r"move it away or choose another --out")),
    Case("select-out-dot", lambda c: [*SELECT, "--real", "digits", "--out", ".", "--overwrite", *in_a_folder(c)],
         (r"--out \. is the folder this command runs in, which a new set cannot replace", r"--out set")),
    Case("select-a-255-character-name", lambda c: [*SELECT, "--real", "digits", "--out", f"{c.tmp}/{'n' * 255}"],
         rc=0, leaves=True, check=lambda c, o, e: _only_the_set_named_255(c, o, e)),
    Case("sample-out-is-the-checkpoint-run", lambda c: ["sample", str(copy_base(c)), "--ipc", "1", "--out",
                                                        f"{c.tmp}/run", "--overwrite"],
         (r"--out .*/run is the input .*/run", r"put --out outside")),
    Case("sample-out-dot", lambda c: ["sample", str(c.base), "--ipc", "1", "--out", ".", *in_a_folder(c)],
         (r"--out \. is the folder this command runs in", r"name a new folder")),
    Case("train-out-inside-the-data", lambda c: ["train", *TINY_TRAIN[2:], "--data", folder(c), "--steps", "2",
                                                 "--out", f"{c.tmp}/f/run"],
         (r"--out .*/f/run is inside the input .*/f:", r"put --out outside")),
    Case("train-overwrite-a-foreign-folder", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--out", str(photos(c)),
                                                        "--overwrite"],
         (r"photos is not empty and is not a training run minimaxdd wrote",
          r"move its files away or choose another --out")),
    Case("finetune-out-is-the-base", lambda c: ["finetune", "--ckpt", str(copy_base(c)), "--data", "digits",
                                                "--steps", "1", *FAST, "--out", f"{c.tmp}/run", "--overwrite"],
         (r"--out .*/run is the input .*/run", r"put --out outside")),
    Case("distill-out-is-the-data", lambda c: ["distill", "--data", folder(c), "--out", f"{c.tmp}/f"],
         (r"--out .*/f is the input .*/f", r"put --out outside")),
    Case("distill-into-a-foreign-folder", lambda c: ["distill", "--data", "digits", "--out", str(photos(c))],
         (r"photos is not empty and is not a distill run", r"choose another --out or move its files away")),
    Case("evaluate-out-is-the-set", lambda c: ["evaluate", str(rgb_set(c)), "--real", "digits", "--out",
                                               f"{c.tmp}/rgb.pt"],
         (r"--out .*rgb\.pt is the input .*rgb\.pt", r"put --out outside")),
    Case("evaluate-out-is-a-folder", lambda c: ["evaluate", str(rgb_set(c)), "--real", "digits", "--out",
                                                str(existing(c))],
         (r"--out .*/out is a folder; --out names the JSON file to write, e\.g\. --out .*/out/result\.json",)),
    Case("evaluate-out-is-a-foreign-file", lambda c: ["evaluate", str(rgb_set(c)), "--real", "digits", "--out",
                                                      str(notes(c))],
         (r"--out .*notes\.txt exists and is not a JSON result of minimaxdd", r"move it away or choose another")),
    Case("sigterm", lambda c: ["datasets"], (r"minimaxdd datasets: terminated \(SIGTERM\); nothing half-written",),
         rc=143, patch=lambda m: m.setitem(cli.COMMANDS, "datasets", sigterm)),
    Case("sigterm-releases-the-lock", lambda c: [*SELECT, "--real", "digits", "--out", f"{c.tmp}/o"],
         (r"minimaxdd select: terminated \(SIGTERM\)",), rc=143,
         patch=lambda m: m.setattr(registry, "select", sigterm)),
    Case("metrics-out-is-the-set", lambda c: ["metrics", str(rgb_set(c)), "--real", "digits", "--out",
                                              f"{c.tmp}/rgb.pt"],
         (r"--out .*rgb\.pt is the input .*rgb\.pt", r"put --out outside")),
    Case("metrics-tsne-is-the-set", lambda c: ["metrics", str(rgb_set(c)), "--real", "digits", "--tsne",
                                               f"{c.tmp}/rgb.pt"],
         (r"--tsne .*rgb\.pt is the input .*rgb\.pt", r"put --tsne outside")),
    Case("ablation-out-is-the-base", lambda c: ["ablation", "--base", str(copy_base(c)), "--data", "digits",
                                                "--out", f"{c.tmp}/run"],
         (r"--out .*/run is the input .*/run", r"put --out outside")),
    Case("sweep-out-inside-the-base", lambda c: ["sweep", "--base", str(copy_base(c)), "--data", "digits", "--param",
                                                 "lambda_r", "--values", "1", "--out", f"{c.tmp}/run/sweep"],
         (r"--out .*/run/sweep is inside the input .*/run", r"put --out outside")),
    # ---- end of part A
    # ---- issue 30, part B: tracebacks and accepted garbage (another helper's rows go here)
    Case("train-log-every-0", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--log-every", "0",
                                         "--out", f"{c.tmp}/r"],
         (r"train\.log_every \(--log-every\) must be at least 1, got 0: steps between lines of log\.jsonl",
          r"give it a value at least 1")),
    Case("train-checkpoint-every-0", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--checkpoint-every", "0",
                                                "--out", f"{c.tmp}/r"],
         (r"train\.checkpoint_every \(--checkpoint-every\) must be at least 1, got 0", r"give it a value")),
    Case("train-negative-lr", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--lr=-1e-4", "--out", f"{c.tmp}/r"],
         (r"train\.lr \(--lr\) must be greater than 0, got -0\.0001", r"give it a value greater than 0")),
    Case("train-class-dropout-1", lambda c: ["train", *TINY_TRAIN, "--steps", "2", "--class-dropout", "1",
                                             "--out", f"{c.tmp}/r"],
         (r"class_dropout \(--class-dropout\) must be in \[0, 1\), got 1\.0", r"give it a value in \[0, 1\)")),
    Case("distill-set-out-of-bounds", lambda c: ["distill", "--data", "digits", "--set", "choose.val_fraction=1.5",
                                                 "--out", f"{c.tmp}/run"],
         (r"choose\.val_fraction must be in \(0, 1\), got 1\.5", r"give it a value in \(0, 1\)")),
    Case("distill-set-nan", lambda c: ["distill", "--data", "digits", "--set", "base.train.lr=NaN",
                                       "--out", f"{c.tmp}/run"],
         (r"base\.train\.lr: expected a finite number, got nan", r"give a finite value")),
    Case("evaluate-empty-set", lambda c: ["evaluate", str(synthetic_pt(c, n=0)), "--real", "digits"],
         (r"set\.pt holds no images", r"needs at least one image per class")),
    Case("select-five-channel-npz", lambda c: [*SELECT, "--real", npz(c, x_train=np.zeros((8, 5, 4, 4), np.uint8),
                                                                      x_test=np.zeros((8, 5, 4, 4), np.uint8)),
                                               "--out", f"{c.tmp}/o"],
         (r"\[N, C, H, W\] images with 5 channels; images need 1 \(grey\), 3 \(RGB\) or 4 \(RGBA\)",
          r"convert them")),
    Case("evaluate-epochs-0", lambda c: ["evaluate", str(synthetic_pt(c)), "--real", "digits", "--epochs", "0"],
         (r"epochs \(--epochs\) must be at least 1, got 0", r"give it a value at least 1")),
    Case("evaluate-epochs-negative", lambda c: ["evaluate", str(synthetic_pt(c)), "--real", "digits",
                                                "--epochs", "-3"],
         (r"epochs \(--epochs\) must be at least 1, got -3",)),
    Case("sample-nan-weights", lambda c: ["sample", str(nan_checkpoint(c)), "--ipc", "1", "--steps", "2",
                                          "--device", "cpu", "--out", f"{c.tmp}/o"],
         (r"the ema weights in .*nan\.safetensors hold non-finite values \(NaN or inf\) in \d+ tensors",
          r"the training that wrote it diverged\. Sample an earlier checkpoint")),
    Case("sample-cfg-nan", lambda c: ["sample", str(c.base), "--ipc", "1", "--cfg", "nan", "--out", f"{c.tmp}/o"],
         (r"cfg: expected a finite number, got nan", r"give a finite value")),
    Case("sample-cfg-1e300", lambda c: ["sample", str(c.base), "--ipc", "1", "--cfg", "1e300",
                                        "--out", f"{c.tmp}/o"],
         (r"cfg \(--cfg\) must be in \[0, 100\], got 1e\+300: classifier-free guidance scale",
          r"give it a value in \[0, 100\]")),
    Case("sample-non-finite-output", lambda c: ["sample", str(c.base), "--ipc", "1", "--steps", "2", "--cfg", "7",
                                                "--device", "cpu", "--out", f"{c.tmp}/o"],
         (r"sampling .* gave non-finite values \(100\.0% NaN or inf\), which would be written as black images; "
          r"nothing was written", r"the guidance scale --cfg 7 amplifies .*: lower it"),
         patch=lambda m: m.setattr("minimaxdd.diffusion.generation.generate",
                                   lambda *a, **k: torch.full((10, 1, 8, 8), float("nan")))),
    Case("evaluate-missing-class", lambda c: ["evaluate", str(synthetic_pt(c, n=9)), "--real", "digits"],
         (r"the synthetic set has no images of 1 of the 10 classes: \['9'\]",
          r"Sample or select every class, or pass --allow-missing-classes")),
    Case("evaluate-missing-class-allowed", lambda c: ["evaluate", str(synthetic_pt(c, n=9)), "--real", "digits",
                                                      "--epochs", "1", "--repeats", "1", "--device", "cpu",
                                                      "--precision", "fp32", "--allow-missing-classes"],
         (r"warning: the synthetic set has no images of 1 of the 10 classes: \['9'\]; .* count as errors",),
         rc=0),
    Case("evaluate-float-labels-npz", lambda c: ["evaluate", str(float_label_set(c)), "--real", "digits"],
         (r"the labels in .*fl\.npz are float64", r"save labels as integers 0\.\.K-1")),
    Case("select-duplicate-class-names", lambda c: [*SELECT, "--real", npz(c, class_names=np.array(["a", "a"])),
                                                    "--out", f"{c.tmp}/o"],
         (r"class names \['a'\] occur more than once", r"give each class its own name")),
    Case("evaluate-duplicate-class-names", lambda c: ["evaluate", str(synthetic_pt(c, names=["a", "a", *"23456789"])),
                                                      "--real", "digits"],
         (r"class names \['a'\] occur more than once", r"rename them")),
    Case("sample-metadata-claims-a-huge-network", lambda c: ["sample", str(huge_claim(c)), "--ipc", "1",
                                                             "--out", f"{c.tmp}/o"],
         (r"huge\.safetensors \(ema\): its model config does not fit its tensors \(it describes a network of "
          r"[\d,]+ parameters but the file holds 2\)", r"re-download it, or re-run the training")),
    Case("sample-metadata-out-of-bounds", lambda c: ["sample", str(huge_claim(c, hidden_size=10**9)), "--ipc", "1",
                                                     "--out", f"{c.tmp}/o"],
         (r"its model config is out of sane bounds \(hidden_size=1000000000;", r"re-download it")),
    Case("sample-ipc-huge", lambda c: ["sample", str(c.base), "--ipc", "100000000", "--device", "cpu",
                                       "--out", f"{c.tmp}/o"],
         (r"--ipc 100000000 asks for 1,000,000,000 images \(100,000,000 for each of 10 classes\), about [\d,]+ GiB",
          r"lower --ipc \(at most [\d,]+ for this checkpoint\), or give --budget-minutes")),
    # ---- end of part B
    # ---- issue 30, part C: decoding, resources, misleading messages (a third helper's rows go here)
    Case("npz-channels-last-rgba", lambda c: [*SELECT, "--real", npz(c, x_train=np.zeros((8, 6, 6, 4), np.uint8),
                                                                     x_test=np.zeros((8, 6, 6, 4), np.uint8)),
                                              "--out", f"{c.tmp}/o"],
         # four channels (RGBA) are allowed: a channels-last array is read as such, not called "not square"
         (), rc=0, leaves=True,
         check=lambda c, out, err: _four_channel_set(c)),
    Case("npz-five-channels", lambda c: [*SELECT, "--real", npz(c, x_train=np.zeros((8, 5, 4, 4), np.uint8),
                                                                x_test=np.zeros((8, 5, 4, 4), np.uint8)),
                                         "--out", f"{c.tmp}/o"],
         (r"x_train has shape \(8, 5, 4, 4\): \[N, C, H, W\] images with 5 channels; images need 1 \(grey\), 3",
          r"convert them to one of those")),
    Case("npz-nan-pixels", lambda c: [*SELECT, "--real", npz(c, x_train=np.full((8, 1, 4, 4), np.nan, np.float32)),
                                      "--out", f"{c.tmp}/o"],
         (r"x_train \(float32\) holds 128 NaN values", r"replace them: images must be uint8 0-255 or float in \[0, 1\]")),
    Case("npz-huge-label", lambda c: [*SELECT, "--real", npz(c, y_train=np.array([0, 1] * 3 + [0, 10**12])),
                                      "--out", f"{c.tmp}/o"],
         (r"the labels reach 1000000000000 but y_train holds 8 labels, so some of the classes .* have no training",
          r"number the classes 0\.\.K-1 without gaps")),
    Case("imagefolder-float-out-of-range", lambda c: [*SELECT, "--real", folder(c, bad=float_tiff(255), bad_name="2.tif"),
                                                      "--out", f"{c.tmp}/o"],
         (r"image .*train/a/2\.tif \(mode F, float\) holds values in \[0, 255\]",
          r"scale it to \[0, 1\] or save it as 8- or 16-bit")),
    Case("imagefolder-float-nan", lambda c: [*SELECT, "--real", folder(c, bad=float_tiff(np.nan), bad_name="2.tif"),
                                             "--out", f"{c.tmp}/o"],
         (r"image .*train/a/2\.tif \(mode F, float\) holds NaN or infinite values", r"replace them")),
    Case("imagefolder-32-bit-out-of-range", lambda c: [*SELECT, "--real", folder(c, bad=int32_tiff(70000),
                                                                                 bad_name="2.tif"),
                                                       "--out", f"{c.tmp}/o"],
         (r"image .*train/a/2\.tif \(mode I, integer\) holds values in \[0, 70000\], outside the 16-bit range",
          r"save it as 8- or 16-bit grey")),
    Case("imagefolder-lab", lambda c: [*SELECT, "--real", folder(c, bad=lab_tiff(), bad_name="2.tif"),
                                       "--out", f"{c.tmp}/o"],
         (r"image .*train/a/2\.tif is stored in mode LAB, which this tool does not convert",
          r"save it as 8-bit RGB or grey")),
    Case("imagefolder-16-bit", lambda c: [*SELECT, "--real", sixteen_bit_folder(c), "--out", f"{c.tmp}/o"],
         rc=0, leaves=True, check=lambda *a: the_16_bit_pixels_divided_by_257(*a)),
    Case("imagefolder-several-frames", lambda c: [*SELECT, "--real", folder(c, bad=two_page_tiff(), bad_name="2.tif"),
                                                  "--out", f"{c.tmp}/o"],
         (r"1 of 9 image files hold several frames .*train/a/2\.tif\); the first frame of each is used",),
         rc=0, leaves=True, patch=lambda m: warnings_to_stderr(m)),
    Case("imagefolder-skipped-file", lambda c: [*SELECT, "--real", folder(c, bad=b"notes", bad_name="notes.txt"),
                                                "--out", f"{c.tmp}/o"],
         (r"f/train: 1 file is skipped, not having an image suffix .*: train/a/notes\.txt; rename or convert any that are",),
         rc=0, leaves=True, patch=lambda m: warnings_to_stderr(m)),
    Case("cache-folder-is-a-file", lambda c: [*SELECT, "--real", folder(c), "--out", f"{c.tmp}/o",
                                              *cache_at(c, "a-file")],
         (r"cannot write the cache file .*a-file/datasets/.*\.pt: a part of its path is a file, not a folder; "
          r"going on without caching it", r"set MINIMAXDD_CACHE to a writable folder"),
         rc=0, leaves=True, patch=lambda m: warnings_to_stderr(m), check=lambda *a: a_set_and_no_out_advice(*a)),
    Case("cache-disk-full", lambda c: [*SELECT, "--real", folder(c), "--out", f"{c.tmp}/o", *cache_at(c, "cache")],
         (r"cannot write the cache file .*cache/datasets/.*\.pt: the disk is full \(no space left on device\); going "
          r"on without caching it", r"set MINIMAXDD_CACHE to a writable folder with free space"),
         rc=0, leaves=True, patch=lambda m: (warnings_to_stderr(m), full_disk_in_the_cache(m)),
         check=lambda *a: a_set_and_no_out_advice(*a)),
    # ---- end of part C
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`, with the sha256 of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:           # argparse's own errors
        return e.code


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, base, monkeypatch, capsys):
    ctx = Ctx(tmp_path, base)
    try:
        argv = case.argv(ctx)
        before = _snapshot(tmp_path)
        if case.patch is not None:
            case.patch(monkeypatch)
        rc = _run(argv)
        monkeypatch.undo()
        out, err = capsys.readouterr()
        assert rc == case.rc, err
        assert "Traceback" not in out + err
        for pattern in case.says:
            assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
        if case.rc == 2:
            assert re.search(rf"^(minimaxdd {argv[0]}: error: |usage: minimaxdd)", err, re.M), err
        if not case.leaves:
            # nothing half-written, no temporary or lock file left, and what was there keeps its bytes
            assert _snapshot(tmp_path) == before
        assert not files._HELD, "a run lock was not released"
        if case.check is not None:
            case.check(ctx, out, err)
    finally:
        for f in ctx.cleanups:
            f()


def test_the_table_covers_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_a_genuine_bug_still_shows_its_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "datasets", lambda a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["datasets"])
    monkeypatch.setitem(cli.COMMANDS, "datasets", raises(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(OSError):                  # an OS error no user can fix is a bug too
        main(["datasets"])


# ---------------------------------------------------------------------------------------------
# real processes: what only `python -m minimaxdd` shows


def _python(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MINIMAXDD_QUIET": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_a_closed_output_pipe_exits_quietly():
    # `minimaxdd presets | head -0`: the reader is gone before the first line
    p = _python("-m", "minimaxdd", "presets")
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 128 + signal.SIGPIPE and err == ""


def test_errors_and_bugs_from_a_real_process():
    p = _python("-m", "minimaxdd", "select", "--method", "random", "--real", "npz:/nope.npz", "--ipc", "1",
                "--out", "/nonexistent/o")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.startswith("minimaxdd select: error: npz file /nope.npz does not exist")
    assert "Traceback" not in err
    bug = "import minimaxdd.cli as c; c.COMMANDS['datasets'] = lambda a: 1 / 0; raise SystemExit(c.main(['datasets']))"
    p = _python("-c", bug)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "Traceback" in err and "ZeroDivisionError" in err


# `minimaxdd ARGS` that stops after writing its first checkpoint, says so, and waits there to be killed: the kill
# lands at a known point however fast the machine is
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


@pytest.mark.slow     # a real training process killed mid-run, then resumed (about 15 s)
def test_kill_9_then_resume_continues_exactly_and_takes_over_the_stale_lock(tmp_path):
    p = _python("-c", _HOLD_AFTER_FIRST_CHECKPOINT, "train", *TINY_TRAIN, "--steps", "40", "--checkpoint-every", "5",
                "--out", str(tmp_path / "a"))
    said = None
    while said not in ("checkpointed\n", ""):       # until the checkpoint of step 5 is written (or the run ends)
        said = p.stdout.readline()
    p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert said == "checkpointed\n" and p.returncode == -signal.SIGKILL, out + err
    assert files.lock_path(tmp_path / "a").exists()
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "a")] == ["ckpt-00000005.safetensors"]
    with pytest.warns(UserWarning, match=f"taking over the stale lock .*pid {p.pid}.*no longer running"):
        assert main(["train", *TINY_TRAIN, "--steps", "40", "--checkpoint-every", "5", "--resume",
                     "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *TINY_TRAIN, "--steps", "40", "--checkpoint-every", "5", "--out", str(tmp_path / "b")]) == 0
    from safetensors.torch import load_file
    a, b = (load_file(str(ckpt.resolve(tmp_path / r))) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not files.lock_path(tmp_path / "a").exists()


# SIGTERM (`kill PID`, a batch system's time limit) in a real process: handled as Ctrl-C is, with a message,
# exit code 143 (128 + SIGTERM), no traceback and the run's lock released (issue 30)


@pytest.mark.slow     # a real training process, signalled mid-run, then resumed (about 10 s)
def test_sigterm_mid_run_says_so_releases_the_lock_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    p = _python("-c", _HOLD_AFTER_FIRST_CHECKPOINT, "train", *TINY_TRAIN, "--steps", "10", "--checkpoint-every", "5",
                "--out", str(run))
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


# ---- issue 30, part A helpers
def lock_is(ctx: Ctx, kind: str) -> Path:
    """Output `o` whose lock file's place, o.lock, is taken: a link to a file of the user's (symbolic, dangling,
    hard), a file of the user's, or a FIFO (opening it to read would block)."""
    victim, lock = ctx.tmp / "victim.txt", ctx.tmp / "o.lock"
    victim.write_text("the user's notes")
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling":
        lock.symlink_to(ctx.tmp / "created-by-us")
    elif kind == "hardlink":
        os.link(victim, lock)
    elif kind == "foreign":
        lock.write_text("deadbolt, front door")
    else:
        os.mkfifo(lock)
    return ctx.tmp / "o"


def npz_in(ctx: Ctx, sub: str) -> str:
    (ctx.tmp / sub).mkdir()
    return npz(ctx, f"{sub}/d.npz")


def photos(ctx: Ctx) -> Path:
    """A folder of the user's (not ours: no manifest), with a file in it."""
    d = ctx.tmp / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"a photo of a cat")
    (d / "config.json").write_text('{"camera": "x"}')
    return d


def notes(ctx: Ctx) -> Path:
    f = ctx.tmp / "notes.txt"
    f.write_text("a file of the user's")
    return f


def in_a_folder(ctx: Ctx) -> list[str]:
    """Run the case in ctx.tmp/here (which holds a file of the user's); back to where it was after the case."""
    here = ctx.tmp / "here"
    here.mkdir()
    (here / "keep.txt").write_text("keep me")
    was = os.getcwd()
    os.chdir(here)
    ctx.cleanups.append(lambda: os.chdir(was))
    return []


def _only_the_set_named_255(ctx: Ctx, out: str, err: str) -> None:
    name = "n" * 255
    assert [p.name for p in ctx.tmp.iterdir()] == [name]         # no temporary folder, lock or state file left
    assert (ctx.tmp / name / "manifest.json").is_file() and len(list((ctx.tmp / name / "images").rglob("*.png"))) == 10


def sigterm(*a, **kw):
    """A stand-in that is sent SIGTERM (`kill PID`) while it runs."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    pytest.fail("SIGTERM did not stop the command")
# ---- end of part A helpers


# ---- issue 30, part B helpers


def synthetic_pt(ctx: Ctx, n: int = 10, names: list[str] | None = None) -> Path:
    """A synthetic set of `n` grey 8x8 images labelled 0..n-1 (ten digit classes unless `names`)."""
    f = ctx.tmp / "set.pt"
    torch.save({"images": torch.zeros(n, 1, 8, 8, dtype=torch.uint8), "labels": torch.arange(n),
                "class_names": names or [str(i) for i in range(10)]}, f)
    return f


def float_label_set(ctx: Ctx) -> Path:
    np.savez(ctx.tmp / "fl.npz", images=np.zeros((10, 1, 8, 8), np.uint8), labels=np.arange(10) + 0.7)
    return ctx.tmp / "fl.npz"


def nan_checkpoint(ctx: Ctx) -> Path:
    """The base run's checkpoint, its metadata intact, every float tensor NaN (a diverged run's)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = ckpt.list_checkpoints(ctx.base)[-1]
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in load_file(str(src)).items()}
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(ctx.tmp / "nan.safetensors"), metadata=meta)
    return ctx.tmp / "nan.safetensors"


def huge_claim(ctx: Ctx, **model) -> Path:
    """A 1.4 KB safetensors with our metadata claiming a DiT of hidden size 8192 and depth 28 (34 G parameters)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt.list_checkpoints(ctx.base)[-1]), framework="pt") as f:
        meta = json.loads(f.metadata()["minimaxdd"])
    meta["model"].update({"hidden_size": 8192, "depth": 28, "num_heads": 16, **model})
    save_file({"ema.w": torch.zeros(2)}, str(ctx.tmp / "huge.safetensors"), metadata={"minimaxdd": json.dumps(meta)})
    return ctx.tmp / "huge.safetensors"


# ---- end of part B helpers


# ---- issue 30, part C helpers


def image_bytes(im: Image.Image, fmt: str, **save) -> bytes:
    import io

    b = io.BytesIO()
    im.save(b, fmt, **save)
    return b.getvalue()


def float_tiff(value: float) -> bytes:
    """An 8x8 float (mode F) TIFF holding 0 and `value`."""
    v = np.zeros((8, 8), np.float32)
    v[4:] = value
    return image_bytes(Image.fromarray(v), "TIFF")


def int32_tiff(value: int) -> bytes:
    """An 8x8 32-bit integer (mode I) TIFF holding 0 and `value`."""
    v = np.zeros((8, 8), np.int32)
    v[4:] = value
    return image_bytes(Image.fromarray(v), "TIFF")


def lab_tiff() -> bytes:
    return image_bytes(Image.new("LAB", (8, 8), (50, 0, 0)), "TIFF")


def two_page_tiff() -> bytes:
    pages = [Image.new("L", (8, 8), v) for v in (90, 10)]
    return image_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])


SIXTEEN_BIT = {"a": [0, 257, 1000], "b": [65535, 40000, 128]}     # the levels of each class's 16-bit PNGs


def sixteen_bit_folder(ctx: Ctx) -> str:
    """An image folder of flat 8x8 16-bit grey PNGs (mode I;16), one level each (SIXTEEN_BIT)."""
    root = ctx.tmp / "f16"
    for s in ("train", "val"):
        for c, levels in SIXTEEN_BIT.items():
            (root / s / c).mkdir(parents=True)
            for i, v in enumerate(levels):
                Image.frombytes("I;16", (8, 8), np.full((8, 8), v, "<u2").tobytes()).save(root / s / c / f"{i}.png")
    return f"imagefolder:{root}"


def the_16_bit_pixels_divided_by_257(ctx: Ctx, out: str, err: str) -> None:
    d = torch.load(ctx.tmp / "o" / "data.pt", weights_only=True)
    assert d["images"].shape == (2, 1, 8, 8) and d["class_names"] == ["a", "b"]
    for image, label in zip(d["images"], d["labels"]):
        levels = SIXTEEN_BIT[d["class_names"][label]]
        assert image.unique().tolist() in [[round(v / 257)] for v in levels]     # flat, at the level / 257


def warnings_to_stderr(m: pytest.MonkeyPatch) -> None:
    """Show warnings on stderr, as a real process does (pytest would record them instead)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{filename}:{lineno}: {category.__name__}: {message}", file=sys.stderr)

    m.setattr(warnings, "showwarning", show)


def cache_at(ctx: Ctx, name: str) -> list[str]:
    """MINIMAXDD_CACHE at ctx.tmp/name for the case ("a-file": a file there, so nothing can be written under it);
    adds no argument to the command line."""
    (ctx.tmp / name).write_text("a file, not a folder") if name == "a-file" else (ctx.tmp / name).mkdir()
    old = os.environ.get("MINIMAXDD_CACHE")
    os.environ["MINIMAXDD_CACHE"] = str(ctx.tmp / name)
    ctx.cleanups.append(lambda: os.environ.__setitem__("MINIMAXDD_CACHE", old) if old is not None else
                        os.environ.pop("MINIMAXDD_CACHE", None))
    return []


def full_disk_in_the_cache(m: pytest.MonkeyPatch) -> None:
    """The decoded folder's cache file meets a full disk, as atomic_file reports it (the set's own files do not)."""
    from minimaxdd.data import image_folders

    def save_atomic(obj, path):
        with files.atomic_file(path):
            enospc()

    m.setattr(image_folders, "save_atomic", save_atomic)


def a_set_and_no_out_advice(ctx: Ctx, out: str, err: str) -> None:
    assert (ctx.tmp / "o" / "data.pt").is_file() and "wrote 2 images" in out
    assert "--out" not in err                   # the cache's knob is MINIMAXDD_CACHE, not --out
    assert not list((ctx.tmp / "cache").rglob("*.tmp")) if (ctx.tmp / "cache").is_dir() else True


def _four_channel_set(ctx: Ctx) -> None:
    from minimaxdd.data.synthetic import load_synthetic
    s = load_synthetic(ctx.tmp / "o")
    assert s.images.shape[1:] == (4, 6, 6)


# ---- end of part C helpers
