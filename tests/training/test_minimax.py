"""The Minimax criteria on hand-computed cases: the similarity, the four terms and their reductions,
the class memories, which terms each Table-5 objective uses, and the step that fills the memories."""
import math

import pytest
import torch

from minimaxdd.training.loop import Batch
from minimaxdd.training.minimax import (
    OBJECTIVES,
    ClassMemory,
    MinimaxStep,
    cosine_matrix,
    diversity_loss,
    diversity_mean_loss,
    minimax_loss,
    representativeness_loss,
    representativeness_mean_loss,
)

S2 = 1 / math.sqrt(2)

# The 2x2 example: predictions (1, 0) and (3, 4) against the memory (0, 1), (1, 0).
# cos = [[0, 1], [4/5, 3/5]]
PRED = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
MEM = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
# mean of MEM = (1/2, 1/2): cos with (1, 0) = 1/sqrt2, with (3, 4) = 3.5 / (5 / sqrt2) = 7 / (5 sqrt2)
REP_MEAN = ((1 - S2) + (1 - 7 * S2 / 5)) / 2
# the prediction memory of the objective tests: the one entry (1, 1); cos with PRED = [1/sqrt2, 7/(5 sqrt2)]
PMEM = torch.tensor([[1.0, 1.0]])
DIV_PMEM, DIV_MEAN_PMEM = 7 * S2 / 5, (S2 + 7 * S2 / 5) / 2


def close(a, b):
    return math.isclose(float(torch.as_tensor(a).detach()), b, rel_tol=1e-6, abs_tol=1e-7)


def test_cosine_matrix_on_hand_vectors():
    pred = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    mem = torch.tensor([[4.0, 3.0], [0.0, -1.0], [1.0, 0.0]])
    want = torch.tensor([[24 / 25, -4 / 5, 3 / 5], [3 / 5, -1.0, 0.0]])
    torch.testing.assert_close(cosine_matrix(pred, mem), want, rtol=0, atol=1e-7)
    # trailing dims are flattened; bf16 inputs are compared in fp32
    got = cosine_matrix(pred.view(2, 1, 2).bfloat16(), mem.view(3, 2, 1).bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # a zero vector has similarity 0 with everything (the epsilon), not NaN
    assert cosine_matrix(torch.zeros(1, 2), mem).tolist() == [[0.0, 0.0, 0.0]]


def test_minimax_terms_and_reductions_on_a_2x2_case():
    torch.testing.assert_close(cosine_matrix(PRED, MEM), torch.tensor([[0.0, 1.0], [0.8, 0.6]]))
    assert close(representativeness_loss(PRED, MEM, "matrix"), 1.0)             # 1 - min = 1 - 0
    assert close(representativeness_loss(PRED, MEM, "sample"), 0.7)             # mean(1 - 0, 1 - 0.6)
    assert close(diversity_loss(PRED, MEM, "matrix"), 1.0)                      # max
    assert close(diversity_loss(PRED, MEM, "sample"), 0.9)                      # mean(1, 0.8)


def test_the_sample_reduction_is_below_the_matrix_one_for_several_predictions():
    # the matrix form takes the one extreme over all pairs, the sample form averages each prediction's own
    # extreme: below it whenever those differ (always, for random vectors), equal for a single prediction
    g = torch.Generator().manual_seed(0)
    for p in (2, 5, 16):
        pred, mem = torch.randn(p, 3, generator=g), torch.randn(4, 3, generator=g)
        for term in (representativeness_loss, diversity_loss):
            assert term(pred, mem, "sample") < term(pred, mem, "matrix") == term(pred, mem), term.__name__
            assert term(pred[:1], mem, "sample").item() == term(pred[:1], mem, "matrix").item(), term.__name__


def test_mean_variants_on_a_2x2_case():
    assert close(representativeness_mean_loss(PRED, MEM), REP_MEAN)
    assert close(diversity_mean_loss(PRED, MEM), (0 + 1 + 0.8 + 0.6) / 4)


def test_terms_refuse_empty_memories_mismatched_sizes_and_unknown_reductions():
    for term in (representativeness_loss, diversity_loss, representativeness_mean_loss, diversity_mean_loss):
        with pytest.raises(ValueError, match="empty"):
            term(PRED, torch.zeros(0, 2))
        with pytest.raises(ValueError, match="different sizes"):
            term(PRED, torch.zeros(3, 3))
    for term in (representativeness_loss, diversity_loss):     # the mean forms have no reduction to choose
        with pytest.raises(ValueError, match="reduction"):
            term(PRED, MEM, "per-class")


def test_gradient_of_the_minimax_terms_follows_the_extreme_pair():
    pred = torch.tensor([[1.0, 0.2], [0.3, 1.0]], requires_grad=True)
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    diversity_loss(pred, mem).backward()
    # only the most similar pair (pred 0 with mem 0: cos 0.981 > pred 1 with mem 1: 0.958) gets a gradient
    assert pred.grad[0].abs().sum() > 0 and pred.grad[1].abs().sum() == 0


def test_memory_push_wraps_oldest_first():
    m = ClassMemory(num_classes=3, size=4, dim=2)
    m.push(torch.tensor([0, 0, 1]), torch.tensor([[1.0, 1], [2, 2], [9, 9]]))
    assert m.get(0).tolist() == [[1, 1], [2, 2]] and m.get(1).tolist() == [[9, 9]]
    assert m.get(2).shape == (0, 2) and len(m) == 3
    m.push(torch.tensor([0, 0, 0]), torch.tensor([[3.0, 3], [4, 4], [5, 5]]))
    assert m.data[0, :, 0].tolist() == [5, 2, 3, 4]          # slot 0 (the oldest, 1) was overwritten
    assert m.ptr.tolist() == [1, 1, 0] and m.count.tolist() == [4, 1, 0]


def test_memory_takes_the_newest_rows_of_a_batch_larger_than_itself():
    m = ClassMemory(num_classes=1, size=4, dim=2)
    m.push(torch.tensor([0]), torch.tensor([[1.0, 1]]))
    m.push(torch.zeros(6, dtype=torch.long), torch.arange(12.0).view(6, 2))      # rows 0, 2, ..., 10
    # the newest four (4, 6, 8, 10) written from the pointer (1) on, wrapping
    assert m.data[0, :, 0].tolist() == [10, 4, 6, 8]
    assert int(m.ptr[0]) == 1 and int(m.count[0]) == 4
    with pytest.raises(ValueError, match="at least 1"):
        ClassMemory(1, 0, 2)


def test_memory_state_round_trip_continues_identically():
    a = ClassMemory(2, 3, 2)
    a.push(torch.tensor([0, 1, 0, 0, 0]), torch.arange(10.0).view(5, 2))
    b = ClassMemory(2, 3, 2)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.push(torch.tensor([1, 0]), torch.tensor([[70.0, 70], [80, 80]]))
    assert torch.equal(a.data, b.data) and torch.equal(a.count, b.count) and torch.equal(a.ptr, b.ptr)
    # class 0 kept the newest 3 of its 4 rows (4, 6, 8), then 80 overwrote the oldest
    assert b.get(1).tolist() == [[2, 3], [70, 70]] and b.get(0)[:, 0].tolist() == [80, 6, 8]
    s = a.state_dict()
    assert s["data"].device.type == "cpu" and set(s) == {"data", "count", "ptr"}


def test_table5_objectives_use_exactly_their_terms():
    assert OBJECTIVES == {"simple": (), "rep": ("rep",), "div": ("div",), "rep-mean": ("rep-mean",),
                          "div-mean": ("div-mean",), "minimax": ("rep", "div"), "mean": ("rep-mean", "div-mean")}
    real, pred = ClassMemory(1, 4, 2), ClassMemory(1, 4, 2)
    real.push(torch.tensor([0, 0]), MEM)
    pred.push(torch.tensor([0]), PMEM)
    rep, rep_mean, div, div_mean = 1.0, REP_MEAN, DIV_PMEM, DIV_MEAN_PMEM
    want = {"simple": (0, 0), "rep": (rep, 0), "div": (0, div), "rep-mean": (rep_mean, 0), "div-mean": (0, div_mean),
            "minimax": (rep, div), "mean": (rep_mean, div_mean)}
    for objective, (r, d) in want.items():
        # lambda_d = 10 tells a diversity term from a representativeness one of the same size
        loss, logs = minimax_loss(PRED, torch.tensor([0, 0]), real, pred, objective, 1.0, 10.0)
        assert close(loss, r + 10 * d), objective
        assert close(logs["rep"], r) and close(logs["div"], d) and set(logs) == {"rep", "div"}, objective


def test_classes_without_predictions_are_skipped_but_counted():
    real, pred = ClassMemory(3, 4, 2), ClassMemory(3, 4, 2)
    real.push(torch.tensor([0, 0]), MEM)
    pred.push(torch.tensor([0]), PMEM)
    x0_hat = torch.cat([PRED, torch.tensor([[5.0, -1.0]])])        # class 0 twice, class 2 (empty memories) once
    loss, logs = minimax_loss(x0_hat, torch.tensor([0, 0, 2]), real, pred, "minimax", 0.5, 0.25)
    # class 0's terms over the 2 distinct classes of the batch
    assert close(loss, (0.5 * 1.0 + 0.25 * DIV_PMEM) / 2)
    assert close(logs["rep"], 1.0 / 2) and close(logs["div"], DIV_PMEM / 2)
    loss, logs = minimax_loss(x0_hat, torch.tensor([2, 2, 2]), real, pred, "minimax", 0.5, 0.25)
    assert loss.item() == 0.0 and logs == {"rep": 0.0, "div": 0.0}


def test_the_loss_reads_the_memories_and_changes_nothing():
    real, pred = ClassMemory(1, 4, 2), ClassMemory(1, 4, 2)
    real.push(torch.tensor([0, 0]), MEM)
    pred.push(torch.tensor([0]), PMEM)
    before = [(m.data.clone(), m.count.clone(), m.ptr.clone()) for m in (real, pred)]
    minimax_loss(PRED, torch.tensor([0, 0]), real, pred, "minimax", 1.0, 1.0, "sample")
    after = [(m.data, m.count, m.ptr) for m in (real, pred)]
    assert all(torch.equal(x, y) for b, a in zip(before, after) for x, y in zip(b, a))


def _step(gather=None, classes=(193, 207)):
    slot = torch.full((1000,), -1, dtype=torch.long)
    slot[list(classes)] = torch.arange(len(classes))
    return MinimaxStep(objective="minimax", lambda_r=0.5, lambda_d=0.25, reduction="matrix", real=ClassMemory(2, 4, 2),
                       pred=ClassMemory(2, 4, 2), slot=slot, gather=gather)


def test_the_step_pushes_after_the_loss_so_a_batch_never_meets_itself():
    step = _step()
    x0 = torch.tensor([[1.0, 0], [0, 1.0]])
    x0_hat = torch.tensor([[1.0, 1], [1.0, 0]], requires_grad=True)
    batch = Batch(x0=x0, labels=torch.tensor([193, 207]), dropped=torch.tensor([False, True]), step=0)
    loss, logs = step({"x0_hat": x0_hat}, batch)
    assert loss.item() == 0.0 and logs == {"rep": 0.0, "div": 0.0}     # the memories were empty
    # the batch is now in its classes' slots (network class 193 -> slot 0, 207 -> slot 1), predictions detached
    assert step.real.get(0).tolist() == [[1, 0]] and step.real.get(1).tolist() == [[0, 1]]
    assert step.pred.get(0).tolist() == [[1, 1]] and not step.pred.data.requires_grad
    loss, logs = step({"x0_hat": x0_hat}, Batch(x0=x0, labels=batch.labels, dropped=batch.dropped, step=1))
    # class 0: rep 1 - cos((1,1),(1,0)) = 1 - s2; div cos((1,1),(1,1)) = 1. class 1: rep 1 - 0 = 1; div 1.
    assert close(loss, (0.5 * ((1 - S2) + 1) + 0.25 * 2) / 2)
    assert close(logs["rep"], ((1 - S2) + 1) / 2) and close(logs["div"], 1.0)
    assert len(step.real) == len(step.pred) == 4
    assert set(step.memories()) == {"real_memory", "pred_memory"} and step.memories()["pred_memory"] is step.pred


def test_the_step_pushes_every_process_batch_through_gather():
    step = _step(gather=lambda t: torch.cat([t, t]))                    # two "processes" with the same batch
    step({"x0_hat": torch.ones(1, 2)}, Batch(x0=torch.ones(1, 2), labels=torch.tensor([207]),
                                              dropped=torch.tensor([False]), step=0))
    assert step.real.count.tolist() == [0, 2] and step.pred.count.tolist() == [0, 2]


def test_gradients_flow_only_through_the_prediction():
    step = _step()
    x0 = torch.tensor([[1.0, 0], [0, 1.0]], requires_grad=True)
    x0_hat = torch.tensor([[1.0, 1], [1.0, 0]], requires_grad=True)
    labels = torch.tensor([193, 207])
    for s in range(2):
        loss, _ = step({"x0_hat": x0_hat}, Batch(x0=x0, labels=labels, dropped=torch.zeros(2, dtype=torch.bool),
                                                 step=s))
    loss.backward()
    assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0
    assert x0.grad is None                                              # the real samples only fill the memory
    assert not step.real.data.requires_grad and not step.pred.data.requires_grad
    # the gradient is the one of the terms with the memories as constants
    ref = x0_hat.detach().clone().requires_grad_(True)
    real, pred = ClassMemory(2, 4, 2), ClassMemory(2, 4, 2)
    real.push(torch.tensor([0, 1]), x0.detach())
    pred.push(torch.tensor([0, 1]), x0_hat.detach())
    minimax_loss(ref, torch.tensor([0, 1]), real, pred, "minimax", 0.5, 0.25)[0].backward()
    assert torch.equal(ref.grad, x0_hat.grad)
