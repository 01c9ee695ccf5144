"""A training run's folder (`--out`): made ready for a new run, an --overwrite or a --resume (prepare, open),
cleaned after a new run that failed before its first checkpoint (discard), and the files beside a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from minimaxdd import distributed as dist
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.errors import UserError
from minimaxdd.files import json_dict, written_by_us
from minimaxdd.runtime import RESOLVED
from minimaxdd.training.config import LoopConfig


def delete_checkpoint(path: Path) -> None:
    """A checkpoint with its optimiser state and every rank's stage state."""
    path.unlink()
    path.with_suffix(".optim.pt").unlink(missing_ok=True)
    for f in path.parent.glob(path.stem + ".state*.pt"):
        f.unlink()


def state_path(ckpt_file: Path, rank: int) -> Path:
    """Where rank `rank` keeps its stage state (the Minimax memories) beside checkpoint `ckpt_file`."""
    return ckpt_file.with_suffix(f".state{rank}.pt")


def prepare_run(cfg: LoopConfig) -> Path | None:
    """Make `cfg.out` ready (main process); returns the checkpoint to resume from, if resuming."""
    run = Path(cfg.out)
    existing = ckpt.list_checkpoints(run) if run.exists() else []
    if cfg.resume:
        if not existing:
            raise UserError(f"--resume: {run} has no checkpoint to resume from; drop --resume to start")
        return existing[-1]
    if run.exists() and any(run.iterdir()):
        if not existing and not _a_run(run):
            raise UserError(f"{run} is not empty and is not a training run minimaxdd wrote (no checkpoint, config.json "
                            "or manifest.json of ours), and a run writes only over its own files: move its files "
                            "away or choose another --out")
        if not cfg.overwrite and not existing:
            raise UserError(f"{run} is not empty and holds no checkpoint to resume from; pass --overwrite to start "
                            "a run there, or choose another --out")
        if not cfg.overwrite:
            raise UserError(f"{run} already holds a run; pass --resume to continue it, --overwrite to start over, "
                            "or choose another --out")
        for p in existing:
            delete_checkpoint(p)
        (run / "log.jsonl").unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return None


def _a_run(run: Path) -> bool:
    """Whether folder `run` is a run of ours without a checkpoint: its manifest.json or config.json, or the
    stage.json of a distill run's stage (written before the stage trains)."""
    return (written_by_us(run) or "train" in (json_dict(run / "config.json") or {})
            or "key" in (json_dict(run / "stage.json") or {}))


def discard_unstarted(run: Path, created: bool) -> None:
    """After a new run failed before its first checkpoint: remove what it wrote (its config and log, and the
    directory if it made it), so that a rerun needs no --overwrite. A run with a checkpoint is kept whole."""
    if ckpt.list_checkpoints(run):
        return
    for name in ("config.json", "log.jsonl", "manifest.json"):
        (run / name).unlink(missing_ok=True)
    for f in run.glob("ckpt-*.pt"):              # the optimiser and stage state of a checkpoint not completed
        f.unlink()
    if created and run.is_dir() and not any(run.iterdir()):
        run.rmdir()


def open_run(cfg: LoopConfig) -> Path | None:
    """`prepare_run` on the main process, then every process learns the checkpoint to resume from."""
    if dist.is_main():
        resume_from = prepare_run(cfg)
    dist.barrier()
    if not dist.is_main():
        resume_from = ckpt.list_checkpoints(cfg.out)[-1] if cfg.resume else None
    return resume_from


def unreadable_fix(ckpt_file: Path) -> str:
    """What to do when the checkpoint `ckpt_file` (or a file beside it) cannot be read."""
    return (f"delete {ckpt_file.name} and the files beside it named {ckpt_file.stem}.* to resume from the "
            "checkpoint before it, or start over with --overwrite")


def say_precision_change(run: Path, used: str, desc: str) -> None:
    """A resumed run that its earlier part trained in another precision (another machine's `auto`) says so."""
    try:
        before = json.loads((run / "config.json").read_text())["train"].get("precision")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if before in RESOLVED and before != used:
        print(f"[{desc}] resuming a run trained so far in {before}; it continues in {used}", flush=True)
