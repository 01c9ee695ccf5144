"""The shared training loop: its configs, the step-loss interface, EMA, AdamW and resume refusals."""
import dataclasses
import json
import math
import re

import pytest
import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import build_codec
from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.errors import UserError
from minimaxdd.runtime import PRECISIONS
from minimaxdd.settings import default_of, is_run_field
from minimaxdd.training.config import LoopConfig
from minimaxdd.training.draws import make_targets
from minimaxdd.training.finetune import FinetuneConfig
from minimaxdd.training.loop import Batch, fit
from minimaxdd.training.minimax import OBJECTIVES, REDUCTIONS
from minimaxdd.training.scratch import TrainConfig
from minimaxdd.training.scratch import train_from_scratch as train

REQUIRED = object()
# Every field and default the configs had before LoopConfig: presets and `--set` keys name them.
TRAIN_DEFAULTS = dict(data=REQUIRED, out=REQUIRED, model="dit-t/2", codec="pixel", size=None, epochs=None, steps=None,
                      time_limit=None, batch=64, lr=1e-4, weight_decay=0.0, beta1=0.9, beta2=0.999, ema=0.9999,
                      ema_warmup=True, class_dropout=0.1, learn_sigma=None, flip=True, grad_clip=None,
                      checkpoint_every=1000, keep=2, log_every=50, seed=0, precision="auto", compile=False,
                      device="auto", resume=False, overwrite=False, preset=None, extra={})
FINETUNE_DEFAULTS = dict(ckpt=REQUIRED, data=REQUIRED, out=REQUIRED, objective="minimax", lambda_r=0.002,
                         lambda_d=0.008, memory=64, reduction="matrix", trainable="difffit", batch=8, epochs=8,
                         steps=None, lr=1e-3, ema=0.9999, ema_warmup=False, class_dropout=0.1, codec=None,
                         class_map=None, synsets=None, size=None, classes=None, sync_memory=False,
                         checkpoint_every=1000, log_every=50, seed=0, precision="auto", compile=False,
                         device="auto", resume=False, overwrite=False)


@pytest.mark.parametrize("cls, old", [(TrainConfig, TRAIN_DEFAULTS), (FinetuneConfig, FINETUNE_DEFAULTS)])
def test_configs_keep_every_field_and_default(cls, old):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in old.items():
        if value is REQUIRED:
            assert fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
        else:
            assert default_of(cls, name) == value, name
    # the loop's fields are declared once, in LoopConfig, and inherited
    assert issubclass(cls, LoopConfig) and {f.name for f in dataclasses.fields(LoopConfig)} <= set(fields)
    assert [n for n, f in fields.items() if not f.metadata.get("help")] == []


def test_run_fields_and_choices():
    run = {f.name for f in dataclasses.fields(TrainConfig) if is_run_field(f)}
    assert run == {"data", "out", "size", "seed", "device", "resume", "overwrite", "fresh_state", "preset", "extra"}
    run = {f.name for f in dataclasses.fields(FinetuneConfig) if is_run_field(f)}
    assert run == {"ckpt", "data", "out", "size", "classes", "seed", "device", "resume", "overwrite", "fresh_state"}
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(FinetuneConfig)}
    assert choices["objective"] == tuple(OBJECTIVES) and choices["reduction"] == REDUCTIONS
    assert choices["trainable"] == ("difffit", "full") and choices["precision"] == PRECISIONS
    # a subclass's own default keeps the loop's help
    lr = (FinetuneConfig.__dataclass_fields__["lr"], LoopConfig.__dataclass_fields__["lr"])
    assert dict(lr[0].metadata) == dict(lr[1].metadata) and (lr[0].default, lr[1].default) == (1e-3, 1e-4)


def _setup(digits):
    codec = build_codec("pixel", digits.channels, digits.size)
    torch.manual_seed(0)
    model = build_denoiser("dit-n/2", codec.latent_size, codec.latent_channels, digits.num_classes)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=codec.spec, class_names=list(digits.class_names),
                               class_map=list(range(10)), image_size=digits.size, channels=digits.channels)
    return model, make_targets(codec, digits, list(range(10))), meta


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(ckpt.resolve(run)))


def test_fit_hands_the_step_loss_each_batch(digits, tmp_path):
    seen = []

    def record(terms, batch: Batch):
        seen.append(batch)
        assert terms["x0_hat"].shape == batch.x0.shape and terms["x0_hat"].requires_grad
        return terms["loss"].new_zeros(()), {"rows": float(len(batch.labels))}

    cfg = dict(data="digits", steps=3, batch=8, precision="fp32", device="cpu", log_every=1, class_dropout=0.5)
    model, targets, meta = _setup(digits)
    info = fit(model, targets, meta, TrainConfig(out=str(tmp_path / "a"), **cfg), step_loss=record)
    assert [b.step for b in seen] == [0, 1, 2]
    assert all(b.x0.shape == (8, 1, 8, 8) and b.labels.shape == (8,) and b.dropped.dtype == torch.bool for b in seen)
    # the labels are the classes before dropout (never the null class 10), and dropout happened
    assert all(0 <= int(b.labels.min()) and int(b.labels.max()) < 10 for b in seen)
    assert 0 < sum(int(b.dropped.sum()) for b in seen) < 24
    assert info["epoch_means"][0]["rows"] == 8.0
    assert json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])["rows"] == 8
    # adding zero changes nothing: the same bytes as the loop without a step loss
    model, targets, meta = _setup(digits)
    fit(model, targets, meta, TrainConfig(out=str(tmp_path / "b"), **cfg))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_missing_optimizer_state_unless_told(tmp_path):
    kw = dict(data="digits", model="dit-n/2", batch=8, precision="fp32", device="cpu", checkpoint_every=2)
    train(TrainConfig(out=str(tmp_path / "a"), steps=4, **kw))
    train(TrainConfig(out=str(tmp_path / "b"), steps=2, **kw))
    (tmp_path / "b" / "ckpt-00000002.optim.pt").unlink()
    with pytest.raises(UserError, match=r"ckpt-00000002\.optim\.pt \(the optimiser state\) is missing.*--fresh-state"):
        train(TrainConfig(out=str(tmp_path / "b"), steps=4, resume=True, **kw))
    assert not (tmp_path / "b" / "ckpt-00000004.safetensors").exists()
    train(TrainConfig(out=str(tmp_path / "b"), steps=4, resume=True, fresh_state=True, **kw))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    # AdamW restarted from zero moments: the run went elsewhere
    assert ckpt.read_meta(tmp_path / "b").step == 4 and any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# the short-run recipe and the EDM formulation (issue 18)


def test_lr_warmup_ramps_linearly_over_its_fraction(tmp_path):
    kw = dict(data="digits", model="dit-n/2", batch=8, precision="fp32", device="cpu", log_every=1)
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)
    torch.optim.AdamW.step = spy
    try:
        train(TrainConfig(out=str(tmp_path / "w"), steps=8, lr=1e-3, lr_warmup=0.5, **kw))
    finally:
        torch.optim.AdamW.step = real_step
    assert seen == pytest.approx([1e-3 * min(1, (s + 1) / 4) for s in range(8)])


def test_edm_training_records_its_formulation_and_resumes_exactly(tmp_path):
    kw = dict(data="digits", model="dit-n/2", formulation="edm", batch=16, precision="fp32", device="cpu",
              checkpoint_every=3, flip=False, ema_length=0.1)
    info = train(TrainConfig(out=str(tmp_path / "a"), steps=6, **kw))
    meta = ckpt.read_meta(tmp_path / "a")
    assert meta.formulation == "edm" and meta.model["learn_sigma"] is False     # EDM: no learned variance
    assert info["final_loss"] is not None and math.isfinite(info["final_loss"])
    train(TrainConfig(out=str(tmp_path / "b"), steps=3, **kw))
    train(TrainConfig(out=str(tmp_path / "b"), steps=6, resume=True, **kw))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# divergence (issue 20): stop at the first non-finite loss, never save a non-finite checkpoint

NAN_RUN = ["train", "--data", "digits", "--model", "dit-n/2", "--batch", "16", "--steps", "6", "--checkpoint-every",
           "1", "--keep", "0", "--log-every", "1", "--precision", "fp32", "--device", "cpu"]


def _strict_json(line):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def test_a_diverged_run_stops_at_the_step_and_keeps_its_last_finite_checkpoint(tmp_path, capsys):
    from minimaxdd.cli import main

    out = tmp_path / "nan"
    assert main([*NAN_RUN, "--lr", "1e9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    bad = int(re.search(r"the loss became non-finite at step (\d+) \(loss=(nan|inf)", err).group(1))
    assert bad >= 2 and "a lower --lr (it was 1e+09)" in err and "--resume" in err and "Traceback" not in err
    last = out / f"ckpt-{bad - 1:08d}.safetensors"
    assert f"the last finite checkpoint, {last}, is kept" in err
    # the kept checkpoint loads and is finite; nothing non-finite was written, nothing rotated it away
    assert ckpt.list_checkpoints(out) == [last]
    model, meta = ckpt.load(out)
    assert meta.step == bad - 1 and all(torch.isfinite(p).all() for p in model.parameters())
    log = [_strict_json(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, bad + 1)) and log[0]["loss"] > 0
    assert log[-1] == {"step": bad, "loss": None, "mse": None, "vb": None, "stopped": "non-finite loss"}
    # here the finite weights are already huge (lr 1e9), so the fix is to start over with a sane lr
    assert main([*NAN_RUN, "--lr", "1e-3", "--overwrite", "--out", str(out)]) == 0
    assert ckpt.read_meta(out).step == 6


def test_a_diverged_run_without_a_checkpoint_leaves_nothing(tmp_path, capsys):
    from minimaxdd.cli import main

    out = tmp_path / "nan"
    assert main([*NAN_RUN, "--lr", "1e9", "--checkpoint-every", "100", "--out", str(out)]) == 2
    assert "no checkpoint had been written, so nothing of the run was kept" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []            # a rerun needs no --overwrite


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    from minimaxdd.errors import DivergedError
    from minimaxdd.training import loop

    real_step = loop._step

    def poisoned(tr, diffusion, draws, step, step_loss):
        logs = real_step(tr, diffusion, draws, step, step_loss)
        if step == 2:                    # finite loss, weights overflowed by the update
            with torch.no_grad():
                tr.params[0].fill_(float("inf"))
        return logs

    monkeypatch.setattr(loop, "_step", poisoned)
    kw = dict(data="digits", model="dit-n/2", batch=8, precision="fp32", device="cpu", checkpoint_every=1, keep=0)
    with pytest.raises(DivergedError, match=r"the weights became non-finite by step 3 .*ckpt-00000002\.safetensors, "
                                            r"is kept"):
        train(TrainConfig(out=str(tmp_path / "a"), steps=5, **kw))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "a")] == ["ckpt-00000002.safetensors"]
    log = [_strict_json(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {"step": 3, "stopped": "non-finite weights"}


def test_a_full_disk_at_the_first_checkpoint_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)           # the optimiser state, written first
    kw = dict(data="digits", model="dit-n/2", batch=8, precision="fp32", device="cpu", checkpoint_every=1)
    with pytest.raises(UserError, match=r"cannot write .*ckpt-00000001\.optim\.pt: the disk is full"):
        train(TrainConfig(out=str(tmp_path / "a"), steps=2, **kw))
    assert list(tmp_path.iterdir()) == []            # no config.json, no log: a rerun needs no --overwrite
    monkeypatch.undo()
    train(TrainConfig(out=str(tmp_path / "a"), steps=2, **kw))


def test_a_truncated_checkpoint_on_resume_is_named(tmp_path):
    kw = dict(data="digits", model="dit-n/2", batch=8, precision="fp32", device="cpu", checkpoint_every=2)
    train(TrainConfig(out=str(tmp_path / "a"), steps=2, **kw))
    f = tmp_path / "a" / "ckpt-00000002.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"ckpt-00000002\.safetensors is truncated or corrupt .*delete "
                                        r"ckpt-00000002\.safetensors and the files beside it"):
        train(TrainConfig(out=str(tmp_path / "a"), steps=4, resume=True, **kw))


def test_precision_is_resolved_recorded_and_a_change_on_resume_is_said(tmp_path, capsys):
    """auto resolves before training (config.json and manifest.json hold what ran); a run resumed in another
    precision than its first part (another machine's auto) says so."""
    import json

    from minimaxdd.precision import resolve_precision
    kw = dict(data="digits", model="dit-n/2", batch=8, device="cpu", checkpoint_every=2)
    train(TrainConfig(out=str(tmp_path / "r"), steps=2, **kw))              # precision: auto (the default)
    used = resolve_precision("auto", "cpu")
    conf, man = (json.loads((tmp_path / "r" / f).read_text()) for f in ("config.json", "manifest.json"))
    assert conf["train"]["precision"] == used and man["precision"] == used and man["precision_requested"] == "auto"
    assert f"precision {used} (auto" in capsys.readouterr().out
    other = {"fp32": "bf16", "bf16": "fp32"}[used]
    conf["train"]["precision"] = other                                     # as if trained elsewhere so far
    (tmp_path / "r" / "config.json").write_text(json.dumps(conf))
    train(TrainConfig(out=str(tmp_path / "r"), steps=3, resume=True, **kw))
    assert f"resuming a run trained so far in {other}; it continues in {used}" in capsys.readouterr().out
