"""Multi-process runs with PyTorch's own engine: `torchrun --nproc_per_node N minimaxdd ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; `setup()` joins the process group
(gloo on CPU, nccl on CUDA) once. Without torchrun everything here is a no-op for one process,
so the same code runs both ways.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> int:
    """Number of processes in the group (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: the process group's, or torchrun's RANK before the group is joined (so that work
    done before `setup`, such as taking a run's lock, is done by rank 0 only); 0 without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the rank that logs and writes files."""
    return rank() == 0


def setup(device: torch.device | None = None) -> torch.device | None:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1; returns this rank's device
    (cuda:LOCAL_RANK when the given device is CUDA), or `device` unchanged for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device is not None and device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def shutdown(sync: bool = True) -> None:
    """Leave the process group before the interpreter exits. Left to the exit, one rank can close its
    sockets while gloo's threads on the other still use them ("terminate called without an active
    exception", SIGABRT). `sync`: wait for every rank first (not after an error, which could hang)."""
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if world() > 1:
        dist.barrier()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object from every rank, in rank order."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def any_flag(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when any rank says True (e.g. a time limit), so all ranks stop together."""
    if world() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if device is not None and device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)
