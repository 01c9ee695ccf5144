"""Runtime: device choice, precision (autocast), seeded generators and progress bars.

The diffusion side, training and evaluation all use these without importing one another."""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from minimaxdd import distributed as dist
from minimaxdd.errors import UserError


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed`: every random draw in the package comes from one."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", leave: bool = False,
             **kw: Any) -> tqdm:
    """A tqdm bar on stderr; silent when MINIMAXDD_QUIET=1 (tests, benchmarks) and on ranks other than 0."""
    disable = os.environ.get("MINIMAXDD_QUIET") == "1" or not dist.is_main()
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable, dynamic_ncols=True, **kw)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but torch.cuda.is_available() is False; use --device cpu")
    return dev


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on `device`'s type for precision "bf16"; a no-op context for "fp32"."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU. Zero-initialised layers drift through denormal values
    early in training, and x86 handles those ~50x slower (measured on a U-Net step in fp32, issue 18);
    results differ only below float32's normal range."""
    torch.set_flush_denormal(True)
