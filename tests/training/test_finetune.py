"""`minimaxdd finetune`: Difffit, the objectives end to end, class maps, checks and exact resume."""
import json

import pytest
import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.training.finetune import FinetuneConfig, check_config, finetune
from minimaxdd.training.scratch import TrainConfig
from minimaxdd.training.scratch import train_from_scratch as train


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
    assert man["config"]["objective"] == "minimax" and man["finetune_config"] == man["config"]
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


def test_the_edm_transfer_leaves_a_ddpm_finetune_bit_identical(base_run, tmp_path):
    """The paper's own formulation: every edm_transfer value trains the same bytes (its base is DDPM)."""
    for t in ("paper", "native"):
        finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / t), edm_transfer=t, lambda_r=1.0,
                                lambda_d=1.0, **FT))
    a, b = _weights(tmp_path / "paper"), _weights(tmp_path / "native")
    assert all(torch.equal(a[k], b[k]) for k in a)


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


@pytest.mark.parametrize("bad, match", [({"objective": "nope"}, "unknown objective 'nope'; choose one of simple"),
                                        ({"reduction": "row"}, "--reduction must be one of matrix, sample"),
                                        ({"memory": 0}, "--memory must be at least 1"),
                                        ({"trainable": "lora"}, "--trainable must be one of difffit, full")])
def test_the_choices_are_checked_once_before_anything_loads(bad, match, tmp_path):
    cfg = FinetuneConfig(ckpt=str(tmp_path / "no-such-base"), out=str(tmp_path / "x"), **{**FT, **bad})
    with pytest.raises(UserError, match=match):
        check_config(cfg)
    with pytest.raises(UserError, match=match):   # not "no such base": the check comes first
        finetune(cfg)


def test_imagenet_class_mapping():
    from minimaxdd.data.imagenet import IMAGEWOOF, imagenet_indices

    assert imagenet_indices(IMAGEWOOF) == [193, 182, 258, 162, 155, 167, 159, 273, 207, 229]
    with pytest.raises(UserError, match="synset"):
        imagenet_indices(["n99999999"])


RESUME = {**FT, "objective": "minimax", "lambda_r": 1.0, "lambda_d": 1.0, "checkpoint_every": 2}


def test_resumed_finetune_restores_the_memories(base_run, tmp_path):
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "a"), **{**RESUME, "steps": 4}))
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "b"), **{**RESUME, "steps": 2}))
    assert (tmp_path / "b" / "ckpt-00000002.state0.pt").exists()
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "b"), resume=True, **{**RESUME, "steps": 4}))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "a" / "ckpt-00000004.state0.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "ckpt-00000004.state0.pt", weights_only=True)
    assert all(torch.equal(sa[m][k], sb[m][k]) for m in sa for k in sa[m])


def test_resume_refuses_missing_memories_unless_told_to_start_them_fresh(base_run, tmp_path):
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "a"), **{**RESUME, "steps": 4}))
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), **{**RESUME, "steps": 2}))
    (tmp_path / "c" / "ckpt-00000002.state0.pt").unlink()
    with pytest.raises(UserError, match=r"ckpt-00000002\.state0\.pt \(this process's real_memory, pred_memory\) "
                                        r"is missing.*--fresh-state"):
        finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), resume=True, **{**RESUME, "steps": 4}))
    assert not (tmp_path / "c" / "ckpt-00000004.safetensors").exists()
    # the explicit opt-in: the memories start empty and the run ends elsewhere
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "c"), resume=True, fresh_state=True,
                            **{**RESUME, "steps": 4}))
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert ckpt.read_meta(tmp_path / "c").step == 4 and any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
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


def test_a_diverged_finetune_stops_with_the_step(base_run, tmp_path):
    from minimaxdd.errors import DivergedError

    with pytest.raises(DivergedError, match=r"non-finite at step \d+ .*a lower --lr \(it was 1e\+09\)"):
        finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "ft"), **{**FT, "steps": 8}, lr=1e9))
    assert not (tmp_path / "ft").exists()      # no checkpoint had been written: nothing kept
