"""The VAE codec: its scaling factor, both flips of each image cached, and its errors."""
import copy

import pytest
import torch

from minimaxdd.errors import UserError


def _tiny_vae(folder, sample_size: int):   # noqa: ANN001
    """A two-level SD-style KL autoencoder (scaling 0.5, seeded) saved to `folder` as diffusers does."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, sample_size=sample_size, scaling_factor=0.5)
    vae.save_pretrained(folder)
    return vae


def test_vae_codec_reads_scaling_and_caches_both_flips(tmp_path):
    from minimaxdd.diffusion.codecs import build_codec, encode_dataset

    vae = _tiny_vae(tmp_path / "vae", 16)
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


def test_starting_from_real_images_through_a_vae_is_seeded_not_global(tmp_path):
    """from_real_images encodes with the VAE's posterior mean: the global RNG does not change its output."""
    from minimaxdd.diffusion import checkpoints as ckpt
    from minimaxdd.diffusion.generation import SampleConfig, from_real_images
    from minimaxdd.diffusion.networks import build_denoiser

    _tiny_vae(tmp_path / "vae", 8)
    model = build_denoiser("dit-n/2", 4, 4, 3, learn_sigma=False)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), codec=f"vae:{tmp_path / 'vae'}", class_names=list("abc"),
                               class_map=[0, 1, 2], image_size=8, channels=3, formulation="edm")
    ckpt.save(tmp_path / "ckpt-00000001.safetensors", model, copy.deepcopy(model), meta)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 1, 2])
    cfg = SampleConfig(ckpt=str(tmp_path), out="-", seed=3, steps=2, device="cpu", precision="fp32")
    torch.manual_seed(1)
    a = from_real_images(cfg, images, labels, 1.0)
    torch.manual_seed(2)
    b = from_real_images(cfg, images, labels, 1.0)
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)


def test_codec_registry_and_pixel_round_trip():
    from minimaxdd.diffusion.codecs import CODECS, PixelCodec, build_codec
    from minimaxdd.errors import UserError

    assert set(CODECS) == {"pixel", "vae"}
    codec = build_codec("pixel", 3, 8)
    assert isinstance(codec, PixelCodec) and codec.spec == "pixel" and codec.latent_size == 8
    x = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8).expand(4, 3, 8, 8).contiguous()
    z = codec.encode(x)
    assert z.min() == -1 and z.max() == 1 and torch.equal(codec.decode(z), x)   # every grey level survives
    assert torch.equal(codec.decode(torch.full((1, 3, 8, 8), 5.0)), torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    with pytest.raises(UserError, match="unknown codec 'jpeg'"):
        build_codec("jpeg", 3, 8)
    with pytest.raises(UserError, match="takes no argument"):
        build_codec("pixel:x", 3, 8)
    with pytest.raises(UserError, match="vae:DIR"):
        build_codec("vae", 3, 8)
