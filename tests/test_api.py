"""The public API at the package root: the four names import from `minimaxdd`, are the package's own functions,
are documented, and importing the root alone stays light."""
import math
import subprocess
import sys

import torch

import minimaxdd
from minimaxdd import distill, evaluate_set, minimax_loss, sample_checkpoint
from minimaxdd.diffusion import generation
from minimaxdd.evaluation import train_test
from minimaxdd.pipeline import distill as pipeline_distill
from minimaxdd.training import minimax
from minimaxdd.training.minimax import ClassMemory


def test_the_root_names_are_the_pipeline_functions_and_documented():
    assert distill is pipeline_distill.distill and sample_checkpoint is generation.sample_checkpoint
    assert evaluate_set is train_test.evaluate_set and minimax_loss is minimax.minimax_loss
    for f in (distill, evaluate_set, minimax_loss, sample_checkpoint):
        assert callable(f) and len(f.__doc__.strip()) > 40
        assert f"`{f.__name__}(" in minimaxdd.__doc__                  # the package docstring describes each
    assert set(minimaxdd.__all__) >= {"distill", "evaluate_set", "minimax_loss", "sample_checkpoint"}


def test_importing_the_root_loads_neither_torch_nor_a_stage():
    code = "import sys, minimaxdd; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('minimaxdd')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['minimaxdd']"


def test_minimax_loss_from_the_root_on_a_hand_computed_batch():
    # two predictions of class 0, (1, 0) and (3, 4); real memory (0, 1), (1, 0); prediction memory (1, 1)
    x0_hat = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    labels = torch.zeros(2, dtype=torch.long)
    real, pred = ClassMemory(1, 4, 2), ClassMemory(1, 4, 2)
    real.push(torch.zeros(2, dtype=torch.long), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    pred.push(torch.zeros(1, dtype=torch.long), torch.tensor([[1.0, 1.0]]))
    loss, logs = minimax_loss(x0_hat, labels, real, pred, "minimax", lambda_r=2.0, lambda_d=3.0)
    rep = 1 - 0.0                                 # 1 - min cos: (1, 0) is orthogonal to (0, 1)
    div = 7 / (5 * math.sqrt(2))                  # max cos with (1, 1): that of (3, 4)
    assert math.isclose(logs["rep"], rep, abs_tol=1e-6) and math.isclose(logs["div"], div, rel_tol=1e-6)
    assert math.isclose(loss.item(), 2 * rep + 3 * div, rel_tol=1e-6)
    loss.backward()
    assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0
    # `simple` (no Minimax terms) adds nothing
    zero, _ = minimax_loss(x0_hat, labels, real, pred, "simple", 2.0, 3.0)
    assert zero.item() == 0.0
