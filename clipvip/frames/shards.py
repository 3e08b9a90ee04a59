"""Shard bookkeeping: ``clipvip split-ids`` (id lists per shard) and ``clipvip frames-index`` (merge shards).

Usage:
    clipvip split-ids --ids-from ann/msrvtt_train.jsonl ann/msrvtt_test.jsonl --shard-size 500 --out-dir ids/
        -> ids/00000.txt, ids/00001.txt, ... (sorted, deduplicated union of the files' clip_ids)
    clipvip frames-index --shards frames/00000.h5 frames/00001.h5 --out frames/index.json
        -> index.json + failures.tsv (all shards' manifests merged, with a ``shard`` column)

    from clipvip.frames import read_clip_ids, shard_count
    shard_count(len(read_clip_ids(paths)), 500)      # the Snakefile's shard count at parse time

index.json: {"format", "shards": [paths relative to index.json], "num_clips", "num_failures",
"failures": "failures.tsv" (relative), "shard_clip_ids": [[ids of shard 0], ...], "settings": {...}}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from clipvip.frames.manifest import (MERGED_COLUMNS, default_failures_path, read_failures,
                                     write_failures)
from clipvip.frames.store import INDEX_FORMAT, FrameStore, IncompleteStoreError

_SHARD_FILE = re.compile(r"^\d{5}\.txt$")


def shard_count(n_ids: int, shard_size: int) -> int:
    """Number of shards for ``n_ids`` ids at ``shard_size`` per shard (0 for no ids)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return math.ceil(n_ids / shard_size)


def read_clip_ids(paths) -> list[str]:
    """Sorted, deduplicated union of the ``clip_id`` of every line of the annotation JSONL files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    ids = set()
    for path in paths:
        with open(path) as fh:
            for line_number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    ids.add(str(json.loads(line)["clip_id"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{line_number}: not an annotation line with a clip_id "
                                     f"({type(exc).__name__}: {exc})") from None
    return sorted(ids)


def write_shard_id_lists(clip_ids: list[str], shard_size: int, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``out_dir/00000.txt`` ... atomically; remove numbered lists left from a run with more shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = shard_count(len(clip_ids), shard_size)
    written = []
    for shard in range(count):
        path = out_dir / f"{shard:05d}.txt"
        tmp = out_dir / f".{path.name}.tmp-{os.getpid()}"
        tmp.write_text("".join(f"{clip_id}\n" for clip_id in clip_ids[shard * shard_size:(shard + 1) * shard_size]))
        os.replace(tmp, path)
        written.append(path)
    for stale in out_dir.iterdir():
        if _SHARD_FILE.match(stale.name) and int(stale.name[:5]) >= count:
            stale.unlink()
    return written


def split_ids_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip split-ids", description="split clip ids into shard lists")
    parser.add_argument("--ids-from", nargs="+", required=True, help="annotation JSONL files (clip_id per line)")
    parser.add_argument("--shard-size", type=int, required=True, help="clip ids per shard")
    parser.add_argument("--out-dir", required=True, help="folder for 00000.txt, 00001.txt, ...")
    args = parser.parse_args(argv)
    try:
        clip_ids = read_clip_ids(args.ids_from)
        if not clip_ids:
            raise ValueError(f"no clip ids in {', '.join(args.ids_from)}")
        written = write_shard_id_lists(clip_ids, args.shard_size, args.out_dir)
    except (OSError, ValueError) as exc:
        print(f"clipvip split-ids: {exc}", file=sys.stderr)
        return 1
    print(f"split-ids: {len(clip_ids)} clip ids -> {len(written)} shards of <= {args.shard_size} in {args.out_dir}")
    return 0


def build_index(shards: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Verify every shard is complete, merge their failure manifests, write ``out`` (index.json)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shard_paths, shard_ids, merged, settings = [], [], [], None
    seen: dict[str, Path] = {}
    for shard in map(Path, shards):
        if not shard.exists():
            raise FileNotFoundError(f"frame store shard {shard} does not exist")
        with FrameStore(shard) as store:  # raises IncompleteStoreError for a killed writer's file
            ids = store.ids()
            shard_settings = {k: v for k, v in store.settings.items()
                              if k not in ("complete", "num_clips", "failures_manifest")}
            manifest = shard.parent / store.settings.get("failures_manifest", default_failures_path(shard).name)
        if settings is None:
            settings = shard_settings
        elif shard_settings != settings:
            raise ValueError(f"shard {shard} was extracted with settings {shard_settings}, unlike the first "
                             f"shard's {settings}; re-extract so all shards of a dataset match")
        for clip_id in ids:
            if clip_id in seen:
                raise ValueError(f"clip {clip_id!r} is in both {seen[clip_id]} and {shard}")
            seen[clip_id] = shard
        if not manifest.exists():
            raise FileNotFoundError(f"failure manifest {manifest} of shard {shard} is missing")
        relative = os.path.relpath(shard, out.parent)
        for row in read_failures(manifest).itertuples(index=False):
            merged.append((row.clip_id, row.reason, row.detail, relative))
        shard_paths.append(relative)
        shard_ids.append(ids)
    failures_path = out.parent / "failures.tsv"
    write_failures(failures_path, merged, columns=MERGED_COLUMNS)
    index = {"format": INDEX_FORMAT, "shards": shard_paths, "num_clips": len(seen), "num_failures": len(merged),
             "failures": failures_path.name, "settings": settings or {}, "shard_clip_ids": shard_ids}
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(index) + "\n")
    os.replace(tmp, out)
    return index


def index_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip frames-index", description="merge frame-store shards")
    parser.add_argument("--shards", nargs="+", required=True, help="the dataset's shard .h5 files")
    parser.add_argument("--out", required=True, help="index.json to write (failures.tsv goes beside it)")
    args = parser.parse_args(argv)
    try:
        index = build_index(args.shards, args.out)
    except (OSError, ValueError, IncompleteStoreError) as exc:
        print(f"clipvip frames-index: {exc}", file=sys.stderr)
        return 1
    print(f"frames-index: {index['num_clips']} clips in {len(index['shards'])} shards, "
          f"{index['num_failures']} failures -> {args.out}")
    return 0
