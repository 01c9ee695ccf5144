"""Codecs between uint8 images and the space the diffusion runs in, by name in `CODECS`.

A codec spec is `NAME` or `NAME:ARG` (the `--codec` option):
- `pixel`: images scaled to [-1, 1] (the challenge winner works in pixel space at 32 and 64 px).
- `vae:DIR`: a diffusers AutoencoderKL from a local folder (e.g. stabilityai/sd-vae-ft-ema); its
  latent scaling factor is read from the folder's config. Encoding a dataset dominates fine-tuning
  cost at 256 px, so `encode_dataset` caches each image's latent distribution (mean and std, for
  the image and its mirror) once per (dataset, VAE) and training draws from it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Union

import torch

from minimaxdd.errors import UserError
from minimaxdd.files import cache_dir, read_cache, save_atomic, write_json, writing_cache
from minimaxdd.runtime import progress

# Ours, sized for memory rather than taken from a paper: images per VAE forward, and images per
# progress step (and per pair of `moments` calls) when a whole dataset is encoded.
VAE_BATCH = 32
ENCODE_CHUNK = 256


class PixelCodec:
    """Pixels scaled to [-1, 1]: the latent is the image."""

    spec = "pixel"
    stochastic = False

    def __init__(self, channels: int, size: int) -> None:
        self.channels, self.size = channels, size
        self.latent_channels, self.latent_size = channels, size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float (N, C, H, W) in [-1, 1]."""
        return x.float() / 127.5 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) -> uint8 (N, C, H, W), clamped."""
        return ((z.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class VAECodec:
    """Stable Diffusion's KL autoencoder (8x down-sampling, 4 latent channels) from a local folder."""

    stochastic = True

    def __init__(self, folder: str | Path, channels: int, size: int, device: str | torch.device = "cpu",
                 batch_size: int = VAE_BATCH) -> None:
        folder = Path(folder)
        if not (folder / "config.json").exists():
            if (folder / "vae" / "config.json").exists():
                folder = folder / "vae"
            else:
                raise UserError(f"vae:{folder}: no config.json there; point at a diffusers AutoencoderKL folder "
                                "(e.g. a local copy of stabilityai/sd-vae-ft-ema)")
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise UserError("the vae codec needs diffusers: pip install 'minimaxdd[vae]'") from e
        if channels != 3:
            raise UserError(f"the VAE codes RGB images; this dataset has {channels} channel(s); use --codec pixel")
        self.folder = folder
        self.vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.scaling = float(cfg.scaling_factor)   # 0.18215 for the SD VAEs, read, never assumed
        down = 2 ** (len(cfg.block_out_channels) - 1)
        if size % down:
            raise UserError(f"image size {size} is not a multiple of the VAE's down-sampling {down}; resize the data")
        self.spec = f"vae:{folder}"
        self.channels, self.size = channels, size
        self.latent_channels, self.latent_size = cfg.latent_channels, size // down
        self.device, self.batch_size = torch.device(device), batch_size

    def fingerprint(self) -> str:
        """Short hash of the VAE's config and weight files (name, size, mtime): a cache key."""
        h = hashlib.sha256((self.folder / "config.json").read_bytes())
        for f in sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, H, W) -> scaled latent mean and std, (N, 4, H/8, W/8) each."""
        means, stds = [], []
        for s in range(0, len(x), self.batch_size):
            xb = x[s:s + self.batch_size].to(self.device).float() / 127.5 - 1   # (B, 3, H, W) in [-1, 1]
            dist = self.vae.encode(xb).latent_dist                               # (B, 4, H/8, W/8) moments
            means.append((dist.mean * self.scaling).cpu())
            stds.append((dist.std * self.scaling).cpu())
        return torch.cat(means), torch.cat(stds)

    def encode(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> one latent sample (N, 4, H/8, W/8), drawn from `g`."""
        mean, std = self.moments(x)
        return mean + std * torch.randn(mean.shape, generator=g)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, 4, h, w) -> uint8 images (N, 3, 8h, 8w), clamped."""
        out = []
        for s in range(0, len(z), self.batch_size):
            zb = z[s:s + self.batch_size].to(self.device).float() / self.scaling   # (B, 4, h, w) unscaled
            img = self.vae.decode(zb).sample                                         # (B, 3, 8h, 8w) in ~[-1, 1]
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return torch.cat(out)


Codec = Union[PixelCodec, VAECodec]


def _pixel(arg: str | None, channels: int, size: int, device: str | torch.device) -> PixelCodec:
    if arg is not None:
        raise UserError(f"the pixel codec takes no argument, got 'pixel:{arg}'; use pixel")
    return PixelCodec(channels, size)


def _vae(arg: str | None, channels: int, size: int, device: str | torch.device) -> VAECodec:
    if not arg:
        raise UserError("the vae codec needs a folder: use vae:DIR (a diffusers AutoencoderKL folder)")
    return VAECodec(arg, channels, size, device)


# NAME of a codec spec `NAME[:ARG]` -> factory(arg or None, channels, size, device).
CODECS: dict[str, Callable[[str | None, int, int, str | torch.device], Codec]] = {"pixel": _pixel, "vae": _vae}


def build_codec(spec: str, channels: int, size: int, device: str | torch.device = "cpu") -> Codec:
    """The codec a spec names (`pixel` or `vae:DIR`), for images of `channels` x `size` x `size`."""
    name, colon, arg = spec.partition(":")
    if name not in CODECS:
        raise UserError(f"unknown codec {spec!r}; use 'pixel' or 'vae:DIR' (a diffusers AutoencoderKL folder)")
    return CODECS[name](arg if colon else None, channels, size, device)


def encode_dataset(codec: Codec, x: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
    """Training targets for the whole set.

    pixel: {"x": (N, C, H, W)} in [-1, 1] (flips are applied on the fly).
    vae: {"mean", "std"}: (N, 2, 4, h, w) float16, index 1 = the mirrored image, cached on disk
    under the dataset fingerprint `key` and the VAE's fingerprint.
    """
    if isinstance(codec, PixelCodec):
        return {"x": codec.encode(x)}
    path = cache_dir() / "latents" / f"{key}-{codec.fingerprint()}.pt"
    hit = read_cache(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    if hit is not None:
        return hit
    means, stds = [], []
    chunk = ENCODE_CHUNK
    for s in progress(range(0, len(x), chunk), desc="encode latents (once)", unit="chunk"):
        xb = x[s:s + chunk]
        m0, s0 = codec.moments(xb)              # (B, 4, h, w) each
        m1, s1 = codec.moments(xb.flip(-1))     # the mirrored images
        means.append(torch.stack([m0, m1], 1).half())   # (B, 2, 4, h, w)
        stds.append(torch.stack([s0, s1], 1).half())
    out = {"mean": torch.cat(means), "std": torch.cat(stds)}
    with writing_cache(path):
        save_atomic(out, path)
        write_json(path.with_suffix(".json"), {"codec": codec.spec, "n": len(x)})
    return out
