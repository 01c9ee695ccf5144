import json

import pytest
import torch

from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.cli import main
from minimaxdd.errors import UserError
from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint
from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.training.loop import TrainConfig
from minimaxdd.training.scratch import run

TINY = dict(data="digits", model="uvit-t", batch=16, checkpoint_every=2, log_every=1, precision="fp32", device="cpu")


def weights(path):
    from safetensors.torch import load_file
    return load_file(str(ckpt.resolve(path)))


def test_train_checkpoints_and_resume_is_exact(tmp_path):
    info = run(TrainConfig(out=str(tmp_path / "a"), steps=4, **TINY))
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
    run(TrainConfig(out=str(tmp_path / "b"), steps=2, **TINY))
    run(TrainConfig(out=str(tmp_path / "b"), steps=4, resume=True, **TINY))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the EMA differs from the raw weights and moved away from the initialisation
    assert any(not torch.equal(a[k], a["ema." + k[6:]]) for k in a if k.startswith("model."))


def test_run_dir_protection(tmp_path):
    run(TrainConfig(out=str(tmp_path / "a"), steps=1, **TINY))
    with pytest.raises(UserError, match="--resume"):
        run(TrainConfig(out=str(tmp_path / "a"), steps=1, **TINY))
    with pytest.raises(UserError, match="no checkpoint"):
        run(TrainConfig(out=str(tmp_path / "new"), steps=1, resume=True, **TINY))
    with pytest.raises(UserError, match="another model"):
        run(TrainConfig(out=str(tmp_path / "a"), steps=2, resume=True, **{**TINY, "model": "dit-t/2"}))
    with pytest.raises(UserError, match="--epochs"):
        run(TrainConfig(out=str(tmp_path / "c"), **TINY))
    run(TrainConfig(out=str(tmp_path / "a"), steps=1, overwrite=True, **{**TINY, "model": "dit-t/2"}))
    assert ckpt.read_meta(tmp_path / "a").model["arch"] == "dit"


def test_sample_writes_a_synthetic_set(tmp_path):
    run(TrainConfig(out=str(tmp_path / "r"), steps=2, **{**TINY, "model": "dit-t/2"}))
    out = tmp_path / "s"
    assert main(["sample", str(tmp_path / "r"), "--ipc", "2", "--steps", "3", "--out", str(out),
                 "--device", "cpu", "--sampler", "dpm-solver", "--spacing", "logsnr", "--cfg", "2"]) == 0
    s = load_synthetic(out)
    assert s.images.shape == (20, 1, 8, 8) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["sampler"] == "dpm-solver" and man["config"]["spacing"] == "logsnr"
    assert man["checkpoint_step"] == 2
    with pytest.raises(UserError, match="--spacing logsnr applies to dpm-solver and sde-dpm-solver"):
        sample_checkpoint(SampleConfig(ckpt=str(tmp_path / "r"), out="-", sampler="ddpm", spacing="logsnr"))
    # image i of class c does not depend on the batch size or on which classes are sampled
    base = dict(ckpt=str(tmp_path / "r"), out="-", ipc=2, steps=3, device="cpu")
    a, _ = sample_checkpoint(SampleConfig(**base, batch_size=20))
    b, _ = sample_checkpoint(SampleConfig(**base, batch_size=3, classes=[4, 7]))
    diff = (a.images[8:10].int() - b.images[:2].int()).abs()
    assert diff.max() <= 1   # float rounding of a different batch may move a pixel by one level
    assert torch.equal(a.images[14:16], b.images[2:4]) or (a.images[14:16].int() - b.images[2:4].int()).abs().max() <= 1
    assert main(["sample", str(tmp_path / "r"), "--ipc", "2", "--out", str(out), "--device", "cpu"]) == 2  # exists
    # a time budget keeps whole class-balanced rounds, each a per-class prefix of the unbudgeted set
    c, info = sample_checkpoint(SampleConfig(**{**base, "ipc": 3}, batch_size=20, budget_minutes=10))
    assert info["budget"]["per_class"] == 3 and info["budget"]["stopped"] == "ipc cap" and info["budget"]["rounds"] == 2
    assert c.labels.tolist() == [k for k in range(10) for _ in range(3)]
    assert (c.images.view(10, 3, 1, 8, 8)[:, :2].int() - a.images.view(10, 2, 1, 8, 8).int()).abs().max() <= 1
    d, info = sample_checkpoint(SampleConfig(**{**base, "ipc": 10**6}, batch_size=10, budget_minutes=0.02))
    assert info["budget"]["stopped"] == "budget" and len(d.labels) == 10 * info["budget"]["per_class"] >= 10
    assert main(["sample", str(tmp_path / "r"), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2  # no --ipc


def test_cli_train_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "x"), "--model", "dit-t/8", "--steps", "1", "--size", "12"]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing"), "--ipc", "1", "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_vae_codec_reads_scaling_and_caches_both_flips(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from minimaxdd.diffusion.codecs import build_codec, encode_dataset

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    codec = build_codec(f"vae:{tmp_path / 'vae'}", 3, 16)
    assert codec.scaling == 0.5 and codec.latent_size == 8 and codec.latent_channels == 4
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    enc = encode_dataset(codec, x, "k")
    assert enc["mean"].shape == (5, 2, 4, 8, 8)
    m, _ = codec.moments(x.flip(-1))
    assert torch.allclose(enc["mean"][:, 1].float(), m, atol=1e-2)
    with torch.no_grad():
        raw = vae.encode(x.float() / 127.5 - 1).latent_dist.mean
    assert torch.allclose(enc["mean"][:, 0].float(), raw * 0.5, atol=1e-2)
    again = encode_dataset(codec, x, "k")   # from the cache
    assert torch.equal(again["mean"], enc["mean"])
    assert codec.decode(enc["mean"][:, 0].float()).shape == (5, 3, 16, 16)
    with pytest.raises(UserError, match="RGB"):
        build_codec(f"vae:{tmp_path / 'vae'}", 1, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        build_codec(f"vae:{tmp_path / 'empty'}", 3, 16)


def test_generation_accuracy_scores_real_images_high_and_wrong_labels_low(digits):
    from minimaxdd.evaluation.reference_classifier import ReferenceConfig, generation_accuracy

    cfg = ReferenceConfig(epochs=30)
    x, y = digits.x_test[:200], digits.y_test[:200]
    right = generation_accuracy(digits, x, y, cfg)
    wrong = generation_accuracy(digits, x, (y + 1) % 10, cfg)
    assert right["generation_accuracy"] > 0.8 and wrong["generation_accuracy"] < 0.2
    assert abs(right["reference_test_accuracy"] - right["generation_accuracy"]) < 0.1


def test_fused_adamw_steps_like_the_plain_one():
    from minimaxdd.training.loop import adamw

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    fused, plain = adamw(a, lr=1e-2, weight_decay=0.1), torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):
        for ps, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            sum((p ** 2).sum() for p in ps).backward()
            opt.step()
    for p, q, p0 in zip(a, b, start):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert (p - p0).abs().min() > 1e-3          # every entry moved
