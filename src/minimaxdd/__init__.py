"""minimaxdd: dataset distillation with diffusion models, and the protocol that measures it.

The public API, importable from the package root (each loaded on first use, so `import minimaxdd` stays light):

- `distill(cfg, out, from_stage=None)`: run (or resume) every stage of a distillation into the folder `out`;
  `cfg` is a `minimaxdd.pipeline.config.DistillConfig`, e.g. `build_config(load_distill_preset("digits"), {})`.
  Returns the result rows (one per set, classifier and protocol). The CLI's `minimaxdd distill`.
- `sample_checkpoint(cfg)`: IPC images per class from a checkpoint (`cfg` a
  `minimaxdd.diffusion.generation.SampleConfig`); returns (SyntheticSet, info). The CLI's `minimaxdd sample`.
- `evaluate_set(x_train, y_train, x_test, y_test, num_classes, ...)`: train classifiers on uint8 images
  (N, C, H, W) under an evaluation protocol and test them on the real test set; returns an `EvalResult`
  (final-epoch accuracy, mean and std over repeats). The core of `minimaxdd evaluate`.
- `minimax_loss(x0_hat, labels, real, pred, objective, lambda_r, lambda_d)`: the Minimax criteria (Gu et al.,
  CVPR 2024, Eqs. 3-4) one fine-tuning batch adds to the diffusion loss, against per-class memories
  (`minimaxdd.training.minimax.ClassMemory`); returns (loss, {"rep", "div"}).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it; imported on first access (PEP 562), not with the package
_API = {
    "distill": "minimaxdd.pipeline.distill",
    "sample_checkpoint": "minimaxdd.diffusion.generation",
    "evaluate_set": "minimaxdd.evaluation.train_test",
    "minimax_loss": "minimaxdd.training.minimax",
}
__all__ = ["__version__", "distill", "evaluate_set", "minimax_loss", "sample_checkpoint"]

if TYPE_CHECKING:
    from minimaxdd.diffusion.generation import sample_checkpoint
    from minimaxdd.evaluation.train_test import evaluate_set
    from minimaxdd.pipeline.distill import distill
    from minimaxdd.training.minimax import minimax_loss


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value            # later accesses skip this function
        return value
    raise AttributeError(f"module 'minimaxdd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
