"""DiT (Peebles & Xie, 2023) with Difffit scale factors (Xie et al., 2023).

Parameter names and shapes follow the public DiT `models.py`, so the official
`DiT-XL-2-256x256.pt` loads with strict key checking (see `minimaxdd.diffusion.weights`). The
Difffit gammas are extra parameters, equal to one at init, so a model with them
computes exactly what the model without them does until they are trained.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Frequency embedding width of the timestep MLP (DiT: TimestepEmbedder.frequency_embedding_size).
TIME_FREQ_DIM = 256
# LayerNorm epsilon of every DiT norm (elementwise_affine=False, eps=1e-6 in the public code).
LN_EPS = 1e-6


@dataclass
class DiTConfig:
    """Defaults: DiT-XL/2 on 256 px ImageNet latents (Peebles & Xie 2023, Table 1; facebookresearch/DiT)."""

    input_size: int = 32          # latent (or pixel) side length
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000       # the null (guidance) class is index num_classes
    learn_sigma: bool = True      # 2C output channels: epsilon and the variance interpolation v
    # Which blocks carry Difffit gammas: "half" (the Minimax reference: blocks 0..depth/2-1), "all", "none".
    difffit: str = "half"

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        """The config dict checkpoints store (`minimaxdd.diffusion.networks.build_from_config` rebuilds from it)."""
        return {"arch": "dit", **asdict(self)}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cos half first as in DiT.

    The exponent is divided by dim/2, as in the public DiT code; diffusers' DiT port divides by
    dim/2 - 1 (downscale_freq_shift=1), so its outputs differ slightly from the official model's.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                   # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table (grid*grid, dim), laid out as the public DiT/MAE code."""
    gh = np.arange(grid, dtype=np.float64)
    gw = np.arange(grid, dtype=np.float64)
    ww, hh = np.meshgrid(gw, gh)   # first grid varies along w, the second along h

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)                      # (grid*grid, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, ww), one_d(dim // 2, hh)], axis=1)


def unpatchify(x: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(N, T, p*p*C) patch tokens of a square grid -> (N, C, H, W)."""
    N, T, _ = x.shape
    g = int(T ** 0.5)
    x = x.reshape(N, g, g, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(N, channels, g * patch, g * patch)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D) scaled and shifted per sample by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)                          # (N, T, D)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, TIME_FREQ_DIM).to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class table with one extra row, the null class used for classifier-free guidance.

    Label dropout is done by the training loop (with its own seeded generator), not here.
    """
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)                                          # (N, D)


# Token counts up to which CPU attention runs as two matmuls and a softmax instead of
# F.scaled_dot_product_attention. Measured on a 2-core AMD EPYC, torch 2.13, bf16, 6 heads of 64:
# the fused CPU kernel's backward is slow (fwd + bwd at 256 tokens: 21 ms fused, 6.6 ms as matmuls;
# at 1024 tokens 189 vs 239 ms), while eager inference favours it from 256 tokens on (5.0 vs 6.3 ms).
# Under torch.compile the matmul path wins inference too, since inductor fuses the scale and the
# softmax: a compiled bf16 dit-s/2 forward at batch 16 took 0.34 s against 0.46 s fused at 256
# tokens, and at batch 8 1.05 s against 1.53 s at 1024 tokens (benchmarks/micro_speed.py forward).
CPU_MATMUL_ATTENTION_TOKENS = {"train": 512, "infer": 64, "infer_compiled": 1024}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (N, H, T, d): the fused kernel, or matmuls where they are faster on a CPU.

    Both compute the same function; the matmul path takes its softmax in float32.
    """
    T = q.shape[-2]
    if torch.is_grad_enabled() and q.requires_grad:
        mode = "train"
    else:
        mode = "infer_compiled" if torch.compiler.is_compiling() else "infer"
    if q.device.type != "cpu" or T > CPU_MATMUL_ATTENTION_TOKENS[mode]:
        return F.scaled_dot_product_attention(q, k, v)
    a = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5                 # (N, H, T, T)
    return a.softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, difffit: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        if difffit:   # Difffit scales the qkv output and the output projection (reference: first half of blocks)
            self.gamma_qkv = nn.Parameter(torch.ones(dim * 3))
            self.gamma_proj = nn.Parameter(torch.ones(dim))
        else:
            self.gamma_qkv = self.gamma_proj = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        qkv = self.qkv(x)                                                      # (N, T, 3D)
        if self.gamma_qkv is not None:
            qkv = qkv * self.gamma_qkv
        q, k, v = qkv.view(N, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (N, H, T, D/H)
        x = attention(q, k, v)                                                 # (N, H, T, D/H)
        x = self.proj(x.transpose(1, 2).reshape(N, T, D))                      # (N, T, D)
        if self.gamma_proj is not None:
            x = x * self.gamma_proj
        return x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh-approximate GELU, as the public DiT code's Mlp (timm, approx_gelu)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block; with `difffit`, gammas scale the attention and MLP branches."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, difffit: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(dim, heads, difffit)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if difffit:
            self.gamma1 = nn.Parameter(torch.ones(dim))
            self.gamma2 = nn.Parameter(torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        a = gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))   # (N, T, D)
        if self.gamma1 is not None:
            a = a * self.gamma1
        x = x + a
        m = gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))   # (N, T, D)
        if self.gamma2 is not None:
            m = m * self.gamma2
        return x + m


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_ch: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(dim, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)                 # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))          # (N, T, p*p*out_C)


class DiT(nn.Module):
    """Class-conditional diffusion transformer: forward(x (N,C,H,W), t (N,), y (N,)) -> (N, out_C, H, W)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input size {cfg.input_size} is not a multiple of patch {cfg.patch_size}")
        if cfg.difffit not in ("half", "all", "none"):
            raise ValueError(f"difffit must be half, all or none, not {cfg.difffit!r}")
        self.config = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        self.learn_sigma, self.num_classes, self.input_size = cfg.learn_sigma, cfg.num_classes, cfg.input_size
        self.x_embedder = PatchEmbed(p, cfg.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        grid = cfg.input_size // p
        # A frozen Parameter, not a buffer, because the official checkpoint stores it under this name.
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed_2d(D, grid)).float()[None], requires_grad=False)
        n_gamma = {"half": cfg.depth // 2, "all": cfg.depth, "none": 0}[cfg.difffit]
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, i < n_gamma) for i in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # The public DiT initialisation: xavier linears, zeroed adaLN and output (adaLN-Zero).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for b in self.blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed                                # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)                            # (N, D)
        for block in self.blocks:
            x = block(x, c)                                                    # (N, T, D)
        x = self.final_layer(x, c)                                             # (N, T, p*p*out_C)
        return unpatchify(x, self.config.patch_size, self.out_channels)        # (N, out_C, H, W)
