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
