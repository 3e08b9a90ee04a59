"""Reading frame stores: ``FrameStore`` (one HDF5 shard) and ``FrameIndex`` (all shards of a dataset).

Usage:
    store = FrameStore("results/frames/demo_msrvtt/00000.h5")   # nothing is opened yet
    frames = store.uniform("msr_00000")            # uint8 [T,H,W,3], decoded frames linspace(0, N-1, T)
    frames, indices = store.pool("msr_00000")      # denser training pool + decoded index of each frame
    frame = store.middle("msr_00000")              # uint8 [H,W,3], decoded frame (N - 1) // 2
    store.meta("msr_00000")["num_frames"]

    index = FrameIndex("results/frames/demo_msrvtt/index.json")  # same API over every shard
    index.failures()                               # pandas.DataFrame: clip_id, reason, detail, shard
    index.shard_of("msr_00000")                    # shard number (for shard-aware sampling), -1 if absent

Corpus scale: the index's clip ids are a memory-mapped, sorted Arrow table (``index.arrow``, binary-searched;
``clipvip.data.corpus``), and a FrameIndex keeps at most ``max_open_shards`` (default 64) shards open per
process, closing the least recently used one -- memory and open files do not grow with the corpus.

Files are opened read-only on first access, with HDF5 file locking off so readers never block each other
(writers only ever write a private temp file). Each process opens its own handle: a handle inherited over
fork is dropped and reopened when the pid changes, and pickling (DataLoader workers) drops it too.
A file without the root attribute ``complete=True`` (a job killed mid-write) is refused.

HDF5 layout (written by ``clipvip.frames.extract``): root attrs = settings + ``complete``; one dataset
``/clips/<clip_id>`` per clip holding the JPEG bytes (``vlen uint8``) of each distinct stored frame; its
attrs hold ``frame_indices`` (decoded index of each stored frame), ``uniform_indices``, ``pool_indices``,
``middle_index`` and the clip's metadata.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import simplejpeg

from clipvip.data.manifest import read_failures
from clipvip.data.sampling import uniform_indices
from clipvip.stage import UserError

STORE_FORMAT = "clipvip-frames/1"
INDEX_FORMAT = "clipvip-frames-index/1"
_INT_ATTRS = ("num_frames", "middle_index", "orig_height", "orig_width", "height", "width")
_ARRAY_ATTRS = ("frame_indices", "uniform_indices", "pool_indices")


class IncompleteStoreError(ValueError):
    """A frame store that is not a finished HDF5 shard (killed writer, wrong file, corrupt)."""


class CorruptStoreError(IncompleteStoreError, UserError):
    """A complete-looking shard whose bytes cannot be read back (overwritten, damaged copy): names file and clip."""


def open_complete_store(path: str | os.PathLike, kind: str = "frame store", stage: str = "frames",
                        fmt: str | None = None, error: type[Exception] = IncompleteStoreError) -> h5py.File:
    """Open a shard read-only without file locking; raise ``error`` unless it is complete (and of ``fmt``).

    Shared by the frame and feature stores: a killed writer's file never passes for a finished one."""
    try:
        handle = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{kind} {path} cannot be opened as HDF5 ({exc}); it is incomplete or corrupt: delete it "
                    f"and rerun the {stage} stage") from exc
    if not bool(handle.attrs.get("complete", False)) or (fmt is not None and handle.attrs.get("format") != fmt):
        handle.close()
        wanted = "complete=True" + (f" / format {fmt}" if fmt else "")
        raise error(f"{kind} {path} lacks the attribute {wanted}: the job writing it did not finish; delete it "
                    f"and rerun the {stage} stage")
    return handle


class FrameStore:
    """One shard; see the module docstring. Safe to construct in a parent process before forking."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._ids: list[str] | None = None

    # -- file handling
    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited over fork belongs to the parent's HDF5 state: drop it, open our own.
            self._handle = open_complete_store(self.path)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = None

    def __getstate__(self):
        return {"path": self.path, "_handle": None, "_pid": None, "_ids": self._ids}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def settings(self) -> dict:
        """The extraction settings stored as root attributes (num_frames, pool_size, short_side, ...)."""
        return {key: _plain(value) for key, value in self._file().attrs.items()}

    # -- clips
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = sorted(self._file()["clips"].keys())
        return list(self._ids)

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._file()["clips"]

    def _clip(self, clip_id: str) -> h5py.Dataset:
        try:
            return self._file()["clips"][clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in frame store {self.path}") from None

    def meta(self, clip_id: str) -> dict:
        """num_frames N, fps, duration, frame/uniform/pool indices, middle_index, sizes, decoder; with a
        fixed-rate pool (frames option ``pool_fps``) also ``pool_times`` (seconds of each pool frame, aligned
        with ``pool()``'s indices), otherwise ``pool_times`` is None."""
        attrs = self._clip(clip_id).attrs
        meta = {key: _plain(value) for key, value in attrs.items()}
        meta.setdefault("pool_times", None)
        meta["clip_id"] = clip_id
        return meta

    def frames(self, clip_id: str, indices: Sequence[int]) -> np.ndarray:
        """uint8 [len(indices),H,W,3]: the stored frames with these decoded indices (repeats allowed)."""
        dataset = self._clip(clip_id)
        try:
            stored = np.asarray(dataset.attrs["frame_indices"])
        except (OSError, RuntimeError) as exc:
            raise self._damaged(clip_id, exc) from None
        wanted = np.asarray(indices, dtype=int)
        positions = np.searchsorted(stored, wanted)
        missing = [int(i) for i, p in zip(wanted, positions) if p >= len(stored) or stored[p] != i]
        if missing:
            raise ValueError(f"clip {clip_id!r} in {self.path}: decoded frames {missing[:8]} are not stored "
                             f"(stored: uniform T={len(dataset.attrs['uniform_indices'])}, "
                             f"pool of {len(dataset.attrs['pool_indices'])}, middle); re-extract with "
                             "matching num_frames/pool_size")
        unique_positions, inverse = np.unique(positions, return_inverse=True)
        try:
            encoded = dataset[unique_positions.tolist()]
            decoded = [simplejpeg.decode_jpeg(buf, colorspace="RGB") for buf in encoded]
        except (OSError, RuntimeError, ValueError) as exc:  # HDF5 read errors; simplejpeg raises ValueError
            raise self._damaged(clip_id, exc) from None
        return np.stack([decoded[k] for k in inverse.reshape(-1)])

    def _damaged(self, clip_id: str, exc: Exception) -> CorruptStoreError:
        detail = " ".join(str(exc).split())[:200]
        return CorruptStoreError(f"frame store {self.path}: clip {clip_id!r} cannot be read ({type(exc).__name__}: "
                                 f"{detail}); the file is damaged: delete it and rerun the frames stage")

    def uniform(self, clip_id: str, num_frames: int | None = None) -> np.ndarray:
        """uint8 [T,H,W,3]: decoded frames ``linspace(0, N-1, T).astype(int)`` (T defaults to the stored T).

        A T other than the stored one works when every needed frame happens to be stored (e.g. all frames of
        a short clip are in the pool); otherwise ``ValueError``.
        """
        meta_attrs = self._clip(clip_id).attrs
        if num_frames is None or num_frames == len(meta_attrs["uniform_indices"]):
            indices = np.asarray(meta_attrs["uniform_indices"])
        else:
            indices = uniform_indices(int(meta_attrs["num_frames"]), num_frames)
        return self.frames(clip_id, indices)

    def pool(self, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [P,H,W,3], int [P]): the training pool and the decoded frame index of each frame."""
        indices = np.asarray(self._clip(clip_id).attrs["pool_indices"], dtype=int)
        return self.frames(clip_id, indices), indices

    def middle(self, clip_id: str) -> np.ndarray:
        """uint8 [H,W,3]: decoded frame ``(N - 1) // 2``."""
        return self.frames(clip_id, [int(self._clip(clip_id).attrs["middle_index"])])[0]


DEFAULT_MAX_OPEN_SHARDS = 64


class FrameIndex:
    """All shards of a dataset, from the ``index.json`` that ``clipvip frames-index`` writes.

    Clip ids: from ``index.arrow`` (named by index.json's ``"ids"``; sorted ids + shard + row, memory-mapped
    and binary-searched, see ``clipvip.data.corpus.ClipIdTable``) -- private memory does not grow with the
    corpus. Older indexes holding ``shard_clip_ids`` lists (or none: the shards are asked) still load, into a
    dict. Open shards: at most ``max_open_shards`` HDF5 handles per process (least recently used closed first,
    reopened transparently); default ``DEFAULT_MAX_OPEN_SHARDS`` or env ``CLIPVIP_MAX_OPEN_SHARDS``.
    """

    def __init__(self, index_json: str | os.PathLike, max_open_shards: int | None = None):
        self.path = Path(index_json)
        with open(self.path) as fh:
            self.index = json.load(fh)
        base = self.path.parent
        self.shard_paths = [base / p for p in self.index["shards"]]
        if max_open_shards is None:
            max_open_shards = int(os.environ.get("CLIPVIP_MAX_OPEN_SHARDS", DEFAULT_MAX_OPEN_SHARDS))
        if max_open_shards < 1:
            raise ValueError(f"max_open_shards must be >= 1, got {max_open_shards}")
        self.max_open_shards = int(max_open_shards)
        self._open: OrderedDict[int, FrameStore] = OrderedDict()
        self._open_pid = os.getpid()
        self._table = None
        self._where: dict[str, int] | None = None
        if self.index.get("ids"):
            from clipvip.data.corpus import ClipIdTable

            self._table = ClipIdTable(base / self.index["ids"])
        else:
            self._where = {}
            lists = self.index.get("shard_clip_ids") or [None] * len(self.shard_paths)
            for shard_number, ids in enumerate(lists):
                # Older/hand-written indexes may lack the id lists: ask the shard (opens it in this process).
                for clip_id in ids if ids is not None else self._store(shard_number).ids():
                    self._where[clip_id] = shard_number

    @property
    def uuid(self) -> str:
        """Identity of this index build (annotation tables joined with it carry the same value)."""
        return self.index.get("index_uuid", "")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # handles never travel; the id table pickles as its path
        state["_open_pid"] = None
        return state

    def ids(self) -> list[str]:
        """Every clip id, sorted (a list of all ids: for small datasets and tests)."""
        return self._table.ids() if self._table is not None else sorted(self._where)

    def __len__(self) -> int:
        return len(self._table) if self._table is not None else len(self._where)

    def __contains__(self, clip_id: str) -> bool:
        return self.shard_of(clip_id) >= 0

    def shard_of(self, clip_id: str) -> int:
        """Shard number of ``clip_id`` (its position in ``shard_paths``), -1 if absent."""
        if self._table is not None:
            return self._table.shard_of(clip_id)
        return self._where.get(clip_id, -1)

    def shards_of(self, clip_ids) -> np.ndarray:
        """int32 shard number of each id (-1 if absent)."""
        return np.fromiter((self.shard_of(c) for c in clip_ids), dtype=np.int32)

    def _store(self, shard_number: int) -> FrameStore:
        if self._open_pid != os.getpid():
            # Forked: the parent's handles are not ours (FrameStore.close would skip them anyway).
            self._open, self._open_pid = OrderedDict(), os.getpid()
        store = self._open.get(shard_number)
        if store is not None:
            self._open.move_to_end(shard_number)
            return store
        while len(self._open) >= self.max_open_shards:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        store = self._open[shard_number] = FrameStore(self.shard_paths[shard_number])
        return store

    def open_shards(self) -> int:
        """Shards with a handle open in this process (at most ``max_open_shards``)."""
        if self._open_pid != os.getpid():
            return 0
        return sum(1 for s in self._open.values() if s._handle is not None)

    def store(self, clip_id: str) -> FrameStore:
        shard = self.shard_of(clip_id)
        if shard < 0:
            raise KeyError(f"clip {clip_id!r} is not in frame index {self.path} "
                           "(see failures() for clips that could not be decoded)")
        return self._store(shard)

    def uniform(self, clip_id: str, num_frames: int | None = None) -> np.ndarray:
        return self.store(clip_id).uniform(clip_id, num_frames)

    def pool(self, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self.store(clip_id).pool(clip_id)

    def middle(self, clip_id: str) -> np.ndarray:
        return self.store(clip_id).middle(clip_id)

    def frames(self, clip_id: str, indices: Sequence[int]) -> np.ndarray:
        return self.store(clip_id).frames(clip_id, indices)

    def meta(self, clip_id: str) -> dict:
        return self.store(clip_id).meta(clip_id)

    def failures(self):
        """pandas.DataFrame of the merged failure manifest: clip_id, reason, detail, shard."""
        return read_failures(self.path.parent / self.index["failures"])

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open = OrderedDict()


def _plain(value):
    """HDF5 attribute -> JSON-friendly Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
