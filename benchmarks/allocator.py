"""Training steps with glibc's malloc as it comes against `runtime.keep_freed_memory` (freed blocks kept).

Each measurement is a fresh child process (the allocator setting is process-wide and one-way), alternating
the two modes trial by trial so that drift of a noisy machine falls on both. Per workload and mode: images/s
over --steps timed steps after --warmup, minor page faults per step and kernel (system) seconds per step, from
getrusage over the timed steps. Workloads, at the precision `auto` picks on this machine:
  convnet3-100   ConvNet-3 `dc` training step at batch 100 (an IPC-10 set of 10 classes: one batch per epoch)
  convnet3-256   the same at batch 256 (the protocol's batch, an IPC-50 set)
  unet-s-128     the Fashion-MNIST base's training step: unet-s, 28 px grey, EDM's loss, batch 128

    python benchmarks/allocator.py --out benchmarks/results/allocator.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/allocator.py --out .../allocator-avx2.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("convnet3-100", "convnet3-256", "unet-s-128")
MODES = ("system", "kept")


def _step_fn(workload: str, precision: str):
    """A closure running one training step of `workload`, and its batch size."""
    import torch

    from minimaxdd.runtime import autocast, generator
    cpu = torch.device("cpu")
    if workload.startswith("convnet3"):
        from minimaxdd.evaluation import train_test as tt
        from minimaxdd.evaluation.classifiers import build_model
        from minimaxdd.evaluation.protocols import PROTOCOLS, for_classes
        n = int(workload.split("-")[1])
        p = for_classes(PROTOCOLS["dc"], 10)
        g = generator(0, cpu)
        x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        torch.manual_seed(0)
        net = build_model("convnet3", 1, 10, 28)
        run = tt._Run(net, tt.make_optimizer(net, p), tt._augment_fn(p, None), p, g, cpu, precision)

        def step() -> None:          # one batch of the evaluation's own loop (train_test._train_epoch)
            loss, _ = tt._batch_loss(run, run.aug(x, g), y)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
        return step, n
    sys.path.insert(0, str(Path(__file__).parent))
    from minimaxdd.diffusion.networks import build_denoiser
    from unet_speed import batch, edm_loss
    n = int(workload.split("-")[-1])
    torch.manual_seed(0)
    model = build_denoiser("unet-s", 28, 1, 10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch(model, n, False)
    g = torch.Generator().manual_seed(1)

    def ustep() -> None:
        with autocast(cpu, precision):
            loss = edm_loss(model, x, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ustep, n


def child(workload: str, mode: str, warmup: int, steps: int) -> dict:
    """One measurement in this process: the allocator set by `mode`, then timed steps."""
    import torch

    from minimaxdd.precision import resolve_precision
    from minimaxdd.runtime import flush_denormals, keep_freed_memory
    flush_denormals()
    kept = keep_freed_memory() if mode == "kept" else False
    precision = resolve_precision("auto", torch.device("cpu"))
    step, n = _step_fn(workload, precision)
    for _ in range(warmup):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"workload": workload, "mode": mode, "applied": kept, "precision": precision,
            "images_per_s": n * steps / dt, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
            "system_s_per_step": (r1.ru_stime - r0.ru_stime) / steps, "wall_s_per_step": dt / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.warmup, a.steps)))
        return
    import torch

    from minimaxdd.files import write_json
    from minimaxdd.precision import cpu_choice
    runs = []
    for w in a.workloads.split(","):
        for t in range(a.trials):
            for mode in (MODES if t % 2 == 0 else MODES[::-1]):   # alternate which mode goes first
                out = subprocess.run([sys.executable, __file__, "--child", w, mode, "--warmup", str(a.warmup),
                                      "--steps", str(a.steps)], capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(runs[-1], flush=True)
    c = cpu_choice()
    summary = {}
    for w in a.workloads.split(","):
        by = {m: [r for r in runs if r["workload"] == w and r["mode"] == m] for m in MODES}
        ratio = [k["images_per_s"] / s["images_per_s"] for s, k in zip(by["system"], by["kept"])]
        summary[w] = {m: {"images_per_s": statistics.fmean(r["images_per_s"] for r in by[m]),
                          "faults_per_step": statistics.fmean(r["faults_per_step"] for r in by[m]),
                          "system_s_per_step": statistics.fmean(r["system_s_per_step"] for r in by[m])}
                      for m in MODES}
        summary[w]["speedup"] = {"mean": statistics.fmean(ratio), "std": statistics.pstdev(ratio),
                                 "pairs": ratio}
        s, k = summary[w]["system"], summary[w]["kept"]
        print(f"{w}: {s['images_per_s']:.0f} -> {k['images_per_s']:.0f} img/s, "
              f"{statistics.fmean(ratio):.2f} +- {statistics.pstdev(ratio):.2f}x; faults/step "
              f"{s['faults_per_step']:.0f} -> {k['faults_per_step']:.0f}; kernel s/step "
              f"{s['system_s_per_step']:.3f} -> {k['system_s_per_step']:.3f}")
    if a.out:
        write_json(a.out, {
            "machine": {"cpu": c["cpu"], "capability": c["capability"], "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "platform": platform.platform(),
                        "bf16_ms": c["bf16_ms"], "fp32_ms": c["fp32_ms"], "auto": c["choice"]},
            "trials": a.trials, "warmup": a.warmup, "steps": a.steps, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
