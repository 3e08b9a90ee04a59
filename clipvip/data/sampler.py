"""A distributed sampler that can resume in the middle of an epoch with the same sample order.

Usage (the trainer's loop):
    >>> sampler = ResumableDistributedSampler(len(ds), num_replicas=world, rank=rank, seed=42)
    >>> sampler.load_state_dict(ckpt["sampler"])          # only when resuming
    >>> for epoch in range(sampler.epoch, epochs):
    ...     sampler.set_epoch(epoch); ds.set_epoch(epoch)
    ...     for batch in loader:
    ...         step(batch)
    ...         sampler.advance(len(batch["clip_id"]))    # samples this rank has really consumed
    ...         ckpt["sampler"] = sampler.state_dict()   # {"epoch", "position", ...}

Order: the epoch's permutation is ``torch.randperm(n, generator seeded with seed + epoch)`` (identity when
``shuffle=False``), padded by wrapping around to a multiple of ``num_replicas`` (or truncated with
``drop_last``), and rank ``r`` takes ``perm[r::num_replicas]`` -- the same as
``torch.utils.data.DistributedSampler``. Shards are disjoint except for the wrap-around padding.

``group_size`` g > 1 permutes runs of g consecutive dataset indices instead of single indices, so the members
of a group land in the same global batch (features are all-gathered, so ranks do not matter): hard negatives
such as the demo's time-reversed twins, or clusters of similar videos (VideoCLIP-style retrieval-augmented
batches) written as consecutive annotation lines. A global batch should be a multiple of g.

``shuffle_mode="shard"`` (with ``shards=``: the frame-store shard of every dataset index, e.g.
``dataset.item_shards()``) keeps reads local at corpus scale: each epoch permutes the shard order
(``numpy.random.default_rng([seed, epoch, ...])``) and shuffles the clips (groups) of each window of
``shard_buffer`` consecutive shards of that order, so a worker's open-shard LRU stays warm; padding,
``drop_last`` and rank striding are the global mode's. ``"global"`` (default) is the order described above,
unchanged. The shard-local order is held as numpy int32 (4 bytes per index), not as a Python list.

Why ``advance`` and not counting in ``__iter__``: DataLoader workers prefetch indices ahead of the
training step, so the sampler cannot know what was consumed; the trainer tells it. ``set_epoch`` with the
epoch restored by ``load_state_dict`` keeps the position; any other epoch starts at 0. ``len(sampler)``
is what is left of the current epoch on this rank; ``num_samples`` is a full epoch's share.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler


SHUFFLE_MODES = ("global", "shard")


class ResumableDistributedSampler(Sampler[int]):
    def __init__(
        self,
        dataset_len: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        group_size: int = 1,
        shuffle_mode: str = "global",
        shards=None,
        shard_buffer: int = 4,
    ):
        if dataset_len < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)
        if self.drop_last and self.dataset_len < self.num_replicas:
            raise ValueError(f"drop_last with {dataset_len} samples leaves nothing for {num_replicas} ranks")
        self.num_samples = (
            self.dataset_len // self.num_replicas
            if self.drop_last
            else math.ceil(self.dataset_len / self.num_replicas)
        )
        if shuffle_mode not in SHUFFLE_MODES:
            raise ValueError(f"shuffle_mode must be one of {SHUFFLE_MODES}, got {shuffle_mode!r}")
        self.shuffle_mode = shuffle_mode
        self.shard_buffer = int(shard_buffer)
        self.shards = None
        if shuffle_mode == "shard":
            if shards is None:
                raise ValueError('shuffle_mode="shard" needs shards= (the shard of each dataset index, e.g. '
                                 "dataset.item_shards())")
            if self.shard_buffer < 1:
                raise ValueError(f"shard_buffer must be >= 1, got {shard_buffer}")
            self.shards = np.asarray(shards)
            if self.shards.shape != (self.dataset_len,):
                raise ValueError(f"shards has shape {self.shards.shape}, expected ({self.dataset_len},)")
        self.epoch = 0
        self.position = 0

    def _shard_order(self) -> np.ndarray:
        """Shard-local order: shuffled shard order, clips shuffled within windows of ``shard_buffer`` shards
        (groups of ``group_size`` kept together; a group belongs to the shard of its first index)."""
        g, n = self.group_size, self.dataset_len
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EA4D])
        group_shard = self.shards[::g]
        shard_ids, group_slot = np.unique(group_shard, return_inverse=True)
        by_shard = np.argsort(group_slot, kind="stable")            # groups, grouped by shard
        bounds = np.searchsorted(group_slot[by_shard], np.arange(len(shard_ids) + 1))
        shard_perm = rng.permutation(len(shard_ids))
        parts = []
        for start in range(0, len(shard_perm), self.shard_buffer):
            window = shard_perm[start:start + self.shard_buffer]
            groups = np.concatenate([by_shard[bounds[k]:bounds[k + 1]] for k in window])
            parts.append(groups[rng.permutation(len(groups))])
        groups = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        dtype = np.int32 if n < 2**31 else np.int64  # 4 bytes per index at corpus scale, not a Python list
        if g == 1:
            return groups.astype(dtype)
        order = (groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        return order[order < n].astype(dtype)

    def _epoch_indices(self) -> list[int]:
        if self.shuffle and self.shuffle_mode == "shard":
            order = self._shard_order()
            total = self.num_samples * self.num_replicas
            if len(order) < total:
                order = np.resize(order, total)  # wrap around, as the global order does
            return order[:total][self.rank :: self.num_replicas]
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            g = self.group_size
            groups = torch.randperm(math.ceil(self.dataset_len / g), generator=gen).tolist()
            order = [i for k in groups for i in range(k * g, min((k + 1) * g, self.dataset_len))]
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.num_replicas
        while len(order) < total:  # wrap around (possibly several times for tiny datasets)
            order += order[: total - len(order)]
        return order[:total][self.rank :: self.num_replicas]

    def __iter__(self):
        indices = self._epoch_indices()[self.position :]
        return iter(indices.tolist() if isinstance(indices, np.ndarray) else indices)

    def __len__(self) -> int:
        return self.num_samples - self.position

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, num_consumed: int) -> None:
        """Record that the trainer consumed ``num_consumed`` more samples of this epoch on this rank."""
        self.position = min(self.position + int(num_consumed), self.num_samples)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "dataset_len": self.dataset_len,
            "num_replicas": self.num_replicas,
            "group_size": self.group_size,
            "shuffle_mode": self.shuffle_mode,
            "shard_buffer": self.shard_buffer,
        }

    def load_state_dict(self, state: dict) -> None:
        # A different dataset size, seed or world size would silently change the order: refuse.
        for key in ("seed", "dataset_len", "num_replicas", "group_size", "shuffle_mode", "shard_buffer"):
            if key == "shard_buffer" and self.shuffle_mode != "shard":
                continue  # the buffer only matters for shard-local order
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.num_samples)
