"""DataLoader construction for the frame-store datasets.

Usage:
    >>> loader = build_loader(ds, sampler, batch_size=32, num_workers=2,
    ...                       collate_fn=TokenizingCollator(tok, max_len=50))
    >>> for batch in loader:
    ...     batch = to_device(batch, device)   # uint8 pixels -> normalised float32 on the device, once

Workers are forked (Linux) and persistent (when there are any), so the per-epoch fork cost is paid once; that is safe because
frame stores open their HDF5 files lazily and reopen after a pid change, and because the datasets keep
their epoch in shared memory. Each worker runs single-threaded torch (two cores are shared with the main
process) and seeds numpy's global RNG per worker -- our datasets do not use it, third-party code might.

Batches carry uint8 pixels (``PIXEL_KEYS``); ``to_device`` is where they meet the model: the one place the
trainer moves a batch to its device and CLIP-normalises the pixels (``normalize_pixels``). On CUDA the loader
pins its batches (``pin_memory``) and ``to_device`` copies with ``non_blocking=True``, so the host-to-device
copy overlaps the previous step's kernels; on CPU both are plain (a "copy" to the same device is a no-op).
Worker count, ``prefetch_factor`` and pinning are decided by the trainer's plan (``clipvip.trainer.plan``).
"""
from __future__ import annotations

import multiprocessing
import signal
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from .transforms import PIXEL_KEYS, normalize_pixels


def worker_init_fn(worker_id: int) -> None:
    # torch derives a distinct per-worker seed from the loader's base seed; reuse it for numpy.
    np.random.seed(torch.initial_seed() % 2**32)
    torch.set_num_threads(1)
    # scancel / preemption signal every process of the job step: workers must outlive the main process's
    # checkpoint-on-signal (it shuts them down itself), or it dies on "DataLoader worker killed" instead.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def close_loader(loader) -> None:
    """Stop ``loader``'s worker processes now (its persistent iterator, if any; a no-op without workers).

    Workers ignore SIGTERM (``worker_init_fn``), so multiprocessing's exit handler, which terminates and then
    joins daemonic children, would wait forever on a worker whose iterator outlives the training loop."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None:
        loader._iterator = None


def build_loader(dataset, sampler, batch_size: int, num_workers: int, collate_fn,
                 drop_last: bool = False, prefetch_factor: int | None = 2, pin_memory: bool = False,
                 persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler`` order (``sampler`` may be None: dataset order).

    ``persistent_workers`` None = whenever there are workers (torch refuses it with 0 workers).
    """
    kwargs = {}
    if num_workers > 0:
        persistent = True if persistent_workers is None else bool(persistent_workers)
        kwargs = dict(persistent_workers=persistent, worker_init_fn=worker_init_fn,
                      prefetch_factor=prefetch_factor or 2)
        if sys.platform.startswith("linux"):
            kwargs["multiprocessing_context"] = multiprocessing.get_context("fork")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,  # GPU trainers: page-locked batches make the non_blocking copy asynchronous
        **kwargs,
    )


def to_device(batch: dict, device, dtype: torch.dtype | None = None) -> dict:
    """A collated batch on ``device``: ``PIXEL_KEYS`` (uint8) normalised there (then cast to ``dtype``), other
    tensors moved (floating ones cast to ``dtype``), everything else (strings) kept."""
    device = torch.device(device)
    out = {}
    for key, value in batch.items():
        if key in PIXEL_KEYS and isinstance(value, torch.Tensor):
            if device.type == "cuda":  # the uint8 copy (4x smaller than float) is the asynchronous one
                value = value.to(device, non_blocking=value.is_pinned())
            value = normalize_pixels(value, device, dtype)
        elif isinstance(value, torch.Tensor):
            # non_blocking only pays (and is only safe to rely on) from pinned host memory to CUDA
            value = value.to(device, non_blocking=device.type == "cuda" and value.is_pinned())
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out
