"""GPU benchmark of the paper's setting: DiT-XL/2 at 256 px (random weights, 4x32x32 latents).

Measures, on one device:
- Difffit + minimax fine-tuning steps/s at batch 8 (bf16 autocast) and its peak memory (the paper
  ran on a 24 GB RTX 4090, so it must fit 24 GB);
- sampling images/s at 50 ancestral steps with guidance 4.0 on 3 channels, at several batch sizes,
  next to the paper's pattern (fp32, one image per call: a model batch of 2);
- SD-VAE (random weights, the sd-vae-ft-* architecture) encode and decode images/s at 256 px;
- the projected end-to-end time of ImageWoof at IPC 100: encoding ~13k images, 8 epochs of
  fine-tuning (1300 x 10 images at batch 8 per epoch), sampling and decoding 1000 images, against
  the paper's "under 1 hour on one RTX 4090".

    python benchmarks/gpu.py --out benchmarks/results/gpu.json            # on a GPU machine
    python benchmarks/gpu.py --device cpu --model dit-s/2 --quick         # a smoke run anywhere
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from minimaxdd.diffusion.networks import build_denoiser
from minimaxdd.diffusion.sampling import generate, image_seed
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.files import write_json
from minimaxdd.runtime import pick_device
from minimaxdd.training.finetune import select_trainable
from minimaxdd.training.loop import Batch
from minimaxdd.training.minimax import ClassMemory, MinimaxStep

IMAGEWOOF_TRAIN = 12_954     # ImageNet train images of the 10 ImageWoof classes (~1300 each)
PAPER_EPOCHS, PAPER_BATCH = 8, 8


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finetune_speed(model, device, steps: int, batch: int = PAPER_BATCH) -> dict:
    params = select_trainable(model, "difffit")
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0)
    diff = Diffusion()
    k, dim = 10, model.in_channels * model.input_size ** 2
    minimax = MinimaxStep(objective="minimax", lambda_r=0.002, lambda_d=0.008, reduction="matrix",
                          real=ClassMemory(k, 64, dim, device), pred=ClassMemory(k, 64, dim, device),
                          slot=torch.arange(k, device=device))
    g = torch.Generator().manual_seed(0)
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        x0 = torch.randn(shape, generator=g).to(device)
        y = torch.randint(0, k, (batch,), generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        noise = torch.randn(shape, generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            terms = diff.training_losses(model, x0, t, y, noise)
        add, _ = minimax(terms, Batch(x0=x0, labels=y, dropped=torch.zeros_like(y, dtype=torch.bool), step=0))
        loss = terms["loss"].mean() + add
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t0 = time.time()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.time() - t0) / steps
    out = {"batch": batch, "steps_per_s": 1 / dt, "images_per_s": batch / dt,
           "trainable_params": sum(p.numel() for p in params), "total_params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def sampling_speed(model, device, batch: int, precision: str, n: int, steps: int = 50) -> dict:
    labels = torch.arange(n) % 10
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(labels.tolist())]
    kw = dict(sampler="ddpm", steps=steps, cfg_scale=4.0, cfg_channels=3, precision=precision, batch_size=batch,
              device=device)
    generate(model, labels[:batch], seeds[:batch], **{**kw, "steps": 2})   # warm-up
    sync(device)
    t0 = time.time()
    generate(model, labels, seeds, **kw)
    sync(device)
    dt = time.time() - t0
    return {"batch": batch, "precision": precision, "images": n, "steps": steps, "images_per_s": n / dt}


def vae_speed(device, n: int, size: int, batch: int) -> dict | None:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        return None
    # the sd-vae-ft-ema / -mse architecture (diffusers config of stabilityai/sd-vae-ft-ema), random weights
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=size).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        vae.encode(x)
        sync(device)
        t0 = time.time()
        for _ in range(max(1, n // batch)):
            z = vae.encode(x).latent_dist.mean
        sync(device)
        enc = max(1, n // batch) * batch / (time.time() - t0)
        t0 = time.time()
        for _ in range(max(1, n // batch)):
            vae.decode(z)
        sync(device)
        dec = max(1, n // batch) * batch / (time.time() - t0)
    return {"encode_images_per_s": enc, "decode_images_per_s": dec, "batch": batch, "size": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu, or auto (cuda if available)")
    ap.add_argument("--model", default="dit-xl/2")
    ap.add_argument("--latent", type=int, default=32, help="latent side (256 px / 8)")
    ap.add_argument("--batches", default="1,8,32,64,128", help="sampling batch sizes")
    ap.add_argument("--images", type=int, default=128, help="images per sampling measurement")
    ap.add_argument("--steps", type=int, default=20, help="timed fine-tuning steps")
    ap.add_argument("--quick", action="store_true", help="tiny measurement sizes (smoke run)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = pick_device(a.device)
    if a.quick:
        a.images, a.steps, a.batches = 4, 2, "1,4"
    torch.manual_seed(0)
    model = build_denoiser(a.model, a.latent, 4, 1000, learn_sigma=True).to(device)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "model": a.model, "latent": a.latent}
    res["finetune"] = finetune_speed(model, device, a.steps)
    print("fine-tuning:", json.dumps(res["finetune"]), flush=True)
    model.requires_grad_(False)
    res["sampling"] = []
    paper = sampling_speed(model, device, 1, "fp32", max(2, a.images // 16))
    paper["pattern"] = "paper: fp32, one image per call"
    res["sampling"].append(paper)
    print("sampling:", json.dumps(paper), flush=True)
    for b in [int(v) for v in a.batches.split(",")]:
        r = sampling_speed(model, device, b, "bf16", max(a.images, b))
        r["speedup_vs_paper"] = r["images_per_s"] / paper["images_per_s"]
        res["sampling"].append(r)
        print("sampling:", json.dumps(r), flush=True)
    res["vae"] = vae_speed(device, 4 if a.quick else 64, 8 * a.latent, 2 if a.quick else 16)
    best = max(res["sampling"][1:], key=lambda r: r["images_per_s"])
    steps = PAPER_EPOCHS * IMAGEWOOF_TRAIN // PAPER_BATCH
    proj = {"finetune_s": steps / res["finetune"]["steps_per_s"], "sample_1000_s": 1000 / best["images_per_s"],
            "finetune_steps": steps}
    if res["vae"]:
        proj["encode_s"] = 2 * IMAGEWOOF_TRAIN / res["vae"]["encode_images_per_s"]   # both flips
        proj["decode_1000_s"] = 1000 / res["vae"]["decode_images_per_s"]
    proj["total_s"] = sum(v for k, v in proj.items() if k.endswith("_s"))
    res["imagewoof_ipc100_projection"] = proj
    print("projection (ImageWoof, IPC 100):", json.dumps(proj), flush=True)
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
