"""U-ViT (Bao et al., CVPR 2023): everything is a token, with long skips from shallow to deep blocks.

The backbone of the ECCV 2024 challenge winner (generation from scratch in pixel space).
Time and class enter as two extra tokens; the first half of the blocks feed the second half
through concatenation + a linear layer; a 3x3 conv smooths the unpatchified output
(configs in baofff/U-ViT: `conv=True`, `mlp_time_embed=False`, `qkv_bias=False` at 32 px).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimaxdd.diffusion.dit import attention, timestep_embedding, unpatchify


@dataclass
class UViTConfig:
    """Defaults: U-ViT's CIFAR-10 network (baofff/U-ViT, configs/cifar10_uvit.py: 32 px, patch 2, 512 wide,
    depth 12, 8 heads, no qkv bias), made class-conditional on CIFAR-10's 10 classes (ours; that config is
    unconditional)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 3
    hidden_size: int = 512
    depth: int = 12             # blocks besides the middle one: depth/2 in, 1 mid, depth/2 out
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 10       # the null (guidance) class is index num_classes
    qkv_bias: bool = False
    learn_sigma: bool = False

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        """The config dict checkpoints store (`minimaxdd.diffusion.networks.build_from_config` rebuilds from it)."""
        return {"arch": "uvit", **asdict(self)}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool) -> None:
        super().__init__()
        self.heads = heads
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over (N, T, D) tokens."""
        N, T, D = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (N, H, T, D/H)
        x = attention(q, k, v)                                                 # (N, H, T, D/H)
        return self.proj(x.transpose(1, 2).reshape(N, T, D))                   # (N, T, D)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))                  # (N, T, D)
        x = x + self.attn(self.norm1(x))                                        # (N, T, D)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))                    # (N, T, D)


class UViT(nn.Module):
    """forward(x (N,C,H,W), t (N,), y (N,)) -> (N, out_C, H, W)."""

    extra_tokens = 2   # time and class

    def __init__(self, cfg: UViTConfig) -> None:
        super().__init__()
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input size {cfg.input_size} is not a multiple of patch {cfg.patch_size}")
        if cfg.depth % 2:
            raise ValueError(f"U-ViT depth must be even (in and out halves), got {cfg.depth}")
        self.config = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        self.learn_sigma, self.num_classes, self.input_size = cfg.learn_sigma, cfg.num_classes, cfg.input_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, D)
        n_tokens = (cfg.input_size // p) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extra_tokens + n_tokens, D))
        half = cfg.depth // 2
        args = (D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias)
        self.in_blocks = nn.ModuleList(Block(*args, skip=False) for _ in range(half))
        self.mid_block = Block(*args, skip=False)
        self.out_blocks = nn.ModuleList(Block(*args, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * cfg.out_channels)
        self.final_layer = nn.Conv2d(cfg.out_channels, cfg.out_channels, 3, padding=1)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                     # (N, T, D)
        D = x.shape[-1]
        tt = timestep_embedding(t, D).to(x.dtype).unsqueeze(1)                 # (N, 1, D)
        yy = self.label_emb(y).unsqueeze(1)                                     # (N, 1, D)
        x = torch.cat([tt, yy, x], dim=1) + self.pos_embed                     # (N, 2+T, D)
        skips = []
        for b in self.in_blocks:
            x = b(x)
            skips.append(x)
        x = self.mid_block(x)                                                  # (N, 2+T, D)
        for b in self.out_blocks:
            x = b(x, skips.pop())                                              # (N, 2+T, D)
        x = self.decoder_pred(self.norm(x))[:, self.extra_tokens:]             # (N, T, p*p*out_C)
        x = unpatchify(x, self.config.patch_size, self.out_channels)           # (N, out_C, H, W)
        return self.final_layer(x)                                             # (N, out_C, H, W)
