"""`make demo`: the embedded default, the `digits` distill preset (scikit-learn's digits ship with
scikit-learn, so it runs anywhere): a small U-Net trained from scratch under EDM, Minimax fine-tuning,
10 images per class, and ConvNet-3 accuracy of that set next to random, herding, k-center and the full data.
"""
from __future__ import annotations

from pathlib import Path

from minimaxdd.evaluation.runner import format_table
from minimaxdd.pipeline.config import build_config, load_distill_preset
from minimaxdd.pipeline.distill import distill


def demo(out: str | Path = "runs/demo", repeats: int | None = None, device: str = "auto") -> list[dict]:
    """`distill --preset digits` into `out`, then the accuracy table."""
    over: dict = {"device": device}
    if repeats is not None:
        over["evaluate"] = {"repeats": repeats}
    rows = distill(build_config(load_distill_preset("digits"), over), out)
    print("\ndigits (1347 train / 450 test, 8x8 grey), 10 images per class; ConvNet-3, dc protocol (shortened), "
          "final-epoch test accuracy:")
    print(format_table(rows))
    print(f"\nreport: {Path(out) / 'report.md'}")
    return rows
