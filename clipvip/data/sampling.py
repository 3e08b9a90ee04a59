"""Frame-index sampling: the paper's uniform (test) and jittered (train) protocols, and pool look-up.

Usage:
    >>> import numpy as np
    >>> uniform_indices(100, 4)
    array([ 0, 33, 66, 99])
    >>> idx = jitter_indices(100, 12, np.random.default_rng(0))   # 12 sorted indices in [0, 99]
    >>> pos = nearest_positions(pool_indices, idx)                # rows of the stored pool to read

The jitter mirrors the official CLIP-ViP loader: ``interval = int(N / (T - 1))``, ``start`` uniform in
``[0, interval]`` (``randint(0, interval + 1)``), ``end`` uniform in ``[N - 1 - interval, N - 1]``
(``randint(N - 1 - interval, N)``), then ``np.linspace(start, end, T).astype(int)``.
Degenerate cases, where the official formula misbehaves, are handled explicitly:
  * ``T == 1``: one frame drawn uniformly from ``[0, N - 1]`` (the formula divides by zero).
  * ``start`` / ``end`` are clipped into ``[0, N - 1]`` (``T == 2`` gives ``interval == N``, whose range would
    reach ``-1`` and ``N``).
  * very short clips (``N`` < about ``2T``) can draw ``start > end``; the two are swapped so the indices
    stay non-decreasing. ``N < T`` therefore repeats frames, exactly like ``uniform_indices``.
"""
from __future__ import annotations

import numpy as np


def _check(num_frames: int, num_samples: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one decoded frame, got N={num_frames}")
    if num_samples < 1:
        raise ValueError(f"need at least one frame to sample, got T={num_samples}")


def uniform_indices(num_frames: int, num_samples: int) -> np.ndarray:
    """The test-time protocol: ``np.linspace(0, N - 1, T).astype(int)`` (repeats frames when N < T)."""
    _check(num_frames, num_samples)
    return np.linspace(0, num_frames - 1, num_samples).astype(int)


def jitter_indices(num_frames: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The training protocol (random start/end around the uniform grid); see the module docstring."""
    _check(num_frames, num_samples)
    last = num_frames - 1
    if num_samples == 1:
        return np.array([rng.integers(0, num_frames)], dtype=int)
    interval = int(num_frames / (num_samples - 1))
    start = min(int(rng.integers(0, interval + 1)), last)
    end = max(int(rng.integers(last - interval, num_frames)), 0)
    if start > end:
        start, end = end, start
    return np.linspace(start, end, num_samples).astype(int)


def nearest_positions(pool_indices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted decoded-frame index, the position in ``pool_indices`` (sorted) of the nearest one.

    Exact when the pool holds the wanted frame; ties go to the earlier frame.
    """
    pool = np.asarray(pool_indices)
    if pool.ndim != 1 or len(pool) == 0:
        raise ValueError("the frame pool is empty")
    if np.any(np.diff(pool) < 0):
        raise ValueError("pool indices must be sorted")
    wanted = np.asarray(wanted)
    right = np.clip(np.searchsorted(pool, wanted, side="left"), 0, len(pool) - 1)
    left = np.clip(right - 1, 0, len(pool) - 1)
    take_left = np.abs(wanted - pool[left]) <= np.abs(pool[right] - wanted)
    return np.where(take_left, left, right)
