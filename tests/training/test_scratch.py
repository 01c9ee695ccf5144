"""`minimaxdd train`: checkpoints, exact resume, run-directory protection and the CLI's errors."""
import json

import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.training.scratch import TrainConfig, train_from_scratch

TINY = dict(data="digits", model="uvit-t", batch=16, checkpoint_every=2, log_every=1, precision="fp32", device="cpu")


def weights(path):
    from safetensors.torch import load_file
    return load_file(str(ckpt.resolve(path)))


def test_train_checkpoints_and_resume_is_exact(tmp_path):
    info = train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=4, **TINY))
    assert info["steps"] == 4 and info["images_seen"] == 64
    files = ckpt.list_checkpoints(tmp_path / "a")
    assert [p.name for p in files] == ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"]
    meta = ckpt.read_meta(tmp_path / "a")
    assert meta.step == 4 and meta.codec == "pixel" and meta.class_map == list(range(10)) and meta.channels == 1
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["trainable_params"] == man["total_params"] > 0

    # 2 steps, then --resume for 2 more: the same bytes as 4 straight
    train_from_scratch(TrainConfig(out=str(tmp_path / "b"), steps=2, **TINY))
    train_from_scratch(TrainConfig(out=str(tmp_path / "b"), steps=4, resume=True, **TINY))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the EMA differs from the raw weights and moved away from the initialisation
    assert any(not torch.equal(a[k], a["ema." + k[6:]]) for k in a if k.startswith("model."))


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=5, keep=1, **{**TINY, "checkpoint_every": 1, "model": "dit-n/2"}))
    names = sorted(p.name for p in (tmp_path / "a").glob("ckpt-*"))
    assert names == ["ckpt-00000004.optim.pt", "ckpt-00000004.safetensors",
                     "ckpt-00000005.optim.pt", "ckpt-00000005.safetensors"]


def test_run_dir_protection(tmp_path):
    train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=1, **TINY))
    with pytest.raises(UserError, match="--resume"):
        train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=1, **TINY))
    with pytest.raises(UserError, match="no checkpoint"):
        train_from_scratch(TrainConfig(out=str(tmp_path / "new"), steps=1, resume=True, **TINY))
    with pytest.raises(UserError, match="another model"):
        train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=2, resume=True, **{**TINY, "model": "dit-t/2"}))
    with pytest.raises(UserError, match="--epochs"):
        train_from_scratch(TrainConfig(out=str(tmp_path / "c"), **TINY))
    train_from_scratch(TrainConfig(out=str(tmp_path / "a"), steps=1, overwrite=True, **{**TINY, "model": "dit-t/2"}))
    assert ckpt.read_meta(tmp_path / "a").model["arch"] == "dit"


def test_cli_train_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "x"), "--model", "dit-t/8", "--steps", "1",
                 "--size", "12"]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
