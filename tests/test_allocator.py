"""`runtime.keep_freed_memory`: large freed blocks are reused instead of faulted in again (glibc on Linux)."""
import json
import os
import platform
import subprocess
import sys

import pytest

from minimaxdd.runtime import ALLOCATOR_VARIABLE

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt only")

# a child process: ConvNet-3 training steps in fp32 at batch 80 (first feature maps of 80 x 128 x 32 x 32 floats,
# 42 MB, above glibc's largest mmap threshold); prints whether the setting applied and the minor page faults of
# the last 4 steps
CHILD = """
import json, resource, sys, torch
from minimaxdd.evaluation.classifiers import build_model
from minimaxdd.runtime import keep_freed_memory, allocator_line
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
torch.manual_seed(0)
net = build_model("convnet3", 1, 10, 28)
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(80, 1, 28, 28), torch.randint(0, 10, (80,))
def step():
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
step(); step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
                  "line": allocator_line()}))
"""


def _child(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_kept_memory_is_reused_instead_of_faulted_in_every_step():
    system, kept = _child("system"), _child("kept")
    assert not system["applied"] and kept["applied"]
    # as the platform sets it, every step maps its large feature maps afresh: 42 MB is 10240 pages of 4 KB
    assert system["faults"] >= 4 * 10240
    assert kept["faults"] < system["faults"] / 5       # 16x fewer here (214387 against 12839)
    assert "freed blocks kept" in kept["line"] and "as the platform set it" in system["line"]


def test_the_variable_leaves_the_allocator_alone():
    r = _child("kept", {ALLOCATOR_VARIABLE: "system"})
    assert not r["applied"] and f"{ALLOCATOR_VARIABLE}=system" in r["line"]


@glibc
def test_the_command_line_keeps_freed_memory():
    """`minimaxdd machine` runs through cli.main, which sets the allocator before any command, and says so."""
    out = subprocess.run([sys.executable, "-m", "minimaxdd", "machine"], capture_output=True, text=True, check=True)
    assert "memory: freed blocks kept for reuse" in out.stdout
