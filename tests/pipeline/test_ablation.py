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
                       "sample.steps=18", "sample.batch_size=250", "sample.precision=auto", "sample.cfg=2.0",
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


def test_rows_over_sampling_seeds_are_the_mean_and_spread_of_each_seeds_mean():
    import statistics

    from minimaxdd.pipeline.ablation import combine_seeds, spread_words

    def row(method, k, mean, gen=None):
        return {"method": method, "ipc": k, "model": "convnet3", "protocol": "dc", "mean": mean, "std": 0.01,
                "runs": [mean], "generation_accuracy": gen}

    one = [row("m", 10, 0.5)]
    assert combine_seeds([(0, one)]) == one                       # one seed: its rows as they are
    rows = combine_seeds([(0, [row("m", 10, 0.50, 0.9), row("m", 50, 0.70)]),
                          (1, [row("m", 10, 0.54, 0.8), row("m", 50, 0.72)]),
                          (2, [row("m", 10, 0.55, 0.7), row("m", 50, 0.71)])])
    by_ipc = {r["ipc"]: r for r in rows}
    assert by_ipc[10]["mean"] == statistics.fmean([0.50, 0.54, 0.55])
    assert by_ipc[10]["std"] == statistics.pstdev([0.50, 0.54, 0.55]) and by_ipc[10]["std_over"] == "seeds"
    assert by_ipc[10]["generation_accuracy"] == statistics.fmean([0.9, 0.8, 0.7])
    assert by_ipc[50]["generation_accuracy"] is None and [p["seed"] for p in by_ipc[50]["per_seed"]] == [0, 1, 2]
    assert "over 3 classifier repeats" in spread_words([0], 3)
    assert "sampling seeds 0, 1, 2" in spread_words([0, 1, 2], 3)


def test_bad_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    import pytest

    from minimaxdd.cli import main
    with pytest.raises(SystemExit):
        main(["sweep", "--base", "x", "--data", "digits", "--param", "lambda_d", "--values", "1", "--seeds", "a,b",
              "--out", str(tmp_path / "s")])
    assert "comma-separated non-negative integers" in capsys.readouterr().err
    assert main(["ablation", "--base", "x", "--data", "digits", "--seeds", "1,1", "--out", str(tmp_path / "a")]) == 2
    assert "distinct" in capsys.readouterr().err
    assert not (tmp_path / "a" / "config.json").exists()


def test_a_row_set_aside_twice_keeps_both_copies(tmp_path):
    from minimaxdd.pipeline.evaluation import _set_aside_stale

    d = tmp_path / "evaluate"
    d.mkdir()
    keep = d / "minimax-ipc10-convnet3.json"
    for text in ['{"key": "a"}', '{"key": "b"}', '{"key": "b"}']:
        keep.write_text("{}")
        (d / "random-ipc50-convnet3.json").write_text(text)
        _set_aside_stale(d, {keep})
        assert keep.exists() and not (d / "random-ipc50-convnet3.json").exists()
    stale = sorted(p.name for p in (d / "stale").iterdir())
    # the second row differs from the first: numbered, the first kept; the third has the second's bytes: it
    # lands on that copy instead of a third
    assert (d / "stale" / "random-ipc50-convnet3.json").read_text() == '{"key": "a"}'
    assert (d / "stale" / "random-ipc50-convnet3.1.json").read_text() == '{"key": "b"}'
    assert stale == ["random-ipc50-convnet3.1.json", "random-ipc50-convnet3.json"]


def test_sweeps_over_decades_plot_on_a_log_axis():
    from minimaxdd.pipeline.ablation import log_axis
    assert log_axis([0.008, 0.08, 0.8]) and log_axis([8, 64, 256])
    assert not log_axis([0, 0.002, 0.008]) and not log_axis([0.004, 0.008, 0.016]) and not log_axis([])
