"""torchrun on CPU (gloo): 2-process training equals 1-process training, 2-process sampling and
evaluation give the same bytes and numbers, and minimax fine-tuning runs with shared memories."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from minimaxdd.data.synthetic import load_synthetic

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    pytest.mark.slow,   # every test launches torchrun subprocesses
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, nproc: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINIMAXDD_QUIET": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "minimaxdd", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "minimaxdd", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


TRAIN = ["train", "--data", "digits", "--model", "dit-n/2", "--steps", "4", "--batch", "8", "--precision", "fp32",
         "--device", "cpu", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    cli(*TRAIN, "--out", str(d / "one"))
    cli(*TRAIN, "--out", str(d / "two"), nproc=2)
    return d


def test_two_process_training_equals_one(runs):
    a = load_file(runs / "one" / "ckpt-00000004.safetensors")
    b = load_file(runs / "two" / "ckpt-00000004.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    man = json.loads((runs / "two" / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["images_seen"] == 32
    # rank 0 alone logs: one line per log step
    assert len((runs / "two" / "log.jsonl").read_text().splitlines()) == 1


def test_two_process_resume(runs):
    cli(*TRAIN[:5], "--steps", "6", *TRAIN[7:], "--out", str(runs / "two"), "--resume", nproc=2)
    assert (runs / "two" / "ckpt-00000006.safetensors").exists()


def test_two_process_sampling_is_byte_identical(runs):
    args = ["sample", str(runs / "one"), "--ipc", "3", "--steps", "4", "--batch-size", "7", "--device", "cpu"]
    cli(*args, "--out", str(runs / "s1"))
    cli(*args, "--out", str(runs / "s2"), nproc=2)
    a, b = load_synthetic(runs / "s1"), load_synthetic(runs / "s2")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_two_process_evaluation_spreads_repeats(runs):
    args = ["evaluate", "--real", "digits", "--full", "--epochs", "1", "--repeats", "3", "--device", "cpu",
            "--precision", "fp32"]
    cli(*args, "--out", str(runs / "e1.json"))
    cli(*args, "--out", str(runs / "e2.json"), nproc=2)
    a, b = json.loads((runs / "e1.json").read_text()), json.loads((runs / "e2.json").read_text())
    assert a["runs"] == b["runs"] and len(b["runs"]) == 3


def test_two_process_minimax_with_synced_memories(runs):
    cli("finetune", "--ckpt", str(runs / "one"), "--data", "digits", "--steps", "3", "--batch", "8",
        "--precision", "fp32", "--device", "cpu", "--sync-memory", "--out", str(runs / "ft"), nproc=2)
    man = json.loads((runs / "ft" / "manifest.json").read_text())
    assert man["steps"] == 3 and man["objective"] == "minimax" and man["world_size"] == 2
    assert man["finetune_config"]["sync_memory"] is True
