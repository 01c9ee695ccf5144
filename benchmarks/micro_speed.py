"""Micro-timings behind the choices in the compiled sampling and fine-tuning paths (BENCHMARKS.md).

Each case runs in its own process (a fresh torch.compile cache), so run this script once per case:

    python benchmarks/micro_speed.py forward --mode {eager,compile,frozen} [--fused-attention] --batch 16
        one bf16 dit-s/2 forward (4x32x32, learned sigma), best of 4 calls after two warm-ups;
        --fused-attention forces F.scaled_dot_product_attention everywhere
    python benchmarks/micro_speed.py generate --model dit-s/2 --channels 4 --size 32 --batches 8,16,32,50
        guided image-steps/s of whole compiled bf16 `generate` calls (10 DDPM steps) per batch size
    python benchmarks/micro_speed.py adamw --optimizer {plain,fused}
        compiled bf16 Difffit steps/s of dit-t/4 on 1x28x28 at batch 8 with torch's AdamW or `train.adamw`
    python benchmarks/micro_speed.py profile
        where a compiled bf16 Difffit step of dit-s/2 (4x32x32, batch 8) spends its time: torch.profiler
        with inductor's per-kernel records, grouped into matmuls, GELU, softmax and the rest
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import minimaxdd.diffusion.dit as dit
from diffusion_speed import time_train_step
from minimaxdd.diffusion.networks import build_denoiser, difffit_parameters
from minimaxdd.diffusion.sampling import (
    frozen_weights,
    generate,
    image_seed,
    sampling_network,
)


def forward(a) -> None:
    if a.fused_attention:
        dit.CPU_MATMUL_ATTENTION_TOKENS.update(train=0, infer=0, infer_compiled=0)
    torch.manual_seed(0)
    m = build_denoiser("dit-s/2", a.size, 4, 1000, learn_sigma=True)
    net = sampling_network(m, "bf16", compile=a.mode != "eager")
    x = torch.randn(a.batch, 4, a.size, a.size, dtype=torch.bfloat16)
    t, y = torch.randint(0, 1000, (a.batch,)), torch.randint(0, 1000, (a.batch,))
    with torch.no_grad(), frozen_weights(a.mode == "frozen"):
        net(x, t, y)
        net(x, t, y)
        ts = []
        for _ in range(4):
            t0 = time.perf_counter()
            net(x, t, y)
            ts.append(time.perf_counter() - t0)
    attn = "fused" if a.fused_attention else "dit.attention"
    print(f"forward dit-s/2 {a.size}px batch {a.batch} {a.mode} ({attn}): {min(ts):.3f} s")


def generate_batches(a) -> None:
    torch.manual_seed(0)
    m = build_denoiser(a.model, a.size, a.channels, 1000, learn_sigma=True)
    for b in map(int, a.batches.split(",")):
        net = sampling_network(m, "bf16", compile=True)
        y = torch.arange(2 * b) % 1000
        seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
        kw = dict(sampler="ddpm", steps=10, cfg_scale=4.0, precision="bf16", compile=True, network=net, batch_size=b)
        generate(m, y[:b], seeds[:b], **kw)                 # compile
        t0 = time.perf_counter()
        generate(m, y, seeds, **kw)
        print(f"generate {a.model} {a.channels}x{a.size}x{a.size} batch {b}: "
              f"{2 * b * 10 / (time.perf_counter() - t0):.1f} guided image-steps/s", flush=True)


def adamw(a) -> None:
    torch.manual_seed(0)
    m = build_denoiser("dit-t/4", 28, 1, 1000, learn_sigma=True)
    diff = difffit_parameters(m)
    trained = {id(p) for p in diff}
    for p in m.parameters():
        p.requires_grad_(id(p) in trained)
    net = torch.compile(m)
    plain = a.optimizer == "plain"
    time_train_step(net, 8, "bf16", diff, reps=2, pattern=plain)   # compile
    ips = [8 / time_train_step(net, 8, "bf16", diff, reps=10, pattern=plain) for _ in range(3)]
    print(f"adamw {a.optimizer}: compiled Difffit dit-t/4 1x28x28 batch 8: "
          + ", ".join(f"{v:.1f}" for v in ips) + " img/s")


def profile(a) -> None:
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    m = build_denoiser("dit-s/2", 32, 4, 1000, learn_sigma=True)
    diff = difffit_parameters(m)
    trained = {id(p) for p in diff}
    for p in m.parameters():
        p.requires_grad_(id(p) in trained)
    net = torch.compile(m)
    time_train_step(net, 8, "bf16", diff, reps=2)   # compile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        time_train_step(net, 8, "bf16", diff, reps=3)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmuls (mm, addmm, bmm)": lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm"),
              "GELU kernels": lambda k: "gelu" in k, "softmax kernels": lambda k: "softmax" in k}
    rest = total
    for name, match in groups.items():
        t = sum(e.self_cpu_time_total for e in events if match(e.key))
        rest -= t
        print(f"{name}: {100 * t / total:.0f}%")
    print(f"everything else (other fused kernels, optimiser, dispatch): {100 * rest / total:.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("forward")
    p.add_argument("--mode", choices=("eager", "compile", "frozen"), required=True)
    p.add_argument("--fused-attention", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="latent size: 32 = 256 tokens, 64 = 1024")
    p = sub.add_parser("generate")
    p.add_argument("--model", default="dit-s/2")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batches", default="8,16,32,50")
    sub.add_parser("profile")
    p = sub.add_parser("adamw")
    p.add_argument("--optimizer", choices=("plain", "fused"), required=True)
    a = ap.parse_args()
    {"forward": forward, "generate": generate_batches, "adamw": adamw, "profile": profile}[a.cmd](a)


if __name__ == "__main__":
    main()
