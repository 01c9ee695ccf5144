"""Checkpoints: Difffit fine-tunes store only their trained tensors on top of a named, checked base; full
checkpoints stay whole; older files still read; the sha256 of a base is hashed once per file version."""
import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.networks import build_denoiser, difffit_parameters
from minimaxdd.errors import UserError
from minimaxdd.training.finetune import FinetuneConfig, finetune
from minimaxdd.training.scratch import TrainConfig, train_from_scratch

FT = dict(data="digits", steps=2, batch=8, precision="fp32", device="cpu", log_every=1)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train_from_scratch(TrainConfig(data="digits", out=str(out), model="dit-n/2", steps=2, batch=16,
                                   precision="fp32", device="cpu", log_every=1))
    return out


def test_a_difffit_checkpoint_holds_the_trained_tensors_and_names_its_base(base_run, tmp_path):
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "ft"), **FT))
    path = ckpt.resolve(tmp_path / "ft")
    meta = ckpt.read_meta(path)
    base_file = ckpt.resolve(base_run)
    assert meta.base["path"] == str(base_file.resolve()) and meta.base["kind"] == "minimaxdd"
    assert meta.base["sha256"] == ckpt._hash_file(base_file) and meta.base["size"] == base_file.stat().st_size
    stored = load_file(str(path))
    trained = meta.base["trained"]
    assert set(stored) == {f"{p}.{n}" for p in ("model", "ema") for n in trained}
    assert all(any(s in n for s in ("bias", "gamma", "y_embed")) for n in trained)
    # what loads is the base with the trained tensors on top
    base, _ = ckpt.load(base_run, "ema")
    model, _ = ckpt.load(path, "ema")
    for n, v in model.state_dict().items():
        want = stored[f"ema.{n}"] if n in trained else base.state_dict()[n]
        assert torch.equal(v, want), n
    raw, _ = ckpt.load(path, "model")
    assert torch.equal(raw.state_dict()[trained[0]], stored[f"model.{trained[0]}"])
    assert path.stat().st_size < base_file.stat().st_size / 5
    # full fine-tuning trains everything: its checkpoints stay whole
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "full"), trainable="full", **FT))
    full = ckpt.resolve(tmp_path / "full")
    assert ckpt.read_meta(full).base is None
    assert set(load_file(str(full))) == {f"{p}.{n}" for p in ("model", "ema") for n in base.state_dict()}


def test_a_missing_or_changed_base_is_refused_with_what_to_do(base_run, tmp_path):
    import shutil
    src = tmp_path / "base"
    shutil.copytree(base_run, src)
    finetune(FinetuneConfig(ckpt=str(src), out=str(tmp_path / "ft"), **FT))
    base_file = ckpt.resolve(src)
    ckpt.load(tmp_path / "ft")                                      # fine as it is
    moved = base_file.with_name("elsewhere.safetensors")
    base_file.rename(moved)
    with pytest.raises(UserError, match=r"loads on top of its base .*which is missing; put that file back"):
        ckpt.load(tmp_path / "ft")
    moved.rename(base_file)
    ckpt.load(tmp_path / "ft")                                      # back in place: loads again
    shutil.copyfile(ckpt.resolve(base_run), base_file)               # rewritten with the same bytes: rehashed, equal
    ckpt.load(tmp_path / "ft")
    # our base rewritten with other notes but the same tensors (a resumed run's config): still the same base
    meta0 = ckpt.read_meta(base_file)
    meta0.extra = {**meta0.extra, "note": "rewritten"}
    save_file(load_file(str(base_file)), str(base_file), metadata={"minimaxdd": meta0.to_json()})
    ckpt.load(tmp_path / "ft")
    model, meta = ckpt.load(src, "ema")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    ckpt.save(base_file, model, copy.deepcopy(model), meta)          # another base under the same name
    with pytest.raises(UserError, match=r"was fine-tuned from .*sha256.*the file there now has sha256 .*restore"):
        ckpt.load(tmp_path / "ft")
    # resuming a Difffit run on another base is refused too (its tensors mean nothing there) ...
    with pytest.raises(UserError, match="--resume: .* was fine-tuned from"):
        finetune(FinetuneConfig(ckpt=str(src), out=str(tmp_path / "ft"), resume=True, **{**FT, "steps": 3}))
    # ... while the same bytes under another path are the same base
    finetune(FinetuneConfig(ckpt=str(base_run), out=str(tmp_path / "ft"), resume=True, **{**FT, "steps": 3}))
    assert ckpt.read_meta(tmp_path / "ft").step == 3


def test_the_base_hash_is_computed_once_per_version_of_the_file(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    first = ckpt.file_sha256(f)
    calls = []
    real = ckpt._hash_file
    monkeypatch.setattr(ckpt, "_hash_file", lambda p: calls.append(p) or real(p))
    assert ckpt.file_sha256(f) == first and calls == []             # cached: a stat, no read
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(1, 2))                                            # a new version (mtime)
    assert ckpt.file_sha256(f) != first and len(calls) == 1


def test_format_1_checkpoints_still_read(tmp_path):
    m = build_denoiser("dit-n/2", 8, 1, 10)
    meta = ckpt.CheckpointMeta(model=m.config.to_dict(), codec="pixel", class_names=[str(i) for i in range(10)],
                               class_map=list(range(10)), image_size=8, channels=1)
    old = {k: v for k, v in meta.__dict__.items() if k not in ("base", "defaults")}
    tensors = {f"{p}.{k}": v.clone() for p in ("model", "ema") for k, v in m.state_dict().items()}
    save_file(tensors, str(tmp_path / "ckpt-00000001.safetensors"), metadata={"minimaxdd": json.dumps({"format": 1, **old})})
    loaded, meta1 = ckpt.load(tmp_path)
    assert meta1.base is None and meta1.defaults == {}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))
    save_file(tensors, str(tmp_path / "ckpt-00000002.safetensors"), metadata={"minimaxdd": json.dumps({"format": 9, **old})})
    with pytest.raises(UserError, match="unknown checkpoint format"):
        ckpt.read_meta(tmp_path)


def test_a_difffit_dit_xl2_checkpoint_is_a_few_mb(tmp_path):
    # the official DiT-XL/2 at 256 px (built on the meta device: no memory), Difffit as the reference trains it
    with torch.device("meta"):
        m = build_denoiser("dit-xl/2", 32, 4, 1000, learn_sigma=True)
    trained = difffit_parameters(m)
    n = sum(p.numel() for p in trained)
    total = sum(p.numel() for p in m.parameters())
    assert 1.5e6 < n < 2.0e6 and total > 6.7e8
    # what `save` writes: the trained tensors twice (raw and EMA), fp32; write them for real to measure the file
    names = [k for k, p in m.named_parameters() if any(p is q for q in trained)]
    shapes = dict(m.named_parameters())
    tensors = {f"{p}.{k}": torch.zeros(shapes[k].shape) for p in ("model", "ema") for k in names}
    save_file(tensors, str(tmp_path / "d.safetensors"))
    size = (tmp_path / "d.safetensors").stat().st_size
    assert size == pytest.approx(2 * 4 * n, rel=0.01) and size < 50e6          # ~14 MB, not 5.4 GB
