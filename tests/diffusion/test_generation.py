"""`minimaxdd sample`: a checkpoint to a synthetic set, invariant to batching, under a time budget."""
import copy
import dataclasses
import json

import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import PixelCodec
from minimaxdd.diffusion.generation import SampleConfig, guides_on, real_modes, sample_checkpoint
from minimaxdd.diffusion.sampling import generate, image_seed
from minimaxdd.errors import UserError
from minimaxdd.settings import build
from minimaxdd.training.scratch import TrainConfig, train_from_scratch

TINY = dict(data="digits", model="dit-t/2", batch=16, checkpoint_every=2, log_every=1, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "r"
    train_from_scratch(TrainConfig(out=str(out), steps=2, **TINY))
    return out


def test_sample_writes_a_synthetic_set(trained, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", str(trained), "--ipc", "2", "--steps", "3", "--out", str(out),
                 "--device", "cpu", "--sampler", "dpm-solver", "--spacing", "logsnr", "--cfg", "2"]) == 0
    s = load_synthetic(out)
    assert s.images.shape == (20, 1, 8, 8) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["sampler"] == "dpm-solver" and man["config"]["spacing"] == "logsnr"
    assert man["checkpoint_step"] == 2
    with pytest.raises(UserError, match="spacing 'logsnr' does not apply to ddpm"):
        sample_checkpoint(SampleConfig(ckpt=str(trained), out="-", sampler="ddpm", spacing="logsnr"))
    assert main(["sample", str(trained), "--ipc", "2", "--out", str(out), "--device", "cpu"]) == 2  # exists
    assert main(["sample", str(trained), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2  # no --ipc


def _base(trained):
    return dict(ckpt=str(trained), out="-", ipc=2, steps=3, device="cpu")


def test_an_image_does_not_depend_on_batching_or_the_classes_sampled(trained):
    # image i of class c gets the same noise whatever the batch size or the classes sampled: its seed is
    # (seed, network class, index), so the noise streams are equal bit for bit ...
    model, meta = ckpt.load(trained, "ema")
    full_y = torch.tensor([c for c in range(10) for _ in range(2)])
    part_y = torch.tensor([4, 4, 7, 7])
    seeds = lambda y: [image_seed(0, int(c), i % 2) for i, c in enumerate(y)]   # noqa: E731  (as sample does)
    assert seeds(part_y) == [s for s, c in zip(seeds(full_y), full_y.tolist()) if c in (4, 7)]
    # ... and the sampled latents differ only by float rounding of a different batch shape
    kw = dict(sampler="ddpm", steps=3, clip=True, device="cpu")
    a = generate(model, full_y, seeds(full_y), batch_size=20, **kw)
    b = generate(model, part_y, seeds(part_y), batch_size=3, **kw)
    assert torch.allclose(a[8:10], b[:2], atol=1e-5, rtol=0) and torch.allclose(a[14:16], b[2:], atol=1e-5, rtol=0)
    # through `sample`, to uint8: a pixel may move by one grey level only where rounding of the 1e-5
    # difference crosses a level boundary (a few pixels at most)
    sa, _ = sample_checkpoint(SampleConfig(**_base(trained), batch_size=20))
    sb, _ = sample_checkpoint(SampleConfig(**_base(trained), batch_size=3, classes=[4, 7]))
    diff = (sa.images[torch.isin(sa.labels, torch.tensor([4, 7]))].int() - sb.images.int()).abs()
    assert diff.max() <= 1 and (diff > 0).sum() <= 2


def test_a_time_budget_keeps_whole_class_balanced_rounds(trained):
    # each round a per-class prefix of the unbudgeted set
    base = _base(trained)
    a, _ = sample_checkpoint(SampleConfig(**base, batch_size=20))
    c, info = sample_checkpoint(SampleConfig(**{**base, "ipc": 3}, batch_size=20, budget_minutes=10))
    assert info["budget"]["per_class"] == 3 and info["budget"]["stopped"] == "ipc cap" and info["budget"]["rounds"] == 2
    assert c.labels.tolist() == [k for k in range(10) for _ in range(3)]
    assert (c.images.view(10, 3, 1, 8, 8)[:, :2].int() - a.images.view(10, 2, 1, 8, 8).int()).abs().max() <= 1
    d, info = sample_checkpoint(SampleConfig(**{**base, "ipc": 10**6}, batch_size=10, budget_minutes=0.02))
    assert info["budget"]["stopped"] == "budget" and len(d.labels) == 10 * info["budget"]["per_class"] >= 10


def test_cli_sample_errors(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing"), "--ipc", "1", "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_edm_checkpoint_samples_with_edm_samplers_by_default(tmp_path, capsys):
    run = tmp_path / "edm"
    train_from_scratch(TrainConfig(out=str(run), steps=2, **{**TINY, "model": "unet-s", "formulation": "edm",
                                                              "flip": False}))
    s, info = sample_checkpoint(SampleConfig(ckpt=str(run), out="-", ipc=2, device="cpu"))
    assert info["sampler"] == "heun 18 steps (edm)" and s.images.shape == (20, 1, 8, 8)
    _, info = sample_checkpoint(SampleConfig(ckpt=str(run), out="-", ipc=1, sampler="dpm-solver", device="cpu"))
    assert info["sampler"] == "dpm-solver 20 steps (edm)"
    for bad, needle in (({"sampler": "ddim"}, "does not apply to models of the edm formulation"),
                        ({"spacing": "logsnr", "sampler": "dpm-solver"}, "places DDPM training steps"),
                        ({"cfg_channels": 3}, "applies to ddpm models only")):
        with pytest.raises(UserError, match=needle):
            sample_checkpoint(SampleConfig(ckpt=str(run), out="-", ipc=1, device="cpu", **bad))


def test_a_ddpm_checkpoint_keeps_the_papers_sampler_and_takes_edms_too(trained):
    _, info = sample_checkpoint(SampleConfig(ckpt=str(trained), out="-", ipc=1, steps=2, device="cpu"))
    assert info["sampler"] == "ddpm 2 steps"
    # one sampler family: EDM's Heun on the paper's DDPM model, on EDM's grid rounded to its training levels
    s, info = sample_checkpoint(SampleConfig(ckpt=str(trained), out="-", ipc=1, sampler="heun", steps=4,
                                             spacing="karras", device="cpu"))
    assert info["sampler"] == "heun 4 steps" and s.images.shape == (10, 1, 8, 8)
    with pytest.raises(UserError, match="spacing 'logsnr' does not apply to ddpm"):
        sample_checkpoint(SampleConfig(ckpt=str(trained), out="-", ipc=1, spacing="logsnr", device="cpu"))


def test_a_checkpoint_carries_its_sampling_defaults_and_sample_says_where_each_setting_came_from(
        trained, tmp_path, capsys):
    import numpy as np

    from minimaxdd.diffusion.networks import build_denoiser
    from minimaxdd.training.finetune import FinetuneConfig, finetune

    # fine-tuned from an official-format DiT file: the reference's guidance 4 on 3 channels, and idc (here on a
    # 4-channel pixel model at 8 px, standing in for the 4 latent channels)
    torch.manual_seed(0)
    official = tmp_path / "DiT-tiny.pt"
    torch.save({k: v for k, v in build_denoiser("dit-n/2", 8, 4, 10).state_dict().items() if "gamma" not in k},
               official)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 4, 8, 8), generator=g, dtype=torch.uint8)
    four = tmp_path / "four.npz"                                   # a 4-channel dataset
    np.savez(four, x_train=x.numpy(), y_train=np.arange(40) % 10, x_test=x[:10].numpy(), y_test=np.arange(10))
    ft = dict(data=f"npz:{four}", steps=1, batch=8, precision="fp32", device="cpu", codec="pixel")
    finetune(FinetuneConfig(ckpt=str(official), out=str(tmp_path / "ft"), **ft))
    meta = ckpt.read_meta(tmp_path / "ft")
    assert meta.defaults == {"sample": {"cfg": 4.0, "cfg_channels": 3}, "evaluate": {"protocol": "idc"}}
    capsys.readouterr()
    _, info = sample_checkpoint(SampleConfig(ckpt=str(tmp_path / "ft"), out="-", ipc=1, steps=2, device="cpu"))
    assert info["settings"]["cfg"] == {"value": 4.0, "from": "checkpoint"}
    assert info["settings"]["cfg_channels"] == {"value": 3, "from": "checkpoint"}
    assert info["settings"]["steps"] == {"value": 2, "from": "given"}
    assert info["settings"]["sampler"] == {"value": "ddpm", "from": "default"}
    err = capsys.readouterr().err
    assert "guidance 4.0 (checkpoint), guided channels 3 (checkpoint), sampler ddpm (default), steps 2 (given)" in err
    with pytest.raises(UserError, match="--cfg-channels 5: the model has 4 latent channels"):
        sample_checkpoint(SampleConfig(ckpt=str(tmp_path / "ft"), out="-", ipc=1, cfg_channels=5, device="cpu"))
    # on a model of fewer channels the official 3 means all of them: not recorded
    grey = tmp_path / "DiT-grey.pt"
    torch.save({k: v for k, v in build_denoiser("dit-n/2", 8, 1, 10).state_dict().items() if "gamma" not in k}, grey)
    finetune(FinetuneConfig(ckpt=str(grey), out=str(tmp_path / "ft1"), **{**ft, "data": "digits"}))
    assert ckpt.read_meta(tmp_path / "ft1").defaults == {"sample": {"cfg": 4.0}, "evaluate": {"protocol": "idc"}}
    # a flag wins over the checkpoint
    _, info = sample_checkpoint(SampleConfig(ckpt=str(tmp_path / "ft"), out="-", ipc=1, steps=2, cfg=1.5,
                                             device="cpu"))
    assert info["settings"]["cfg"] == {"value": 1.5, "from": "given"}
    # what a preset records at fine-tuning time is the next default; a model of our own without any: guidance 1
    finetune(FinetuneConfig(ckpt=str(trained), out=str(tmp_path / "ft2"), data="digits", steps=1, batch=8,
                            precision="fp32", device="cpu"), defaults={"sample": {"cfg": 2.0, "steps": 3}})
    _, info = sample_checkpoint(SampleConfig(ckpt=str(tmp_path / "ft2"), out="-", ipc=1, device="cpu"))
    assert info["settings"]["cfg"] == {"value": 2.0, "from": "checkpoint"} and info["sampler"] == "ddpm 3 steps"
    _, info = sample_checkpoint(SampleConfig(ckpt=str(trained), out="-", ipc=1, steps=2, device="cpu"))
    assert info["settings"]["cfg"] == {"value": 1.0, "from": "default"}
    assert info["settings"]["cfg_channels"] == {"value": None, "from": "default"}


@pytest.fixture(scope="module")
def labelled(trained, tmp_path_factory):
    """The trained checkpoint with random weights: two training steps leave the class labels without effect, and
    guidance needs them to matter."""
    model, meta = ckpt.load(trained, "ema")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("labelled") / "ckpt-000002.safetensors"
    ckpt.save(path, model, copy.deepcopy(model), meta)
    return path


def test_guides_off_by_default_and_neutral_guides_give_the_same_bytes(labelled):
    # the default config samples without guides; the guided path at neutral values (an interval holding every
    # level) gives the same bytes, so the default sets are what they were before the guides
    base = {**_base(labelled), "cfg": 3.0, "batch_size": 20}
    plain, info = sample_checkpoint(SampleConfig(**base))
    assert not any(guides_on(SampleConfig(**base)).values())
    neutral, _ = sample_checkpoint(SampleConfig(**base, cfg_sigma_lo=1e-9, cfg_sigma_hi=1e9))
    assert torch.equal(plain.images, neutral.images)
    unguided, _ = sample_checkpoint(SampleConfig(**{**base, "cfg": 1.0}))
    assert not torch.equal(plain.images, unguided.images)                       # guidance matters here ...
    outside, _ = sample_checkpoint(SampleConfig(**base, cfg_sigma_lo=500.0))
    assert torch.equal(outside.images, unguided.images)                         # ... and an interval off the grid


def test_mode_guidance_takes_k_means_modes_of_the_class_and_one_per_image(trained):
    # strength 1 with no stop: each image is its mode, the class's k-means centres of the real images (k = IPC)
    model, meta = ckpt.load(trained, "ema")
    cfg = SampleConfig(**_base(trained), mode_guidance=1.0, mode_stop=0.0, data="digits", classes=[3, 5])
    s, _ = sample_checkpoint(cfg)
    codec = PixelCodec(meta.channels, meta.image_size)
    modes = real_modes(cfg, meta, codec, [3, 5])
    assert torch.equal(s.images, codec.decode(torch.cat([modes[3], modes[5]])))
    assert (modes[3][0] - modes[3][1]).abs().max() > 0.1                        # two distinct modes per class
    ds = load_dataset("digits", size=meta.image_size)
    centre = codec.encode(ds.x_train[ds.y_train == 3]).mean(0)
    assert (modes[3] - centre).abs().mean() < (modes[5] - centre).abs().mean()  # class 3's modes, not 5's
    held = real_modes(dataclasses.replace(cfg, holdout=[0.5, 0]), meta, codec, [3])
    assert not torch.equal(held[3], modes[3])                                   # choose's modes leave out val images


def test_feature_space_modes_cluster_in_the_given_features_and_average_in_the_model_space(trained):
    # strength 1, no stop: each image is its mode, the mean (in pixels) of a cluster found in `embed`'s features
    model, meta = ckpt.load(trained, "ema")
    cfg = SampleConfig(**_base(trained), mode_guidance=1.0, mode_stop=0.0, data="digits", classes=[3, 5],
                       mode_space="features")
    with pytest.raises(UserError, match="mode_space features"):
        sample_checkpoint(cfg)                                                  # no feature space given

    def ink(ds, device):                                                        # a 1-D feature: the ink per image
        return ds.x_train.float().flatten(1).mean(1, keepdim=True)

    s, _ = sample_checkpoint(cfg, embed=ink)
    codec = PixelCodec(meta.channels, meta.image_size)
    modes = real_modes(cfg, meta, codec, [3, 5], embed=ink)
    assert torch.equal(s.images, codec.decode(torch.cat([modes[3], modes[5]])))
    ds = load_dataset("digits", size=meta.image_size)
    x3 = codec.encode(ds.x_train[ds.y_train == 3])
    f3 = ds.x_train[ds.y_train == 3].float().flatten(1).mean(1)
    x3 = x3[f3.argsort()]                                                       # rows by ink
    def near(mode, i):                                                          # mode: the mean of one side of cut i
        return min((mode - part).abs().max().item() for part in (x3[:i].mean(0), x3[i:].mean(0))) < 1e-5
    cuts = [i for i in range(1, len(x3)) if near(modes[3][0], i) and near(modes[3][1], i)]
    assert len(cuts) == 1                                                       # both modes: the two sides of one
    assert not torch.equal(modes[3][0], modes[3][1])                            # cut along the ink axis
    pixel = real_modes(dataclasses.replace(cfg, mode_space="model"), meta, codec, [3])
    assert not torch.equal(pixel[3], modes[3])                                  # not the pixel-space k-means


def test_the_deviation_term_samples_in_rounds_with_the_same_seeds(trained):
    base = {**_base(trained), "ipc": 3, "batch_size": 20, "sampler": "heun"}
    plain, _ = sample_checkpoint(SampleConfig(**base))
    weak, _ = sample_checkpoint(SampleConfig(**base, deviation=1e-12))
    assert (weak.images.int() - plain.images.int()).abs().max() <= 1           # rounds keep each image's noise
    strong, _ = sample_checkpoint(SampleConfig(**base, deviation=0.5, deviation_sigma_lo=0.0))
    first = torch.arange(0, 30, 3)                                              # each class's first image: no memory
    assert (strong.images[first].int() - plain.images[first].int()).abs().max() <= 1
    later = torch.tensor([i for i in range(30) if i % 3])
    assert (strong.images[later].int() - plain.images[later].int()).abs().float().mean() > 1


def test_bad_guide_settings_are_refused(trained):
    b = _base(trained)
    for bad, match in ((dict(cfg_sigma_lo=2.0, cfg_sigma_hi=1.0), "needs 0 <= lo < hi"),
                       (dict(deviation_sigma_lo=5.0, deviation_sigma_hi=5.0), "needs 0 <= lo < hi"),
                       (dict(mode_guidance=0.2), "give the dataset"),
                       (dict(mode_guidance=1.5, data="digits"), r"in \[0, 1\]"),
                       (dict(deviation=0.1, budget_minutes=1.0), "drop --budget-minutes")):
        with pytest.raises(UserError, match=match):
            sample_checkpoint(SampleConfig(**b, **bad))
    with pytest.raises(UserError, match="lower --ipc"):
        sample_checkpoint(SampleConfig(**{**b, "ipc": 10**4}, mode_guidance=0.2, data="digits"))
    with pytest.raises(UserError, match=r"mode_guidance .*must be in \[0, 1\]"):
        build(SampleConfig, {**b, "mode_guidance": 2.0}, allow_run=True)
