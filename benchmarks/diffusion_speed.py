"""Training, Difffit fine-tuning and sampling speed of DiTs, ours vs the paper's pattern, in one run.

Pattern (the reference code): fp32, one image per network call with guidance (a model batch of
2: conditional + null), 50 ancestral steps; Difffit fine-tuning at batch 8 in fp32 with torch's default AdamW.
Ours: batched sampling (--sample-batch images, so a model batch of twice that with guidance),
bf16 autocast; fine-tuning at the same batch 8 in bf16 with the fused AdamW; training from scratch at
--train-batch.

Every figure is also given as a fraction of this machine's matmul rate, measured in the same run
(a square GEMM, fp32 and bf16), with FLOPs per image counted from the model by torch's
FlopCounterMode. Ours and the pattern alternate within each trial; the ratio is per trial, then
mean +- std over trials. `--compile` adds torch.compile'd bf16 fine-tuning and sampling (the
`--compile` flags of `finetune` and `sample`), compiled once per model before the trials.
The pattern's attention is the fused kernel (F.scaled_dot_product_attention, what the reference's
timm Attention calls); ours picks matmuls where they are faster on a CPU (`dit.attention`).

`--compile` runs the compiled sampling network as `sample --compile` does (`sampling_network`:
frozen weights, matmul attention) at --compiled-batch images per call (16: on a 2-core CPU smaller
batches keep the activations in cache; a dit-s/2 ran 27 guided image-steps/s at 16 against 23 at 50,
`micro_speed.py generate`).

`--solver SAMPLER:SPACING:STEPS[,...]` (e.g. ddpm:time:25,dpm-solver:time:20) also times whole
`generate` calls of 3 x --compiled-batch images, guided, bf16 (compiled with --compile): the 50-step
ancestral sampler and each given solver, against the pattern's 50 steps.

    python benchmarks/diffusion_speed.py --out benchmarks/results/diffusion_speed.json
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import minimaxdd.diffusion.dit as dit
from minimaxdd.diffusion.denoisers import Guided, VPDenoiser
from minimaxdd.diffusion.networks import build_denoiser, difffit_parameters
from minimaxdd.diffusion.sampling import (
    frozen_weights,
    generate,
    image_seed,
    sampling_network,
)
from minimaxdd.diffusion.schedule import Diffusion
from minimaxdd.files import write_json
from minimaxdd.runtime import autocast
from minimaxdd.training.loop import adamw

DEV = torch.device("cpu")


class fused_attention:
    """Within: every attention call uses the fused kernel, as the reference code does."""

    def __enter__(self):
        self.saved = dict(dit.CPU_MATMUL_ATTENTION_TOKENS)
        dit.CPU_MATMUL_ATTENTION_TOKENS.update(train=0, infer=0, infer_compiled=0)

    def __exit__(self, *exc):
        dit.CPU_MATMUL_ATTENTION_TOKENS.update(self.saved)


def time_generate(model, network, compiled, n, batch, sampler, steps, spacing, cfg=4.0) -> float:
    """Images/s of one bf16 `generate` call of n images through `network` (a `sampling_network`)."""
    y = torch.arange(n) % model.num_classes
    seeds = [image_seed(0, int(c), i) for i, c in enumerate(y)]
    t0 = time.perf_counter()
    generate(model, y, seeds, sampler=sampler, steps=steps, spacing=spacing, cfg_scale=cfg, batch_size=batch,
             precision="bf16", compile=compiled, network=network)
    return n / (time.perf_counter() - t0)


def matmul_rate(dtype, n=2048, reps=10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def forward_flops(model, C, S) -> float:
    x = torch.randn(1, C, S, S)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            model(x, torch.tensor([10]), torch.tensor([0]))
    return float(fc.get_total_flops())


def time_sampling_step(model, batch, precision, cfg=4.0, reps=3) -> float:
    """Seconds per sampling step (one guided network call + the update) for `batch` images."""
    C, S = model.in_channels, model.input_size
    d = Diffusion.respaced(50)
    y = torch.zeros(batch, dtype=torch.long)
    net = Guided(VPDenoiser(model, precision), y, cfg).raw
    x = torch.randn(batch, C, S, S)   # the sampler's state stays fp32
    t = torch.full((batch,), 25, dtype=torch.long)
    with torch.no_grad():
        out = net(x, d.model_t(t))
        mean, logvar, _, _ = d.p_mean_logvar(out, x, t, C)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = net(x, d.model_t(t))
            mean, logvar, _, _ = d.p_mean_logvar(out, x, t, C)
            mean + torch.exp(0.5 * logvar) * torch.randn_like(x)   # the ancestral update's cost
    return (time.perf_counter() - t0) / reps


def time_train_step(model, batch, precision, params, reps=3, pattern=False) -> float:
    """Seconds per training step: the pattern's plain AdamW, or ours (`train.adamw`, fused)."""
    C, S = model.in_channels, model.input_size
    d = Diffusion()
    opt = torch.optim.AdamW(params, lr=1e-4) if pattern else adamw(params, lr=1e-4)
    x0 = torch.randn(batch, C, S, S)
    y = torch.zeros(batch, dtype=torch.long)
    model.train()

    def step():
        t = torch.randint(0, 1000, (batch,))
        with autocast(DEV, precision):
            loss = d.training_losses(model, x0, t, y, torch.randn_like(x0))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    model.eval()
    return (time.perf_counter() - t0) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="dit-t/4,dit-s/4,dit-s/2")
    ap.add_argument("--channels", type=int, default=4, help="4 = SD-VAE latents of 256 px images (32x32x4)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--sample-batch", type=int, default=50, help="images per call, eager rows")
    ap.add_argument("--compiled-batch", type=int, default=16, help="images per call, compiled rows and generate")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd fine-tuning and sampling")
    ap.add_argument("--no-train", action="store_true", help="skip training from scratch (batch --train-batch)")
    ap.add_argument("--solver", default=None, help="SAMPLER:SPACING:STEPS[,...]: also time whole generate calls")
    a = ap.parse_args()
    rows = []
    rate = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    print(f"matmul GFLOP/s: fp32 {rate['fp32'] / 1e9:.0f}, bf16 {rate['bf16'] / 1e9:.0f}", flush=True)
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = build_denoiser(name, a.size, a.channels, 1000, learn_sigma=True).eval()
        fl = forward_flops(model, a.channels, a.size)
        model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
        all_params = list(model.parameters())
        diff = difffit_parameters(model)
        for p in all_params:
            p.requires_grad_(False)
        for p in diff:
            p.requires_grad_(True)
        keys = ["pattern_sample", "ours_sample_fp32", "ours_sample_bf16", "pattern_ft", "ours_ft_bf16"]
        keys += [] if a.no_train else ["train_fp32", "train_bf16"]
        solvers = a.solver.split(",") if a.solver else []
        keys += [f"ours_generate_{s}" for s in ["ddpm:time:50"] + solvers] if solvers else []
        if a.compile:
            keys += ["ours_sample_bf16_compiled", "ours_ft_bf16_compiled"]
            compiled = torch.compile(model)
            compiled_bf16 = sampling_network(model, "bf16", compile=True)
            t0 = time.perf_counter()
            time_train_step(compiled, 8, "bf16", diff, reps=1)
            with frozen_weights():
                time_sampling_step(compiled_bf16, a.compiled_batch, "fp32", reps=1)
            print(f"{name}: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        res = {k: [] for k in keys}
        for _ in range(a.trials):
            # images/s of 50-step sampling = batch / (50 * seconds per step)
            with fused_attention():
                res["pattern_sample"].append(1 / (50 * time_sampling_step(model, 1, "fp32")))
            res["ours_sample_fp32"].append(a.sample_batch / (50 * time_sampling_step(model, a.sample_batch, "fp32")))
            # bf16 sampling runs a bf16 copy of the network, as `generate(precision="bf16")` does
            res["ours_sample_bf16"].append(a.sample_batch / (50 * time_sampling_step(model_bf16, a.sample_batch, "fp32")))
            with fused_attention():
                res["pattern_ft"].append(8 / time_train_step(model, 8, "fp32", diff, pattern=True))
            res["ours_ft_bf16"].append(8 / time_train_step(model, 8, "bf16", diff))
            if a.compile:
                res["ours_ft_bf16_compiled"].append(8 / time_train_step(compiled, 8, "bf16", diff))
                with frozen_weights():
                    res["ours_sample_bf16_compiled"].append(
                        a.compiled_batch / (50 * time_sampling_step(compiled_bf16, a.compiled_batch, "fp32")))
            for spec in (["ddpm:time:50"] + solvers) if solvers else []:
                sampler, spacing, steps = spec.split(":")
                net = compiled_bf16 if a.compile else model_bf16
                res[f"ours_generate_{spec}"].append(time_generate(model, net, a.compile, 3 * a.compiled_batch,
                                                                  a.compiled_batch, sampler, int(steps), spacing))
            if a.no_train:
                continue
            for p in all_params:
                p.requires_grad_(True)
            res["train_fp32"].append(a.train_batch / time_train_step(model, a.train_batch, "fp32", all_params))
            res["train_bf16"].append(a.train_batch / time_train_step(model, a.train_batch, "bf16", all_params))
            for p in all_params:
                p.requires_grad_(False)
            for p in diff:
                p.requires_grad_(True)
        r = {"model": name, "forward_gflop_per_image": fl / 1e9,
             "trainable_difffit": sum(p.numel() for p in diff), "params": sum(p.numel() for p in all_params)}
        for k, v in res.items():
            r[k] = {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v}
        # FLOPs: sampling with guidance = 2 forwards per image per step; training ~ 3 forwards per image
        # (Difffit fine-tuning computes no weight gradients for frozen layers: ~2 forwards).
        for k, per_img, prec in (("ours_sample_bf16", 2 * 50 * fl, "bf16"), ("ours_sample_fp32", 2 * 50 * fl, "fp32"),
                                 ("pattern_sample", 2 * 50 * fl, "fp32"), ("train_bf16", 3 * fl, "bf16"),
                                 ("train_fp32", 3 * fl, "fp32"), ("ours_ft_bf16", 2 * fl, "bf16"),
                                 ("pattern_ft", 2 * fl, "fp32"), ("ours_sample_bf16_compiled", 2 * 50 * fl, "bf16"),
                                 ("ours_ft_bf16_compiled", 2 * fl, "bf16")):
            if k not in r:
                continue
            r[k]["matmul_fraction"] = r[k]["mean"] * per_img / rate[prec]
        gen_keys = [k for k in res if k.startswith("ours_generate_")]
        for k in gen_keys:   # whole generate calls: the sampler's own arithmetic counts against them
            r[k]["matmul_fraction"] = r[k]["mean"] * 2 * int(k.rsplit(":", 1)[1]) * fl / rate["bf16"]
        for ours, base in (("ours_sample_bf16", "pattern_sample"), ("ours_sample_fp32", "pattern_sample"),
                           ("ours_ft_bf16", "pattern_ft"), ("train_bf16", "train_fp32"),
                           ("ours_sample_bf16_compiled", "pattern_sample"), ("ours_ft_bf16_compiled", "pattern_ft"),
                           *((k, "pattern_sample") for k in gen_keys)):
            if ours not in res:
                continue
            ratios = np.array(res[ours]) / np.array(res[base])
            r[f"{ours}/{base}"] = {"mean": float(ratios.mean()), "std": float(ratios.std())}
        rows.append(r)
        print(f"{name}: {fl / 1e9:.2f} GFLOP/fwd; sample img/s pattern {r['pattern_sample']['mean']:.3f}, "
              f"ours fp32 {r['ours_sample_fp32']['mean']:.3f}, bf16 {r['ours_sample_bf16']['mean']:.3f} "
              f"({r['ours_sample_bf16/pattern_sample']['mean']:.2f}x, {100 * r['ours_sample_bf16']['matmul_fraction']:.0f}% "
              f"of bf16 matmul); fine-tune img/s pattern {r['pattern_ft']['mean']:.2f}, ours {r['ours_ft_bf16']['mean']:.2f} "
              f"({r['ours_ft_bf16/pattern_ft']['mean']:.2f}x)", flush=True)
        for k in ("ours_ft_bf16_compiled", "ours_sample_bf16_compiled", "train_fp32", "train_bf16", *gen_keys):
            if k in r:
                ratio = next((f" ({v['mean']:.2f}x {key.split('/')[1]})" for key, v in r.items()
                              if key.startswith(k + "/")), "")
                frac = f", {100 * r[k]['matmul_fraction']:.0f}% of matmul" if "matmul_fraction" in r[k] else ""
                print(f"  {k}: {r[k]['mean']:.3f} img/s{ratio}{frac}", flush=True)
    write_json(a.out, {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                                   "cores": os.cpu_count(), "torch": torch.__version__},
                       "matmul_gflops": {k: v / 1e9 for k, v in rate.items()}, "config": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
