"""A small class-conditional convolutional U-Net for pixel-space diffusion at 8-64 px.

The layout is ADM's (Dhariwal & Nichol 2021) and EDM's DDPM++ (Karras et al. 2022, NVlabs/edm
`SongUNet`), shrunk for CPUs: per level, `blocks` residual blocks on the way down and `blocks + 1` on
the way up, each fed the matching encoder activation (a skip) by concatenation; self-attention at
the levels in `attn_levels` (default: the lowest) and in the middle block; GroupNorm + SiLU; the
noise level and the class enter every residual block as a per-channel scale and shift of its second
norm. Every residual branch (res blocks and attention) ends in a zero-initialised layer and is
multiplied by a learnable scalar `gamma` (one at init) that Difffit fine-tuning trains
(`minimaxdd.diffusion.networks.difffit_parameters`).

Resolutions: level 0 runs at the input size; level i+1 halves level i's side when that side is even
and the half is at least `MIN_RESOLUTION` px, and keeps it otherwise (no padding). So 28 px runs at
28/14/7, 32 px at 32/16/8, 8 px at 8/4/4 with three levels. `UNet.resolutions` lists them.

Names are chosen for Difffit's substring rule (`DIFFFIT_KEYS`): the GroupNorms are `norm*`, the class
table is `label_emb`, the branch scales are `gamma`; no other module name contains "norm", "bias",
"gamma", "y_embed" or "label_emb", so Difffit trains exactly biases, norms, the class table and gammas.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimaxdd.diffusion.dit import attention, timestep_embedding

# The lowest side length a level may be halved to (see the module docstring).
MIN_RESOLUTION = 4
# GroupNorm: at most 32 groups and at least 4 channels per group (EDM's `GroupNorm`, num_groups=32,
# min_channels_per_group=4), so narrow layers still normalise over several channels.
MAX_GROUPS, MIN_GROUP_CHANNELS = 32, 4
GN_EPS = 1e-6   # as ADM and EDM


@dataclass
class UNetConfig:
    """Defaults: `unet-s` for 32 px RGB with 10 classes (see `minimaxdd.diffusion.networks.DENOISERS`)."""

    input_size: int = 32                  # side length in pixels
    in_channels: int = 3
    num_classes: int = 10                 # the null (guidance) class is index num_classes
    channels: tuple[int, ...] = (32, 64, 64)   # width of each level, highest resolution first
    blocks: int = 2                       # residual blocks per level on the way down (one more on the way up)
    attn_levels: tuple[int, ...] | None = None  # levels with self-attention; None: the lowest only
    heads: int = 1                        # attention heads (64 channels per head at unet-s/m/l's lowest level)
    dropout: float = 0.0                  # in every residual block, before its second conv
    embed_dim: int = 128                  # width of the noise + class embedding (EDM: 4 x channels[0])
    learn_sigma: bool = False             # 2C output channels, for API parity with DiT
    augment_dim: int = 0                  # augmentation labels embedded beside the noise level (0: none)
    arch: str = "unet"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        n = len(self.channels)
        levels = (n - 1,) if self.attn_levels is None else self.attn_levels
        self.attn_levels = tuple(sorted({int(i) % n if -n <= int(i) < n else int(i) for i in levels}))
        if self.arch != "unet":
            raise ValueError(f"a UNetConfig has arch 'unet', not {self.arch!r}")
        if n < 1 or min(self.channels) < 1 or self.blocks < 1:
            raise ValueError(f"a U-Net needs at least one level and one block: channels={self.channels}, "
                             f"blocks={self.blocks}")
        if any(not 0 <= i < n for i in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} name levels outside 0..{n - 1} "
                             f"(channels={self.channels})")
        for c in {self.channels[i] for i in self.attn_levels} | {self.channels[-1]}:
            if c % self.heads:
                raise ValueError(f"{self.heads} attention heads do not divide {c} channels; pick heads dividing "
                                 f"the widths of the attention levels and the middle block")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        """The JSON-able config dict checkpoints store (tuples as lists; `networks.build_from_config` rebuilds)."""
        d = asdict(self)
        d["channels"], d["attn_levels"] = list(self.channels), list(self.attn_levels)
        if not self.augment_dim:
            del d["augment_dim"]        # absent when unused: checkpoints read as before, and by older code
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """The config a `to_dict` dict (with or without "arch") describes; unknown keys are an error."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}; expected fields of UNetConfig")
        return cls(**d)


def level_resolutions(input_size: int, levels: int) -> tuple[int, ...]:
    """Side length of each level: halve while the side is even and the half is >= MIN_RESOLUTION."""
    res = [input_size]
    for _ in range(levels - 1):
        s = res[-1]
        res.append(s // 2 if s % 2 == 0 and s // 2 >= MIN_RESOLUTION else s)
    return tuple(res)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups <= MAX_GROUPS that divide `channels` and keep MIN_GROUP_CHANNELS each."""
    g = max(1, min(MAX_GROUPS, channels // MIN_GROUP_CHANNELS))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=GN_EPS)


def zero_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place (exact zeros: unlike EDM's 1e-5-scaled init, they produce
    no tiny products that underflow into denormals, which x86 CPUs compute slowly unless flushed)."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


class ResBlock(nn.Module):
    """x (N, C_in, H, W), emb (N, E) -> (N, C_out, H, W): skip(x) + gamma * branch(x, emb)."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(embed_dim, 2 * c_out)        # per-channel scale and shift of norm2
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.gamma = nn.Parameter(torch.ones(1))               # Difffit's branch scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                                  # (N, C_out, H, W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)   # 2 x (N, C_out, 1, 1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)                        # (N, C_out, H, W)
        h = self.conv2(self.dropout(h))                                        # (N, C_out, H, W)
        return self.skip(x) + self.gamma * h                                   # (N, C_out, H, W)


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions: x (N, C, H, W) -> x + gamma * attn(norm(x))."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        N, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(N, 3, self.heads, C // self.heads, H * W)  # (N, 3, heads, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                              # 3 x (N, heads, HW, d)
        # F.scaled_dot_product_attention, or two matmuls at the short token counts where they are faster on CPUs
        a = attention(q, k, v)                                                 # (N, heads, HW, d)
        a = a.transpose(-1, -2).reshape(N, C, H, W)                            # (N, C, H, W)
        return x + self.gamma * self.proj(a)                                   # (N, C, H, W)


class Downsample(nn.Module):
    """(N, C, H, W) -> (N, C, H/2, W/2): a stride-2 3x3 conv (ADM's conv_resample)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)                                                    # (N, C, H/2, W/2)


class Upsample(nn.Module):
    """(N, C, H, W) -> (N, C, 2H, 2W): nearest-neighbour doubling, then a 3x3 conv (ADM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (N, C, 2H, 2W)


class Stage(nn.ModuleList):
    """Layers applied in turn, each as layer(x, emb); ResBlocks use emb, the others ignore it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """Class-conditional U-Net: forward(x (N,C,H,W), noise_label (N,), y (N,)) -> (N, out_C, H, W).

    `noise_label` is any float per sample: EDM's c_noise = ln(sigma)/4 or a DDPM timestep in 0..999. It
    is embedded with DiT's sinusoids (periods 2*pi to 2*pi*10^4, as EDM's DDPM++ does for c_noise) and
    an MLP. `y` holds class indices; y == num_classes is the null class of classifier-free guidance.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        self.learn_sigma, self.num_classes, self.input_size = cfg.learn_sigma, cfg.num_classes, cfg.input_size
        self.resolutions = level_resolutions(cfg.input_size, len(cfg.channels))
        E, ch = cfg.embed_dim, cfg.channels
        self.freq_dim = ch[0]
        self.time_embed = nn.Sequential(nn.Linear(self.freq_dim, E), nn.SiLU(), nn.Linear(E, E))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, E)
        # non-leaking augmentation (diffusion.augment): labels mapped without a bias, so zero labels, which
        # sampling passes, add nothing (EDM's map_augment)
        self.augment_emb = nn.Linear(cfg.augment_dim, E, bias=False) if cfg.augment_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down, skip_ch = self._encoder()
        self.mid = Stage([ResBlock(ch[-1], ch[-1], E, cfg.dropout), AttnBlock(ch[-1], cfg.heads),
                          ResBlock(ch[-1], ch[-1], E, cfg.dropout)])
        self.up = self._decoder(skip_ch)
        self.norm_out = group_norm(ch[0])
        self.conv_out = zero_(nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1))

    def _halves(self, level: int) -> bool:
        """Whether the resolution halves between `level` and the next one."""
        return level + 1 < len(self.resolutions) and self.resolutions[level + 1] < self.resolutions[level]

    def _encoder(self) -> tuple[nn.ModuleList, list[int]]:
        """One Stage per skip: the blocks of each level, then its downsample; and the skips' widths."""
        cfg, stages = self.config, nn.ModuleList()
        skip_ch, c = [cfg.channels[0]], cfg.channels[0]   # conv_in's output is the first skip
        for i, c_out in enumerate(cfg.channels):
            for _ in range(cfg.blocks):
                layers = [ResBlock(c, c_out, cfg.embed_dim, cfg.dropout)]
                if i in cfg.attn_levels:
                    layers.append(AttnBlock(c_out, cfg.heads))
                stages.append(Stage(layers))
                skip_ch.append(c := c_out)
            if i + 1 < len(cfg.channels):   # a transition (an identity when the resolution stays)
                stages.append(Stage([Downsample(c)] if self._halves(i) else []))
                skip_ch.append(c)
        return stages, skip_ch

    def _decoder(self, skip_ch: list[int]) -> nn.ModuleList:
        """One Stage per skip consumed, lowest level first: a block on cat(h, skip), attention, upsample."""
        cfg, stages, skip_ch = self.config, nn.ModuleList(), list(skip_ch)
        c = cfg.channels[-1]
        for i in reversed(range(len(cfg.channels))):
            c_out = cfg.channels[i]
            for j in range(cfg.blocks + 1):
                layers = [ResBlock(c + skip_ch.pop(), c_out, cfg.embed_dim, cfg.dropout)]
                c = c_out
                if i in cfg.attn_levels:
                    layers.append(AttnBlock(c, cfg.heads))
                if j == cfg.blocks and i > 0 and self._halves(i - 1):
                    layers.append(Upsample(c))
                stages.append(Stage(layers))
        return stages

    def embed(self, noise_label: torch.Tensor, y: torch.Tensor,
              augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) float noise labels, (N,) class indices and optional (N, augment_dim) augmentation labels ->
        (N, embed_dim) conditioning vectors."""
        w = self.time_embed[0].weight
        t = timestep_embedding(noise_label, self.freq_dim).to(w.dtype)         # (N, freq_dim)
        emb = self.time_embed(t) + self.label_emb(y)                           # (N, E)
        if augment_labels is not None:
            if self.augment_emb is None:
                raise ValueError("augmentation labels given to a U-Net built without augment_dim")
            emb = emb + self.augment_emb(augment_labels.to(w.dtype))
        return emb

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, y: torch.Tensor,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(noise_label, y, augment_labels)                       # (N, E)
        h = self.conv_in(x)                                                    # (N, ch[0], H, W)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)                                                  # (N, ch[i], H_i, W_i)
            skips.append(h)
        h = self.mid(h, emb)                                                   # (N, ch[-1], H_low, W_low)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)                 # (N, ch[i], H_i, W_i)
        return self.conv_out(F.silu(self.norm_out(h)))                         # (N, out_C, H, W)
