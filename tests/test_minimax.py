import json
import math

import pytest
import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.training.finetune import FinetuneConfig, run as finetune
from minimaxdd.training.minimax import ClassMemory, cosine_matrix, diversity_loss, diversity_mean_loss, minimax_terms, representativeness_loss, representativeness_mean_loss
from minimaxdd.training.loop import TrainConfig
from minimaxdd.training.scratch import run as train

S2 = 1 / math.sqrt(2)


def test_losses_on_hand_computed_cases():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mem = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    # cos matrix: [[1, s2, -1], [0, s2, 0]]
    assert torch.allclose(cosine_matrix(pred, mem), torch.tensor([[1, S2, -1], [0, S2, 0]]))
    assert math.isclose(representativeness_loss(pred, mem).item(), 2.0, rel_tol=1e-6)           # 1 - (-1)
    assert math.isclose(representativeness_loss(pred, mem, "sample").item(), (2 + 1) / 2, rel_tol=1e-6)
    assert math.isclose(diversity_loss(pred, mem).item(), 1.0, rel_tol=1e-6)
    assert math.isclose(diversity_loss(pred, mem, "sample").item(), (1 + S2) / 2, rel_tol=1e-6)
    # mean of mem = (1/3, 1/3): cos with (1,0) and (0,1) = s2 each
    assert math.isclose(representativeness_mean_loss(pred, mem).item(), 1 - S2, rel_tol=1e-5)
    assert math.isclose(diversity_mean_loss(pred, mem).item(), (1 + S2 - 1 + 0 + S2 + 0) / 6, rel_tol=1e-5)
    # trailing dims are flattened; a zero vector does not give NaN (epsilon)
    assert torch.isfinite(diversity_loss(torch.zeros(2, 1, 2), mem.view(3, 1, 2)))
    with pytest.raises(ValueError, match="empty"):
        diversity_loss(pred, torch.zeros(0, 2))


def test_gradient_of_the_minimax_terms_follows_the_extreme_pair():
    pred = torch.tensor([[1.0, 0.2], [0.3, 1.0]], requires_grad=True)
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    diversity_loss(pred, mem).backward()
    # only the most similar pair (pred 0 with mem 0 ... or pred 1 with mem 1) gets a gradient
    assert (pred.grad.abs().sum(1) > 0).sum() == 1


def test_ring_buffer_wraps_around():
    m = ClassMemory(num_classes=3, size=4, dim=2)
    m.push(torch.tensor([0, 0, 1]), torch.tensor([[1.0, 1], [2, 2], [9, 9]]))
    assert m.get(0).tolist() == [[1, 1], [2, 2]] and m.get(1).tolist() == [[9, 9]] and len(m.get(2)) == 0
    m.push(torch.tensor([0, 0, 0]), torch.tensor([[3.0, 3], [4, 4], [5, 5]]))
    assert sorted(m.get(0)[:, 0].tolist()) == [2, 3, 4, 5]          # the oldest (1) was overwritten
    m.push(torch.zeros(6, dtype=torch.long), torch.arange(12.0).view(6, 2))   # more than the buffer at once
    assert sorted(m.get(0)[:, 0].tolist()) == [4, 6, 8, 10]        # the newest four
    assert len(m) == 5


def test_minimax_terms_skip_until_memory_and_average_over_classes():
    real, pred = ClassMemory(2, 4, 2), ClassMemory(2, 4, 2)
    x0 = torch.tensor([[1.0, 0], [0, 1.0]])
    xh = torch.tensor([[1.0, 1], [1.0, 0]], requires_grad=True)
    y = torch.tensor([0, 1])
    loss, logs = minimax_terms(xh, x0, y, real, pred, "minimax", 0.5, 0.25)
    assert loss.item() == 0 and len(real) == 2 and len(pred) == 2          # first batch: memories were empty
    loss, logs = minimax_terms(xh, x0, y, real, pred, "minimax", 0.5, 0.25)
    # class 0: rep 1 - cos((1,1),(1,0)) = 1 - s2; div cos((1,1),(1,1)) = 1. class 1: rep 1 - 0 = 1; div 1.
    want = (0.5 * ((1 - S2) + 1) + 0.25 * 2) / 2
    assert math.isclose(loss.item(), want, rel_tol=1e-5)
    assert math.isclose(logs["rep"], ((1 - S2) + 1) / 2, rel_tol=1e-5)
    assert torch.equal(pred.get(0)[0], xh[0].detach())   # predictions are stored detached
    with pytest.raises(ValueError, match="unknown objective"):
        minimax_terms(xh, x0, y, real, pred, "nope", 0, 0)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train(TrainConfig(data="digits", out=str(out), model="dit-t/2", steps=2, batch=16, precision="fp32", device="cpu",
                      log_every=1))
    return out


FT = dict(data="digits", steps=3, batch=8, precision="fp32", device="cpu", log_every=1)


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(ckpt.resolve(run)))


def test_difffit_gradients_reach_only_trainable_parameters(base_run, tmp_path):
    info = finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "ft"), **FT))
    before, after = _weights(base_run), _weights(tmp_path / "ft")
    changed = {k[6:] for k in after if k.startswith("model.") and not torch.equal(after[k], before["ema." + k[6:]])}
    assert changed, "nothing was trained"
    assert all(any(s in k for s in ("bias", "gamma", "y_embed")) for k in changed), changed
    assert any("gamma" in k for k in changed) and "blocks.0.attn.qkv.weight" not in changed
    # the EMA averages only what is trained: frozen tensors keep the base's EMA values, trained ones move
    ema_changed = {k[4:] for k in after if k.startswith("ema.") and not torch.equal(after[k], before[k])}
    assert ema_changed and ema_changed <= changed
    man = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert man["objective"] == "minimax" and man["lambda_r"] == 0.002 and man["lambda_d"] == 0.008
    assert 0 < man["trainable_params"] < man["total_params"]
    assert man["epoch_means"] and {"loss", "rep", "div"} <= set(man["epoch_means"][0])
    assert info["steps"] == 3


def test_minimax_with_zero_lambdas_equals_simple(base_run, tmp_path):
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "s"), objective="simple", **FT))
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "m"), objective="minimax", lambda_r=0.0,
                            lambda_d=0.0, **FT))
    a, b = _weights(tmp_path / "s"), _weights(tmp_path / "m")
    assert all(torch.equal(a[k], b[k]) for k in a)
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "m2"), objective="minimax", lambda_r=1.0,
                            lambda_d=1.0, **FT))
    c = _weights(tmp_path / "m2")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_full_trainable_and_class_map_checks(base_run, tmp_path):
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "f"), trainable="full", **{**FT, "steps": 1}))
    before, after = _weights(base_run), _weights(tmp_path / "f")
    assert not torch.equal(after["model.blocks.0.attn.qkv.weight"], before["ema.blocks.0.attn.qkv.weight"])
    assert ckpt.read_meta(tmp_path / "f").class_map == list(range(10))
    with pytest.raises(UserError, match="--class-map has 3 entries"):
        finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "g"), class_map=[0, 1, 2], **FT))
    with pytest.raises(UserError, match="outside"):
        finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "g"), class_map=list(range(5, 15)), **FT))
    # an explicit map is stored and used by sampling
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "h"), class_map=list(range(9, -1, -1)),
                            **{**FT, "steps": 1}))
    assert ckpt.read_meta(tmp_path / "h").class_map == list(range(9, -1, -1))


def test_imagenet_class_mapping():
    from minimaxdd.data.imagenet import IMAGEWOOF, imagenet_indices

    assert imagenet_indices(IMAGEWOOF) == [193, 182, 258, 162, 155, 167, 159, 273, 207, 229]
    with pytest.raises(UserError, match="synset"):
        imagenet_indices(["n99999999"])


def test_resumed_finetune_restores_the_memories(base_run, tmp_path):
    kw = {**FT, "objective": "minimax", "lambda_r": 1.0, "lambda_d": 1.0, "checkpoint_every": 2}
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "a"), **{**kw, "steps": 4}))
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "b"), **{**kw, "steps": 2}))
    assert (tmp_path / "b" / "ckpt-00000002.state0.pt").exists()
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "b"), resume=True, **{**kw, "steps": 4}))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without the saved memories the resumed run starts them empty and ends elsewhere
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), **{**kw, "steps": 2}))
    (tmp_path / "c" / "ckpt-00000002.state0.pt").unlink()
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), resume=True, **{**kw, "steps": 4}))
    c = _weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_compiled_finetune_matches_eager(base_run, tmp_path):
    # torch.compile changes how the step is computed (fused kernels), not what it computes
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "e"), **FT))
    from torch._dynamo.utils import counters
    counters.clear()
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), compile=True, **FT))
    assert counters["stats"]["unique_graphs"] >= 1          # the network really went through the compiler
    a, b = _weights(tmp_path / "e"), _weights(tmp_path / "c")
    moved = [k for k in a if k.startswith("model.") and not torch.equal(a[k], _weights(base_run)["ema." + k[6:]])]
    assert moved
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    la = [json.loads(s)["loss"] for s in (tmp_path / "e" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(s)["loss"] for s in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert len(la) == 3 and la == pytest.approx(lb, rel=1e-4)
