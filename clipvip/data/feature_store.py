"""Reading per-second feature stores written by ``clipvip features`` (VideoCLIP inputs).

Usage:
    store = FeatureStore("results/features/demo_longvideos/00000.h5")
    feats = store.features("clip_0003")         # float16 [seconds, D], rows L2-normalised
    store.meta("clip_0003")["duration"]         # seconds, fps, num_frames, source (frames | video), ...
    index = FeatureIndex("results/features/ds/index.json")   # or a folder of shards, or a list of paths
    index.features("clip_0003"); index.ids(); index.dim

HDF5 layout: root attrs ``format`` (``FEATURE_FORMAT``), ``extractor``, ``dim``, the stage's settings,
``complete``; one dataset ``/clips/<clip_id>`` per clip, float16 [seconds, D], with attrs ``duration``,
``seconds``, ``fps``, ``num_frames``, ``source``. A file without ``complete=True`` (a killed writer) is
refused, like a frame store. Files open read-only without HDF5 locking, one handle per process (reopened
after fork, dropped when pickled).

``FeatureIndex`` lists every shard's clip ids when built (a dict id -> shard): fine up to a few million
clips; the frame stores' memory-mapped Arrow index is not built for features (yet).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from clipvip.data.frame_store import _plain, open_complete_store

FEATURE_FORMAT = "clipvip-features/1"


class IncompleteFeatureStoreError(ValueError):
    """A feature store that is not a finished HDF5 shard (killed writer, wrong file, corrupt)."""


def open_feature_store(path: str | os.PathLike) -> h5py.File:
    return open_complete_store(path, "feature store", "features", FEATURE_FORMAT, IncompleteFeatureStoreError)


class FeatureStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = open_feature_store(self.path), os.getpid()
        return self._handle

    def __getstate__(self):
        return {"path": self.path, "_handle": None, "_pid": None}

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = self._pid = None

    @property
    def settings(self) -> dict:
        return {k: _plain(v) for k, v in self._file().attrs.items()}

    @property
    def dim(self) -> int:
        return int(self._file().attrs["dim"])

    def ids(self) -> list[str]:
        return sorted(self._file()["clips"].keys())

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._file()["clips"]

    def _clip(self, clip_id: str) -> h5py.Dataset:
        try:
            return self._file()["clips"][clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in feature store {self.path}") from None

    def features(self, clip_id: str) -> np.ndarray:
        return np.asarray(self._clip(clip_id)[()])

    def meta(self, clip_id: str) -> dict:
        meta = {k: _plain(v) for k, v in self._clip(clip_id).attrs.items()}
        meta["clip_id"] = clip_id
        return meta


class FeatureIndex:
    """All shards of a dataset: a folder of ``*.h5`` shards or a list of shard paths."""

    def __init__(self, shards: str | os.PathLike | Iterable[str | os.PathLike]):
        if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
            paths = sorted(Path(shards).glob("[0-9]*.h5"))
        elif isinstance(shards, (str, os.PathLike)) and str(shards).endswith(".json"):
            with open(shards) as fh:
                paths = [Path(shards).parent / p for p in json.load(fh)["shards"]]
        elif isinstance(shards, (str, os.PathLike)):
            paths = [Path(shards)]
        else:
            paths = [Path(p) for p in shards]
        if not paths:
            raise FileNotFoundError(f"no feature shards (*.h5) in {shards}")
        self.stores = [FeatureStore(p) for p in paths]
        self._where = {cid: k for k, store in enumerate(self.stores) for cid in store.ids()}
        dims = {store.dim for store in self.stores}
        if len(dims) != 1:
            raise ValueError(f"feature shards disagree on the feature dimension: {sorted(dims)}")
        self.dim = dims.pop()

    def ids(self) -> list[str]:
        return sorted(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._where

    def store(self, clip_id: str) -> FeatureStore:
        if clip_id not in self._where:
            raise KeyError(f"clip {clip_id!r} is in no feature shard ({len(self.stores)} shards)")
        return self.stores[self._where[clip_id]]

    def features(self, clip_id: str) -> np.ndarray:
        return self.store(clip_id).features(clip_id)

    def meta(self, clip_id: str) -> dict:
        return self.store(clip_id).meta(clip_id)

    def close(self) -> None:
        for store in self.stores:
            store.close()


def write_index(shards, out) -> dict:
    """``index.json``: shard paths relative to it, clip and failure counts (``rule features_index``)."""
    from clipvip.stage import write_json_atomic

    out = Path(out)
    shards = [Path(p) for p in shards]
    counts = [len(FeatureStore(p).ids()) for p in shards]
    index = {"format": "clipvip-features-index/1", "shards": [os.path.relpath(p, out.parent) for p in shards],
             "shard_num_clips": counts, "num_clips": int(sum(counts)),
             "dim": FeatureIndex(shards).dim if shards else None}
    write_json_atomic(out, index)
    return index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipvip.data.feature_store")
    sub = parser.add_subparsers(dest="command", required=True)
    idx = sub.add_parser("index", help="write index.json over feature shards")
    idx.add_argument("--shards", nargs="+", required=True)
    idx.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    index = write_index(args.shards, args.out)
    print(f"feature index: {index['num_clips']} clips in {len(index['shards'])} shards -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
