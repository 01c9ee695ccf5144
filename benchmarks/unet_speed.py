"""Training speed of the pixel-space U-Net (issue 18, item 4): images/s and share of the CPU's matmul rate.

One training step = EDM's preconditioned denoising loss on a batch (lognormal sigma, Karras et al. 2022),
forward + backward + a fused AdamW step, for --model at --size px x --channels, --classes classes.
Variants: eager fp32, eager bf16 autocast, eager bf16 channels_last (weights and inputs), compiled bf16,
compiled bf16 channels_last. Each runs --warmup steps (the compile happens there, timed apart), then
--steps timed steps. FLOPs per image are counted by torch's FlopCounterMode on one fp32 forward +
backward (convs and matmuls only); the achieved rate is divided by a square bf16 (and fp32) GEMM's
rate measured in the same run. torch.set_flush_denormal(True) as the CLI does (--no-flush to check
the model does not depend on it).

    python benchmarks/unet_speed.py --threads 1 --out benchmarks/results/unet_speed.json
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import minimaxdd.diffusion.dit as dit
from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.files import write_json
from minimaxdd.runtime import autocast

SIGMA_DATA, P_MEAN, P_STD = 0.5, -1.2, 1.2   # EDM (Karras et al. 2022, Table 1)
VARIANTS = {   # name -> (precision, channels_last, compile)
    "eager-fp32": ("fp32", False, False),
    "eager-fp32-cl": ("fp32", True, False),
    "compiled-fp32": ("fp32", False, True),
    "eager-bf16": ("bf16", False, False),
    "eager-bf16-cl": ("bf16", True, False),
    "compiled-bf16": ("bf16", False, True),
    "compiled-bf16-cl": ("bf16", True, True),
}


def edm_loss(net, x, y, g):
    """EDM's loss with its preconditioning, as a unit-variance regression target for the network F."""
    sigma = (torch.randn(x.shape[0], generator=g) * P_STD + P_MEAN).exp()[:, None, None, None]  # (N, 1, 1, 1)
    fmt = torch.channels_last if x.stride(1) == 1 else torch.contiguous_format
    noisy = x + sigma * torch.randn(x.shape, generator=g).contiguous(memory_format=fmt)   # (N, C, H, W)
    s2 = sigma ** 2 + SIGMA_DATA ** 2
    c_skip, c_out, c_in = SIGMA_DATA ** 2 / s2, sigma * SIGMA_DATA / s2.sqrt(), 1 / s2.sqrt()
    out = net(c_in * noisy, sigma.flatten().log() / 4, y).float()              # (N, C, H, W)
    return (out - (x - c_skip * noisy) / c_out).square().mean()


def batch(model, n, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, model.in_channels, model.input_size, model.input_size, generator=g) * 2 - 1
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def train_flops(a):
    """(forward, forward + backward) FLOPs per image, counted on an fp32 eager step at batch 8."""
    torch.manual_seed(0)
    model = build_denoiser(a.model, a.size, a.channels, a.classes)
    x, y = batch(model, 8, False)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x, torch.zeros(8), y)
    fwd = fc.get_total_flops() / 8
    with FlopCounterMode(display=False) as fc:
        edm_loss(model, x, y, torch.Generator().manual_seed(0)).backward()
    return fwd, fc.get_total_flops() / 8


def time_variant(a, precision, channels_last, compiled):
    """(images/s, compile + warm-up seconds) of training steps of a fresh model."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = build_denoiser(a.model, a.size, a.channels, a.classes).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = batch(model, a.batch, channels_last)
    g = torch.Generator().manual_seed(1)

    def step():
        with autocast(torch.device("cpu"), precision):
            loss = edm_loss(net, x, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    return a.batch * a.steps / (time.perf_counter() - t0), warm


def matmul_rate(dtype, n, seconds=2.0):
    """FLOP/s of an n x n x n GEMM in `dtype`, repeated for about `seconds`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--model", default="unet-s")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (the compile happens here)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for everything, the GEMM included (0: torch's default). On a machine shared "
                         "with other jobs use 1: two OpenMP threads contending with another process wait on each other")
    ap.add_argument("--no-flush", action="store_true", help="leave denormal flushing off")
    ap.add_argument("--fused-attention", action="store_true",
                    help="F.scaled_dot_product_attention at every token count (default: dit.attention's choice)")
    a = ap.parse_args()
    torch.set_flush_denormal(not a.no_flush)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.fused_attention:
        dit.CPU_MATMUL_ATTENTION_TOKENS.update(train=0, infer=0, infer_compiled=0)
    names = a.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    os.environ.setdefault("MINIMAXDD_QUIET", "1")
    rate = {"bf16": matmul_rate(torch.bfloat16, a.matmul_n), "fp32": matmul_rate(torch.float32, a.matmul_n)}
    fwd, train = train_flops(a)
    params = sum(p.numel() for p in build_denoiser(a.model, a.size, a.channels, a.classes).parameters())
    print(f"{a.model} {a.channels}x{a.size}x{a.size}, {a.classes} classes: {params:,} parameters, "
          f"{fwd / 1e6:.1f} MFLOP forward, {train / 1e6:.1f} MFLOP forward+backward per image "
          f"({train / fwd:.2f}x); GEMM {a.matmul_n}: bf16 {rate['bf16'] / 1e9:.0f}, fp32 {rate['fp32'] / 1e9:.0f} "
          f"GFLOP/s; {torch.get_num_threads()} threads, flush denormals {not a.no_flush}")
    rows = []
    print(f"{'variant':18} {'img/s':>8} {'GFLOP/s':>8} {'of bf16 GEMM':>13} {'of fp32 GEMM':>13} {'warm-up s':>10}")
    for v in names:
        ips, warm = time_variant(a, *VARIANTS[v])
        r = {"variant": v, "images_per_s": ips, "gflop_per_s": ips * train / 1e9, "share_bf16_gemm": ips * train / rate["bf16"],
             "share_fp32_gemm": ips * train / rate["fp32"], "warmup_s": warm}
        rows.append(r)
        print(f"{v:18} {ips:8.1f} {r['gflop_per_s']:8.1f} {r['share_bf16_gemm']:13.1%} {r['share_fp32_gemm']:13.1%} "
              f"{warm:10.1f}", flush=True)
    if a.out:
        write_json(a.out, {"args": vars(a), "params": params, "forward_flops_per_image": fwd,
                           "train_flops_per_image": train, "gemm_flop_per_s": rate, "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                           "results": rows})


if __name__ == "__main__":
    main()
