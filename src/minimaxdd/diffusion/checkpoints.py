"""Checkpoints: safetensors with the weights and a JSON header that says how to rebuild the model.

A checkpoint `RUN/ckpt-00001000.safetensors` holds `model.*` (raw) and `ema.*` weights; its
metadata key "minimaxdd" is JSON with the model config, the codec, class names, the class map
(dataset label -> network class index), the step and the training config. The optimizer state for
`--resume` sits beside it in `ckpt-00001000.optim.pt` (tensors only, weights_only-loadable).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd.diffusion.networks import build_from_config
from minimaxdd.diffusion.weights import load_state_strict
from minimaxdd.errors import UserError
from minimaxdd.files import save_atomic

FORMAT = 1   # ours: the version of the metadata layout below; a reader refuses any other
_CKPT = re.compile(r"ckpt-(\d+)\.safetensors$")


@dataclass
class CheckpointMeta:
    model: dict                      # denoiser config dict ({"arch": ..., ...})
    codec: str                       # "pixel" or "vae:DIR"
    class_names: list[str]
    class_map: list[int]             # dataset label i is network class class_map[i]
    image_size: int
    channels: int
    step: int = 0
    data: str | None = None
    extra: dict = field(default_factory=dict)   # training config, objective, losses, ...
    formulation: str = "ddpm"        # a key of diffusion.formulations.FORMULATIONS (older checkpoints: ddpm)

    def to_json(self) -> str:
        """The metadata as the JSON string stored in the safetensors header."""
        return json.dumps({"format": FORMAT, **self.__dict__})

    @classmethod
    def from_json(cls, s: str, source: str) -> "CheckpointMeta":
        """Parse the header JSON of `source`; a format other than FORMAT is a UserError."""
        d = json.loads(s)
        if d.pop("format", None) != FORMAT:
            raise UserError(f"{source}: unknown checkpoint format; it was written by another minimaxdd version")
        return cls(**d)


def ckpt_path(run: Path, step: int) -> Path:
    """RUN/ckpt-<step, 8 digits>.safetensors."""
    return Path(run) / f"ckpt-{step:08d}.safetensors"


def list_checkpoints(run: str | Path) -> list[Path]:
    """The checkpoints of a run directory, by step."""
    run = Path(run)
    return sorted((p for p in run.glob("ckpt-*.safetensors") if _CKPT.search(p.name)),
                  key=lambda p: int(_CKPT.search(p.name).group(1)))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path} has no ckpt-*.safetensors; train into it first or name a checkpoint file")
        return found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def save(path: Path, model: nn.Module, ema: nn.Module | None, meta: CheckpointMeta,
         optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write atomically (temporary name, then rename); the optimizer file first, the weights last."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:
        save_atomic(optimizer.state_dict(), path.with_suffix(".optim.pt"))
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"minimaxdd": meta.to_json()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint (or a run's latest), without loading its tensors."""
    from safetensors import safe_open

    path = resolve(path)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    if "minimaxdd" not in md:
        raise UserError(f"{path} is a safetensors file without minimaxdd metadata; "
                        "official DiT weights load through `finetune --ckpt`")
    return CheckpointMeta.from_json(md["minimaxdd"], str(path))


def load(path: str | Path, weights: str = "ema",
         device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from a checkpoint (or a run's latest) with its `ema` or raw `model` weights."""
    from safetensors.torch import load_file

    path = resolve(path)
    meta = read_meta(path)
    tensors = load_file(str(path))
    prefix = f"{weights}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        have = sorted({k.split(".")[0] for k in tensors})
        raise UserError(f"{path} has no {weights!r} weights (it has: {', '.join(have)})")
    model = build_from_config(meta.model)
    load_state_strict(model, state, f"{path} ({weights})")
    return model.to(device), meta


def load_pair(path: Path, model: nn.Module, ema: nn.Module) -> None:
    """Load both raw and EMA weights into existing modules (for --resume)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for prefix, m in (("model.", model), ("ema.", ema)):
        load_state_strict(m, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, str(path))
