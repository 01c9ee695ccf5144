"""Regenerate a synthetic set from its checkpoint and seed and compare the bytes with the set on disk.

A set written by `minimaxdd sample` or a `distill` run's sample stage carries, in its manifest.json, the
checkpoint, the seed and the sampling settings; this samples them again with the code checked out now and
reports whether every image is byte-identical (and, if not, how many pixels differ and by how much).

    python benchmarks/regenerate.py runs/demo-fp32/sample/ipc10 [more sets ...] --out benchmarks/results/regenerate.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
from pathlib import Path

import torch

from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint
from minimaxdd.files import write_json

SETTINGS = {f.name for f in dataclasses.fields(SampleConfig)}


def regenerate(path: Path) -> dict:
    """Sample the set at `path` again from its manifest; compare the uint8 images with those on disk."""
    man = json.loads((path / "manifest.json").read_text())
    cfg = {k: v for k, v in man["config"].items()
           if k in SETTINGS and k not in ("ckpt", "out", "ipc", "seed", "device", "overwrite")}
    old = load_synthetic(path)
    ipc = int(torch.bincount(old.labels).max())
    new, info = sample_checkpoint(SampleConfig(**cfg, ckpt=man["checkpoint"], out="-", ipc=ipc, seed=man["seed"],
                                               device="cpu"))
    same_labels = torch.equal(new.labels, old.labels)
    diff = (new.images.int() - old.images.int()).abs() if new.images.shape == old.images.shape else None
    return {"set": str(path), "checkpoint": man["checkpoint"], "sampler": info["sampler"],
            "written_by_commit": man.get("git_commit"), "images": len(old.images),
            "identical": bool(same_labels and diff is not None and not diff.any()),
            "pixels_differing": None if diff is None else int((diff > 0).sum()),
            "max_level_difference": None if diff is None else int(diff.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = [regenerate(p) for p in a.sets]
    for r in rows:
        print(f"{r['set']}: {'identical' if r['identical'] else 'DIFFERENT'} ({r['images']} images, {r['sampler']}, "
              f"{r['pixels_differing']} pixels differ)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if a.out:
        write_json(a.out, {"command": "python benchmarks/regenerate.py " + " ".join(map(str, a.sets)),
                           "commit": commit, "cpu": platform.processor() or platform.machine(), "rows": rows})


if __name__ == "__main__":
    main()
