"""Precision chosen by the machine (issue 27): the CPU's GEMM rates, the `auto` decision, the unet-s training rate
and the digits preset end to end, natively and with the kernels limited to AVX2 (a CPU without native bf16).

    # GEMM rates, auto's decision and its cost, unet-s / unet-xs img/s in fp32 and bf16, under both kernel settings
    python benchmarks/precision.py rates --out benchmarks/results/precision-rates.json
    # `make demo`'s job end to end (a fresh cache folder: the reference classifier and the measurement included)
    python benchmarks/precision.py demo --setting avx2 --precision auto --out benchmarks/results/demo-avx2-auto.json

Every measurement runs in a child process with the setting's environment (ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 for `avx2`, nothing for `native`), because torch and oneDNN read them once, at start.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
PRECISION_KEYS = ("base.train", "finetune", "sample", "evaluate", "evaluate.dm")

CHILD_RATES = r"""
import json, sys, tempfile, time, os
import torch
torch.set_flush_denormal(True)
os.environ["MINIMAXDD_CACHE"] = tempfile.mkdtemp()
sys.path.insert(0, sys.argv[1])
from unet_speed import matmul_rate, train_flops, time_variant
from minimaxdd import precision as P

t = time.perf_counter()
choice = P.resolve_precision("auto", "cpu")
decide_s = time.perf_counter() - t
gemm = {"fp32": matmul_rate(torch.float32, 1024, 2.0), "bf16": matmul_rate(torch.bfloat16, 512, 2.0)}
models = {}
for spec in sys.argv[3].split(","):
    name, batch = spec.split(":")

    class A:   # unet_speed's arguments at the digits shape (1x8x8, 10 classes)
        model, size, channels, classes, batch, steps, warmup = name, 8, 1, 10, int(batch), int(sys.argv[2]), 2
    fwd, train = train_flops(A)
    rates = {"batch": A.batch, "train_flops_per_image": train}
    for p in ("fp32", "bf16"):
        ips, warm = time_variant(A, p, False, False)
        rates[p] = {"images_per_s": ips, "share_of_gemm": ips * train / gemm[p]}
    models[name] = rates
print(json.dumps({"cpu": P.cpu_model(), "capability": P.cpu_capability(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "gemm_flop_per_s": gemm, "auto": choice, "decide_s": decide_s,
                  "measurement": {k: v for k, v in P.cpu_choice().items() if k in ("fp32_ms", "bf16_ms", "ratio")},
                  "models": models}))
"""


def child_env(setting: str, cache: str | None = None) -> dict:
    env = {**os.environ, **SETTINGS[setting], "MINIMAXDD_QUIET": "1"}
    for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if v not in SETTINGS[setting]:
            env.pop(v, None)
    if cache:
        env["MINIMAXDD_CACHE"] = cache
    return env


def rates(a: argparse.Namespace) -> dict:
    out = {}
    for s in a.settings.split(","):
        r = subprocess.run([sys.executable, "-c", CHILD_RATES, str(ROOT / "benchmarks"), str(a.steps), a.models],
                           env=child_env(s), capture_output=True, text=True, check=True)
        out[s] = m = json.loads(r.stdout.strip().splitlines()[-1])
        g = m["gemm_flop_per_s"]
        print(f"{s}: {m['cpu']} ({m['capability']}, {m['threads']} threads): GEMM fp32 {g['fp32'] / 1e9:.1f}, bf16 "
              f"{g['bf16'] / 1e9:.1f} GFLOP/s; auto -> {m['auto']} in {m['decide_s']:.2f} s (bf16 "
              f"{m['measurement']['ratio']:.1f}x fp32's time)", flush=True)
        for name, u in m["models"].items():
            print(f"  {name} batch {u['batch']}: fp32 {u['fp32']['images_per_s']:.0f} img/s "
                  f"({u['fp32']['share_of_gemm']:.0%} of the fp32 GEMM), bf16 {u['bf16']['images_per_s']:.1f} img/s "
                  f"({u['bf16']['share_of_gemm']:.0%} of the bf16 GEMM)", flush=True)
    return {"command": " ".join(sys.argv), "settings": out}


def demo(a: argparse.Namespace) -> dict:
    """The digits preset with no flags (auto), or with every precision forced; stage times from stage.json."""
    run = Path(tempfile.mkdtemp()) / "demo"
    cache = tempfile.mkdtemp()
    cli = str(Path(sys.executable).with_name("minimaxdd"))
    if a.precision == "auto":
        cmd = [cli, "demo", "--out", str(run)]
    else:
        cmd = [cli, "distill", "--preset", "digits", "--out", str(run)]
        for k in PRECISION_KEYS:
            cmd += ["--set", f"{k}.precision={a.precision}"]
    t0 = time.time()
    subprocess.run(cmd, env=child_env(a.setting, cache), check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    stages = {}
    for f in sorted(run.glob("*/stage.json")):
        d = json.loads(f.read_text())
        stages[f.parent.name] = d.get("time_s")
    rows = json.loads((run / "results.json").read_text())
    evaluate = sum(json.loads(f.read_text())["time_s"] for f in (run / "evaluate").glob("*.json"))
    machine = json.loads((Path(cache) / "precision.json").read_text())["machines"]
    res = {"command": " ".join(sys.argv), "setting": a.setting, "env": SETTINGS[a.setting], "precision": a.precision,
           "wall_s": round(wall, 1), "stages_s": {**stages, "evaluate": round(evaluate, 1)},
           "precision_used": json.loads((run / "config.json").read_text())["precision_used"],
           "machine": next(iter(machine.values())),
           "rows": [{k: r[k] for k in ("method", "ipc", "mean", "std", "runs")} for r in rows]}
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rates")
    p.add_argument("--settings", default="native,avx2")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per model and precision")
    p.add_argument("--models", default="unet-s:128,unet-xs:64", help="MODEL:BATCH,... (the digits preset: unet-xs:64)")
    p.add_argument("--out")
    p = sub.add_parser("demo")
    p.add_argument("--setting", choices=tuple(SETTINGS), default="native")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--out")
    a = ap.parse_args()
    res = rates(a) if a.what == "rates" else demo(a)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
