"""Numeric settings are checked by their meaning (`settings.Bounds`), wherever a config is built from outside
values (flags, presets, --set): every int or float setting of a stage config declares its bounds, and
`build` refuses a value outside them, or a non-finite float, naming the key."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from minimaxdd.baselines.registry import SelectConfig
from minimaxdd.diffusion.generation import SampleConfig
from minimaxdd.errors import UserError
from minimaxdd.evaluation.runner import EvaluateConfig
from minimaxdd.pipeline.config import DistillConfig
from minimaxdd.settings import AT_LEAST_1, POSITIVE, PROBABILITY, Bounds, build, field_types, is_run_field
from minimaxdd.training.finetune import FinetuneConfig
from minimaxdd.training.scratch import TrainConfig

# Numeric settings without bounds metadata, each checked where its limit is known, with a message of its own
# (the loop checks the batch against the number of training images: test_bad_inputs' train-batch-0; the distill
# config checks extras.pool is 0 or at least 2 and extras.prototypes positive: test_extras), or free (seed).
UNBOUNDED = {"batch", "seed", "pool", "prototypes"}


def _numeric(tp: typing.Any) -> bool:
    """Whether type `tp` holds a number: int, float, or a union, list or dict of them."""
    return tp in (int, float) or any(_numeric(a) for a in typing.get_args(tp))


def _settings(cls: type, where: str = "") -> list[tuple[str, dataclasses.Field, typing.Any]]:
    """(key, field, type) of every setting of `cls`, nested sections included."""
    hints, out = field_types(cls), []
    for f in dataclasses.fields(cls):
        if is_run_field(f):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _settings(hints[f.name], f"{where}{f.name}.")
        else:
            out.append((where + f.name, f, hints[f.name]))
    return out


@pytest.mark.parametrize("cls", [TrainConfig, FinetuneConfig, SampleConfig, EvaluateConfig, SelectConfig,
                                 DistillConfig])
def test_every_numeric_setting_declares_its_bounds(cls):
    loose = [key for key, f, tp in _settings(cls)
             if _numeric(tp) and f.metadata.get("bounds") is None and f.name not in UNBOUNDED]
    assert loose == []


@pytest.mark.parametrize("cls", [TrainConfig, FinetuneConfig, SampleConfig, EvaluateConfig, SelectConfig,
                                 DistillConfig])
def test_every_default_is_within_its_bounds(cls):
    for key, f, _ in _settings(cls):
        b, default = f.metadata.get("bounds"), f.default
        if b is not None and isinstance(default, (int, float)) and not isinstance(default, bool):
            assert b.holds(default), key


def test_bounds_read_as_a_user_reads_them():
    assert (str(POSITIVE), str(AT_LEAST_1), str(PROBABILITY)) == ("greater than 0", "at least 1", "in [0, 1]")
    assert str(Bounds(0, 1, lo_open=True, hi_open=True)) == "in (0, 1)"
    assert POSITIVE.holds(1e-12) and not POSITIVE.holds(0) and PROBABILITY.holds(1) and not PROBABILITY.holds(1.01)


@pytest.mark.parametrize("key, value, says", [
    ("log_every", 0, r"^train\.log_every \(--log-every\) must be at least 1, got 0: steps between lines of log"),
    ("lr", -1e-4, r"^train\.lr \(--lr\) must be greater than 0, got -0\.0001"),
    ("class_dropout", 1.0, r"class_dropout \(--class-dropout\) must be in \[0, 1\), got 1\.0"),
    ("lr", float("nan"), r"^train\.lr: expected a finite number, got nan"),
    ("time_limit", float("inf"), r"^train\.time_limit: expected a finite number, got inf"),
])
def test_build_refuses_a_value_outside_its_meaning(key, value, says):
    with pytest.raises(UserError, match=says):
        build(TrainConfig, {"data": "digits", "out": "o", key: value}, "train", allow_run=True)
    assert build(TrainConfig, {"data": "digits", "out": "o"}, "train", allow_run=True).log_every == 50


def test_nested_lists_and_dicts_are_checked_item_by_item():
    with pytest.raises(UserError, match=r"^ipc must be at least 1, got 0: images per class; give it a value at least 1$"):
        build(DistillConfig, {"ipc": [10, 0]})
    with pytest.raises(UserError, match=r"^evaluate\.epochs must be at least 1, got -1"):
        build(DistillConfig, {"evaluate": {"epochs": {"10": 300, "50": -1}}})
    with pytest.raises(UserError, match=r"^choose\.cfg must be in \[0, 100\], got 1000"):
        build(DistillConfig, {"choose": {"cfg": [1.5, 1000]}})
    assert build(DistillConfig, {"ipc": [1, 10], "evaluate": {"epochs": {"10": 300}}}).ipc == [1, 10]


def test_a_bracketed_list_of_bare_words_is_that_list():
    from minimaxdd.pipeline.config import build_config, parse_set

    # `--set 'evaluate.baselines=[medoids]'` was refused as the text "[medoids]": the shell ate no quotes, the
    # user wrote none; JSON still wins where it parses, and anything else stays text for the type check
    sets = parse_set(["evaluate.baselines=[medoids, herding]", "choose.cfg=[1.5,2]", "sample.mode_space=features",
                      "choose.mode_stop=[]", "evaluate.models=[\"convnet3\"]"])
    assert sets == {"evaluate": {"baselines": ["medoids", "herding"], "models": ["convnet3"]},
                    "choose": {"cfg": [1.5, 2], "mode_stop": []}, "sample": {"mode_space": "features"}}
    cfg = build_config(None, {"data": "digits", **sets})
    assert cfg.evaluate.baselines == ["medoids", "herding"] and cfg.choose.cfg == [1.5, 2.0]
    with pytest.raises(UserError, match="allowed: random, herding"):
        build_config(None, {"data": "digits", **parse_set(["evaluate.baselines=[medoid]"])})   # a typo still says so
    assert parse_set(["sample.ckpt=[a]b"]) == {"sample": {"ckpt": "[a]b"}}       # not a list: text as given
