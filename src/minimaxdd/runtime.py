"""Runtime: device choice, precision (autocast), seeded generators and progress bars.

The diffusion side, training and evaluation all use these without importing one another."""
from __future__ import annotations

import ctypes
import getpass
import os
import re
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

from minimaxdd import distributed as dist
from minimaxdd.errors import UserError


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed`: every random draw in the package comes from one."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# ours: where stderr is a log file rather than a terminal, a progress line every tenth of the run or every
# 30 s, whichever comes first (a redrawn bar would write a line per update, joined by carriage returns)
LOG_LINE_FRACTION = 0.1
LOG_LINE_SECONDS = 30.0


class LogLines(std_tqdm):
    """tqdm for logs: whole lines, each a snapshot of the bar, at the start, every LOG_LINE_FRACTION of the
    total or LOG_LINE_SECONDS, and at the end; no carriage returns, no clearing."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:                 # tqdm clearing or overriding the line: nothing to do in a log
            return True
        now, last = time.time(), getattr(self, "_line_at", None)
        if last is not None:
            step = self.total * LOG_LINE_FRACTION if self.total else float("inf")
            if now - last[0] < LOG_LINE_SECONDS and self.n - last[1] < step and self.n != self.total:
                return True
            if self.n == last[1]:
                return True
        self._line()
        return True

    def _line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._line_at = (time.time(), self.n)

    def close(self) -> None:
        if self.disable:
            return
        if getattr(self, "_line_at", (0, None))[1] != self.n:
            self._line()                    # where it stopped, if not said yet
        self.disable = True
        self._decr_instances(self)


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", leave: bool = False,
             **kw: Any) -> tqdm:
    """A tqdm bar on stderr, or plain lines now and then (`LogLines`) where stderr is not a terminal; silent
    when MINIMAXDD_QUIET=1 (tests, benchmarks) and on ranks other than 0."""
    disable = os.environ.get("MINIMAXDD_QUIET") == "1" or not dist.is_main()
    if disable or _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, leave=leave, disable=disable, dynamic_ncols=True, **kw)
    return LogLines(iterable, total=total, desc=desc, leave=leave, file=sys.stderr, mininterval=1.0, ascii=True,
                    **kw)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but torch.cuda.is_available() is False; use --device cpu")
    return dev


PRECISIONS = ("auto", "fp32", "bf16")      # what a config may say; "auto" is resolved by minimaxdd.precision
RESOLVED = ("fp32", "bf16")                # what a stage runs in


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on `device`'s type for precision "bf16"; a no-op context for "fp32". "auto" must have been
    resolved first (`minimaxdd.precision.resolve_precision`), so that what runs is what gets recorded."""
    if precision not in RESOLVED:
        raise UserError(f"autocast needs a resolved precision ({' or '.join(RESOLVED)}), got {precision!r}"
                        + ("; resolve it with minimaxdd.precision.resolve_precision" if precision == "auto" else ""))
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def agree_precision(precision: str, device: torch.device) -> str:
    """Under torchrun, one precision for every process (call it on all of them): fp32 if any resolved to fp32."""
    if dist.world() > 1:
        return "fp32" if dist.any_flag(precision != "bf16", device) else "bf16"
    return precision


# glibc's malloc serves each block above its mmap threshold (at most 32 MB) with a fresh mmap and returns it to the
# kernel on free, so a training step that frees and reallocates its 40-130 MB feature maps faults every 4 KB page
# in again each step: about 106,000 faults and 0.19 s of kernel time per ConvNet-3 step at batch 256 on a 2-core
# AMD EPYC. Kept, the step is 1.31x faster in bf16 and 1.57x in fp32 on AVX2 kernels; a bare U-Net step at batch
# 128 gains nothing, the Fashion-MNIST base stage 1.12x (benchmarks/allocator.py, BENCHMARKS.md "Freed memory
# kept"). mallopt's parameters (malloc.h):
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_TRIM_BYTES = 1 << 30           # ours: keep up to 1 GiB of freed heap top instead of trimming it back
ALLOCATOR_VARIABLE = "MINIMAXDD_MALLOC"   # "system": leave the C allocator as the platform set it
_allocator = {"kept": False}


def keep_freed_memory() -> bool:
    """On Linux with glibc, serve large blocks from the heap and keep freed memory for reuse (mallopt
    M_MMAP_MAX 0, M_TRIM_THRESHOLD 1 GiB) instead of mapping and unmapping each one, so that a training step
    reuses its pages instead of faulting them in again. Process-wide and one-way; the command line calls it
    at start. The cost: the process's resident memory stays near its peak. Returns whether it applied: not
    with $MINIMAXDD_MALLOC=system, on another platform or C library, or where mallopt refuses."""
    if os.environ.get(ALLOCATOR_VARIABLE, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):    # glibc only: musl has no mallopt tunables of this kind
            return False
    except OSError:
        return False
    kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_BYTES))
    _allocator["kept"] = _allocator["kept"] or kept
    return kept


def allocator_line() -> str:
    """One line for `minimaxdd machine`: whether this process keeps freed memory (keep_freed_memory)."""
    if _allocator["kept"]:
        return (f"memory: freed blocks kept for reuse (glibc mallopt; {ALLOCATOR_VARIABLE}=system leaves the "
                "allocator as it was)")
    why = (f"{ALLOCATOR_VARIABLE}=system" if os.environ.get(ALLOCATOR_VARIABLE, "").lower() == "system"
           else "not glibc on Linux, or not asked")
    return f"memory: the C allocator as the platform set it ({why})"


def flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU. Zero-initialised layers drift through denormal values
    early in training, and x86 handles those ~50x slower (measured on a U-Net step in fp32, issue 18);
    results differ only below float32's normal range."""
    torch.set_flush_denormal(True)


INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def inductor_default_cache_dir() -> str:
    """Inductor's default cache directory. Torch keeps the function that names it in an internal module; should a
    later torch move it, the same rule is applied here (torch 2.13.0's: `torchinductor_<user>` in the temporary
    directory), so that compiling never fails on an import."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return default_cache_dir()


def compile_module(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile(model), with inductor's on-disk cache kept apart per CPU instruction set.

    Inductor picks the vector instructions of its CPU kernels from `ATEN_CPU_CAPABILITY` (the check of the
    AVX2-only path sets it), but one cache directory serves every setting: measured on torch 2.13.0, a
    ConvNet-3 trained under `ATEN_CPU_CAPABILITY=avx2` after a run without it came out NaN, and a plain run
    after an AVX2 one aborted in malloc; with the caches kept apart both match eager (within 1e-4). So, unless
    the user chose the cache directory, each capability gets its own beneath torch's default (torch itself
    writes its default into the variable once any of its caches is used: that value counts as not chosen)."""
    default = inductor_default_cache_dir()
    if os.environ.get(INDUCTOR_CACHE_VARIABLE, default) == default:
        os.environ[INDUCTOR_CACHE_VARIABLE] = os.path.join(
            default, f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}")
    return torch.compile(model)
