"""`ablation` / `sweep` take their evaluation protocol from the base checkpoint unless told otherwise."""
import torch

from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.pipeline.ablation import _config


def test_the_protocol_comes_from_the_flag_else_the_checkpoint_else_the_default(tmp_path, capsys):
    official = tmp_path / "DiT-tiny.pt"
    torch.save({k: v for k, v in build_denoiser("dit-n/2", 8, 1, 10).state_dict().items() if "gamma" not in k},
               official)
    cfg = _config(str(official), "digits", "2", 1, {}, "cpu")
    assert cfg.evaluate.protocol == "idc"                   # the official DiT's: the paper's ImageNet protocol
    assert "evaluation protocol idc (checkpoint)" in capsys.readouterr().out
    cfg = _config(str(official), "digits", "2", 1, {"evaluate": {"protocol": "dc"}}, "cpu")
    assert cfg.evaluate.protocol == "dc" and "(given)" in capsys.readouterr().out


def test_a_preset_stands_for_its_finetune_sample_and_evaluate_flags(capsys):
    """`--preset fashion-mnist` gives the config that restating the preset with --set flags gave (the Table-5
    command of BENCHMARKS.md before --preset existed); the study's own layer (random baseline only, no full row,
    no metrics, --repeats) still applies, and the preset's base training does not."""
    import pytest

    from minimaxdd.errors import UserError
    from minimaxdd.pipeline.config import parse_set
    flags = parse_set(["finetune.steps=1000", "finetune.epochs=null", "finetune.ema=0.999", "sample.sampler=heun",
                       "sample.steps=18", "sample.batch_size=250", "sample.precision=bf16", "sample.cfg=2.0",
                       'evaluate.models=["convnet3"]', "evaluate.protocol=dc", 'evaluate.epochs={"10":300,"50":100}'])
    by_flags = _config("runs/x/base", "fashion-mnist", "10,50", 3, flags, "cpu").to_dict()
    by_preset = _config("runs/x/base", None, "10,50", 3, {}, "cpu", preset="fashion-mnist").to_dict()
    assert "evaluation protocol dc (preset)" in capsys.readouterr().out
    for section in ("finetune", "sample", "evaluate"):
        assert by_preset[section] == by_flags[section], section
    assert by_preset["data"] == "fashion-mnist" and by_preset["base"] == by_flags["base"]
    assert by_preset["evaluate"]["baselines"] == ["random"] and by_preset["evaluate"]["full_epochs"] == 0
    over = _config("runs/x/base", None, "10", 3, {"finetune": {"lambda_d": 0.08}}, "cpu", preset="fashion-mnist")
    assert over.finetune.lambda_d == 0.08 and over.finetune.steps == 1000      # --set still wins over the preset
    with pytest.raises(UserError, match="--data SPEC, or a --preset"):
        _config("runs/x/base", None, "10", 3, {}, "cpu")
