"""Precision chosen by what the machine can do: `resolve_precision("auto", device)` -> "bf16" or "fp32".

On CUDA, bf16 where the device supports it. On a CPU, bf16 only where it is natively fast: many CPUs
(AVX2 only: AMD Zen 3, most laptops) have no bf16 arithmetic, and torch then emulates it ~5-60x slower
than fp32 (BENCHMARKS.md, "Precision chosen by the machine"). Whether a CPU is fast in bf16 is decided
by what it does, not by its name: torch's CPU capability must allow native bf16 at all (on x86, AVX512),
and a micro-benchmark (~0.1 s) times a Linear and a 3x3 convolution of the sizes our U-Nets and
classifiers use, under bf16 autocast and in fp32; bf16 is chosen where it takes at most BF16_MAX_RATIO
of fp32's time. The result is cached in the cache folder (precision.json), keyed by
the CPU model, torch's version, torch's CPU capability and the ISA limits a user may set
(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), so a machine measures itself once per setting.

An explicit "bf16" on a CPU where it is slow runs as asked, with one warning per process that gives the
measured ratio.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
import warnings
from typing import Any

import torch
from torch import nn

from minimaxdd.errors import UserError
from minimaxdd.files import cache_dir, write_json, writing_cache
from minimaxdd.runtime import PRECISIONS, RESOLVED, allocator_line

# ours: bf16 must be clearly faster to be worth its rounding (a tie goes to fp32). On a CPU with native
# bf16 (AMX, AVX512-BF16) oneDNN's bf16 GEMMs run at about 2x fp32's rate or better; emulated, 5-60x slower.
BF16_MAX_RATIO = 0.9
# the environment variables that change which kernels torch and oneDNN use (part of the cache key)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
CACHE_FILE = "precision.json"
CACHE_VERSION = 1

_decided: dict[str, dict] = {}             # this process's measurements, by cache key
_warned: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """torch's CPU capability ("AVX2", "AVX512", "DEFAULT", ...): which vector kernels ATen dispatches to."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:          # torch < 2.1
        return "unknown"


def machine_key() -> str:
    """What the CPU measurement depends on: the CPU, torch, and the ISA limits in the environment."""
    isa = ",".join(f"{v}={os.environ[v]}" for v in ISA_VARIABLES if os.environ.get(v))
    return f"{cpu_model()} | torch {torch.__version__} | {cpu_capability()}" + (f" | {isa}" if isa else "")


def _layers() -> list[tuple[nn.Module, torch.Tensor]]:
    """Layers of the shapes our small models use: a U-Net's 3x3 convolution on 64 channels and a transformer's
    / classifier head's Linear (256 -> 1024). Small enough that a slow bf16 still measures in ~50 ms."""
    g = torch.Generator().manual_seed(0)
    conv, lin = nn.Conv2d(64, 64, 3, padding=1), nn.Linear(256, 1024)
    return [(conv, torch.randn(8, 64, 8, 8, generator=g)), (lin, torch.randn(256, 256, generator=g))]


def measure_cpu(reps: int = 5) -> dict:
    """Milliseconds per forward of the layers of `_layers` in fp32 and under bf16 autocast on this CPU: the
    fastest of `reps` calls of each, interleaved so that a load from another process weighs on both alike."""
    layers = _layers()

    def call(precision: str) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for layer, x in layers:
                layer(x)

    best = {"fp32": float("inf"), "bf16": float("inf")}
    for p in best:
        call(p)                                   # kernel selection and JIT, untimed
    for _ in range(reps):
        for p in best:
            t = time.perf_counter()
            call(p)
            best[p] = min(best[p], time.perf_counter() - t)
    fp32, bf16 = best["fp32"], best["bf16"]
    return {"fp32_ms": round(fp32 * 1e3, 3), "bf16_ms": round(bf16 * 1e3, 3), "ratio": round(bf16 / fp32, 3)}


def bf16_possible(capability: str, machine: str | None = None) -> bool:
    """Whether the CPU can have native bf16 at all. On x86, bf16 arithmetic (AVX512-BF16, AMX) comes only with
    AVX-512, so torch's capability must say AVX512; a CPU at AVX2 (or limited to it by ATEN_CPU_CAPABILITY)
    emulates bf16, and a noisy measurement must not choose it. Other architectures: the measurement decides."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return capability.upper().startswith("AVX512")
    return True


def decide(measured: dict, capability: str | None = None) -> str:
    """bf16 where the CPU can have it natively and it took at most BF16_MAX_RATIO of fp32's time, else fp32."""
    if capability is not None and not bf16_possible(capability):
        return "fp32"
    return "bf16" if measured["bf16_ms"] <= BF16_MAX_RATIO * measured["fp32_ms"] else "fp32"


def _cache_path() -> Any:
    return cache_dir() / CACHE_FILE


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def cpu_choice(remeasure: bool = False) -> dict:
    """This CPU's measurement and choice: {choice, fp32_ms, bf16_ms, ratio, capability, cpu, measured}, from
    this process's memory, else the cache folder, else measured now by `measure_cpu` (and cached);
    `remeasure`: measured now."""
    key = machine_key()
    if key in _decided and not remeasure:
        return _decided[key]
    cached = None if remeasure else _read_cache().get("machines", {}).get(key)
    if isinstance(cached, dict) and cached.get("choice") in RESOLVED:
        _decided[key] = {**cached, "cached": True}
        return _decided[key]
    rec = {**measure_cpu(), "cpu": cpu_model(), "capability": cpu_capability(), "torch": torch.__version__,
           "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rec["choice"] = decide(rec, rec["capability"])
    data = _read_cache()
    machines = {**data.get("machines", {}), key: rec}
    with writing_cache(_cache_path()):     # a read-only cache costs a re-measure next time, nothing else
        write_json(_cache_path(), {"version": CACHE_VERSION, "machines": machines})
    _decided[key] = {**rec, "cached": False}
    return _decided[key]


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision a stage runs in: "fp32" or "bf16". "auto" asks the machine (see the module's doc);
    an explicit "bf16" on a CPU where bf16 is slow is kept, with one warning giving the measured ratio."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
                        f"(auto: bf16 where this machine runs it fast, else fp32)")
    dev = torch.device(device)
    if dev.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if native else "fp32"
        if precision == "bf16" and not native and str(dev) not in _warned:
            _warned.add(str(dev))
            warnings.warn(f"precision bf16 was asked for, but {dev} does not support bf16 natively; the run will be "
                          f"slow or fail. Use precision auto (or fp32) on this GPU.", stacklevel=2)
        return precision
    if dev.type != "cpu":
        return "fp32" if precision == "auto" else precision
    if precision == "fp32":
        return "fp32"
    c = cpu_choice()
    if precision == "auto":
        return c["choice"]
    if c["choice"] != "bf16" and machine_key() not in _warned:
        _warned.add(machine_key())
        why = (f"a bf16 layer took {c['ratio']:.1f}x the time of fp32 when measured" if c["ratio"] > 1 else
               "bf16 arithmetic needs AVX-512 on x86, and bf16 is emulated below it")
        warnings.warn(f"precision bf16 was asked for, but this CPU ({c['cpu']}, torch capability {c['capability']}) "
                      f"has no fast bf16: {why}; the run will be slow. Use precision auto (or fp32) on this machine.",
                      stacklevel=2)
    return precision


def describe_precision(requested: str, used: str, device: torch.device | str) -> dict:
    """What manifests record about precision: asked, used, and on a CPU the measurement behind the choice."""
    out: dict[str, Any] = {"precision_requested": requested, "precision": used}
    dev = torch.device(device)
    if dev.type == "cpu" and requested != "fp32":
        c = cpu_choice()
        out["precision_measurement"] = {k: c[k] for k in ("cpu", "capability", "fp32_ms", "bf16_ms", "ratio")}
    return out


def _speed(c: dict) -> str:
    """A measurement's bf16 speed in words: '9.1x the time of fp32' or '2.0x faster than fp32'."""
    return f"{c['ratio']:.1f}x the time of fp32" if c["ratio"] >= 1 else f"{1 / c['ratio']:.1f}x faster than fp32"


def auto_reason(device: torch.device | str) -> str:
    """Why `auto` chose what it did on `device`: 'auto: bf16 measured at 9.1x the time of fp32 on this CPU, AVX2'."""
    dev = torch.device(device)
    if dev.type == "cpu":
        c = cpu_choice()
        return f"auto: bf16 measured at {_speed(c)} on this CPU, {c['capability']}"
    return f"auto on {dev.type}"


def precision_line(requested: str, used: str, device: torch.device | str) -> str:
    """One line for a stage's start: 'precision fp32 (auto: bf16 measured at 9.1x the time of fp32 ...)'."""
    return f"precision {used}" + (f" ({auto_reason(device)})" if requested == "auto" else "")


def machine_report(remeasure: bool = False) -> str:
    """`minimaxdd machine`: the CPU, its bf16 measurement, what auto picks here, and how to check the AVX2 path."""
    c = cpu_choice(remeasure=remeasure)
    lines = [f"CPU: {c['cpu']}; torch {torch.__version__}, CPU capability {c['capability']}, "
             f"{torch.get_num_threads()} threads",
             f"bf16 autocast against fp32 on a U-Net convolution and a Linear: {c['bf16_ms']:.2f} ms against "
             f"{c['fp32_ms']:.2f} ms ({_speed(c)}; measured {c['measured']}"
             + (", from the cache" if c.get("cached") else "") + ")",
             f"precision auto on the CPU: {c['choice']} (bf16 where it takes at most {BF16_MAX_RATIO:g} of fp32's "
             f"time); cache: {_cache_path()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}: {torch.cuda.get_device_name(i)}; precision auto: "
                         f"{resolve_precision('auto', f'cuda:{i}')}")
    lines.append(allocator_line())
    isa = [v for v in ISA_VARIABLES if os.environ.get(v)]
    lines.append(f"kernels limited by {', '.join(f'{v}={os.environ[v]}' for v in isa)}" if isa else
                 "to see a CPU without native bf16 on this one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
                 "minimaxdd machine")
    return "\n".join(lines)
