"""Every collective the trainer itself issues, with its tensors on the engine's device.

Usage:
    flags = all_reduce_flags([not finite, stop_requested], device)   # -> list[bool], MAX over ranks
    value = all_reduce_mean(tensor)                                   # in place on its own device
    obj = broadcast_object(obj, device, src=0)

NCCL only accepts CUDA tensors (a CPU tensor raises at the first call); gloo accepts CPU tensors. Building
the tensor with ``device=`` here, and nowhere else, keeps the trainer correct under both: ``device`` is the
engine's (``torch.device("cuda", local_rank)`` on GPU, ``cpu`` otherwise). The loss code's feature gathers
live in ``clipvip.losses`` and use the features' own device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def flags_tensor(values: Sequence[bool | float], device) -> torch.Tensor:
    """A float32 tensor of ``values`` (bools as 0/1) on ``device``; a tensor value stays on the device."""
    parts = [v.detach().reshape(()).to(device=device, dtype=torch.float32) if isinstance(v, torch.Tensor)
             else torch.tensor(float(v), dtype=torch.float32, device=device) for v in values]
    return torch.stack(parts)


def all_reduce_flags(values: Sequence[bool | float | torch.Tensor], device) -> torch.Tensor:
    """MAX-all-reduce of per-rank flags, on ``device``: any rank's 1 is every rank's 1.

    Returns the reduced tensor (still on ``device``); ``bool(result[i])`` is the one host sync a caller pays.
    Tensor values (e.g. ``~torch.isfinite(loss)``) are used without a host round trip.
    """
    flags = flags_tensor(values, device)
    if _initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (the tensor is already on the right device: the caller's)."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: Any, device, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; NCCL needs ``device`` for the byte tensor)."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=torch.device(device))
    return box[0]


def barrier(device) -> None:
    """A barrier that does not guess the GPU under NCCL (``device_ids`` from ``device``)."""
    if not _initialized():
        return
    device = torch.device(device)
    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()
