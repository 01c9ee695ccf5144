"""Files: the cache folder, manifests (what made an artifact) and atomic writes of JSON, tensors and folders.

Seeded generators, devices and progress bars live in `minimaxdd.runtime`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from minimaxdd.errors import UserError


def cache_dir() -> Path:
    """Where decoded datasets and cached feature extractors live.

    $MINIMAXDD_CACHE, else $XDG_CACHE_HOME/minimaxdd, else ~/.cache/minimaxdd.
    """
    root = os.environ.get("MINIMAXDD_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "minimaxdd"


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(config: dict[str, Any], seed: int | None, wall_time_s: float, **extra: Any) -> dict[str, Any]:
    """What made an artifact: the command line, config, seed, git commit and wall time."""
    return {
        "command": " ".join(sys.argv),
        "config": config,
        "seed": seed,
        "git_commit": git_commit(),
        "wall_time_s": round(wall_time_s, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        **extra,
    }


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to `path` via a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `out` only when complete.

    An existing `out` is an error unless `overwrite`, in which case it is replaced only
    after the new one is fully written, so a failure never loses what was there.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(out.name + ".old-" + tmp.name.rsplit("-", 1)[-1])
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
