"""Shard bookkeeping: ``clipvip split-ids`` (id lists per shard) and ``clipvip frames-index`` (merge shards).

Usage:
    clipvip split-ids --ids-from ann/msrvtt_train.jsonl ann/msrvtt_test.jsonl --shard-size 500 --out-dir ids/
        -> ids/00000.txt, ids/00001.txt, ... (sorted, deduplicated union of the files' clip_ids)
    clipvip frames-index --shards frames/00000.h5 frames/00001.h5 --out frames/index.json
        -> index.json + failures.tsv (all shards' manifests merged, with a ``shard`` column)

    from clipvip.frames import read_clip_ids, shard_count
    shard_count(len(read_clip_ids(paths)), 500)      # the Snakefile's shard count at parse time

index.json: {"format", "shards": [paths relative to index.json], "num_clips", "num_failures",
"failures": "failures.tsv" (relative), "ids": "index.arrow" (relative), "index_uuid", "shard_num_clips":
[clips of shard 0, ...], "settings": {...}}. The clip ids live only in ``index.arrow`` (sorted ``clip_id``,
``shard``, ``row``; see ``clipvip.data.corpus.ClipIdTable``), so index.json stays small at 10,000 shards.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import uuid
from pathlib import Path

from clipvip.data.manifest import (MERGED_COLUMNS, default_failures_path, read_failures,
                                     write_failures)
from clipvip.data.frame_store import INDEX_FORMAT, FrameStore, IncompleteStoreError
from clipvip.stage import UserError, stage_main, write_json_atomic, write_text_atomic

_SHARD_FILE = re.compile(r"^\d{5}\.txt$")


def shard_count(n_ids: int, shard_size: int) -> int:
    """Number of shards for ``n_ids`` ids at ``shard_size`` per shard (0 for no ids)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return math.ceil(n_ids / shard_size)


def read_clip_ids(paths) -> list[str]:
    """Sorted, deduplicated union of the ``clip_id`` of every line of the annotation JSONL files.

    Every id is validated as ``read_annotations`` does (``clipvip.data.annotations._clip_id``): null, empty,
    non-string ids and ids with surrounding whitespace or line breaks raise ``ValueError`` naming file:line
    (an id with a line break would split into two lines of a shard list and vanish from store and manifest).
    """
    return read_clip_ids_and_overlaps(paths)[0]


def read_clip_ids_and_overlaps(paths) -> tuple[list[str], dict[tuple[str, str], list]]:
    """``(read_clip_ids(paths), overlaps)``; ``overlaps[(file_a, file_b)] = [count, first ids (<= 10)]`` for
    clip ids that appear in two different files (e.g. train and test of one dataset)."""
    from clipvip.data.annotations import _clip_id

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    first_file: dict[str, int] = {}
    shared: dict[tuple[str, str], dict] = {}
    for number, path in enumerate(paths):
        try:
            fh = open(path, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read annotation file {path}: {exc.strerror or exc}") from None
        with fh:
            for line_number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not an annotation line with a clip_id (not valid JSON: {exc.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{where}: not an annotation line with a clip_id (a JSON {type(obj).__name__})")
                clip_id = _clip_id(obj, where)
                seen = first_file.setdefault(clip_id, number)
                if seen != number:
                    shared.setdefault((paths[seen], path), {})[clip_id] = None  # a dict keeps file order
    overlaps = {pair: [len(ids), list(itertools.islice(ids, 10))] for pair, ids in shared.items()}
    return sorted(first_file), overlaps


def write_shard_id_lists(clip_ids: list[str], shard_size: int, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``out_dir/00000.txt`` ... atomically; remove numbered lists left from a run with more shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = shard_count(len(clip_ids), shard_size)
    written = []
    for shard in range(count):
        path = out_dir / f"{shard:05d}.txt"
        write_text_atomic(path, "".join(f"{clip_id}\n" for clip_id in
                                        clip_ids[shard * shard_size:(shard + 1) * shard_size]))
        written.append(path)
    for stale in out_dir.iterdir():
        if _SHARD_FILE.match(stale.name) and int(stale.name[:5]) >= count:
            stale.unlink()
    return written


@stage_main("split-ids")
def split_ids_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip split-ids", description="split clip ids into shard lists")
    parser.add_argument("--ids-from", nargs="+", required=True, help="annotation JSONL files (clip_id per line)")
    parser.add_argument("--shard-size", type=int, required=True, help="clip ids per shard")
    parser.add_argument("--out-dir", required=True, help="folder for 00000.txt, 00001.txt, ...")
    args = parser.parse_args(argv)
    try:
        clip_ids, overlaps = read_clip_ids_and_overlaps(args.ids_from)
        for (a, b), (count, first) in overlaps.items():
            print(f"clipvip split-ids: warning: {count} clip ids are in both {a} and {b} (first: "
                  f"{', '.join(first)}): a model trained on one split is scored on clips it has seen",
                  file=sys.stderr)
        if not clip_ids:
            raise ValueError(f"no clip ids in {', '.join(args.ids_from)}")
        written = write_shard_id_lists(clip_ids, args.shard_size, args.out_dir)
    except FileNotFoundError as exc:
        raise UserError(f"annotation file not found: {exc.filename}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"split-ids: {len(clip_ids)} clip ids -> {len(written)} shards of <= {args.shard_size} in {args.out_dir}")
    return 0


def build_index(shards: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Verify every shard is complete, merge their failure manifests, write ``out`` (index.json) and the
    sorted clip-id table ``index.arrow`` beside it (ids held as Arrow buffers, never a Python dict)."""
    import pyarrow as pa

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shard_paths, shard_ids, merged, settings = [], [], [], None
    for shard in map(Path, shards):
        if not shard.exists():
            raise FileNotFoundError(f"frame store shard {shard} does not exist")
        with FrameStore(shard) as store:  # raises IncompleteStoreError for a killed writer's file
            ids = pa.array(store.ids(), type=pa.large_string())
            shard_settings = {k: v for k, v in store.settings.items()
                              if k not in ("complete", "num_clips", "failures_manifest")}
            manifest = shard.parent / store.settings.get("failures_manifest", default_failures_path(shard).name)
        if settings is None:
            settings = shard_settings
        elif shard_settings != settings:
            raise ValueError(f"shard {shard} was extracted with settings {shard_settings}, unlike the first "
                             f"shard's {settings}; re-extract so all shards of a dataset match")
        if not manifest.exists():
            raise FileNotFoundError(f"failure manifest {manifest} of shard {shard} is missing")
        relative = os.path.relpath(shard, out.parent)
        for row in read_failures(manifest).itertuples(index=False):
            merged.append((row.clip_id, row.reason, row.detail, relative))
        shard_paths.append(relative)
        shard_ids.append(ids)
    return write_index(out, shard_paths, shard_ids, merged, settings or {})


def write_index(out: str | os.PathLike, shard_paths: list[str], shard_ids: list, failures: list[tuple],
                settings: dict) -> dict:
    """Write ``index.arrow`` (from each shard's ids, Arrow arrays or lists), ``failures.tsv`` (rows
    ``(clip_id, reason, detail, shard)``) and ``index.json`` beside ``out``; ``shard_paths`` relative to it."""
    import pyarrow as pa

    from clipvip.data.corpus import write_clip_ids

    out = Path(out)
    shard_ids = [ids if isinstance(ids, pa.Array) else pa.array(list(ids), type=pa.large_string())
                 for ids in shard_ids]
    index_uuid = uuid.uuid4().hex
    ids_path = out.with_suffix(".arrow")
    try:
        counts = write_clip_ids(ids_path, shard_ids, {"index_uuid": index_uuid})
    except ValueError as exc:  # a clip in two shards: name the files, not the shard numbers
        match = re.search(r"shard (\d+) and shard (\d+)", str(exc))
        if match:
            a, b = (shard_paths[int(g)] for g in match.groups())
            exc = ValueError(str(exc)[:match.start()] + f"{out.parent / a} and {out.parent / b}")
        raise exc from None
    failures_path = out.parent / "failures.tsv"
    write_failures(failures_path, failures, columns=MERGED_COLUMNS)
    index = {"format": INDEX_FORMAT, "shards": list(shard_paths), "num_clips": counts["num_clips"],
             "num_failures": len(failures), "failures": failures_path.name, "settings": settings,
             "ids": ids_path.name, "index_uuid": index_uuid, "shard_num_clips": counts["shard_num_clips"]}
    write_json_atomic(out, index)
    return index


@stage_main("frames-index")
def index_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip frames-index", description="merge frame-store shards")
    parser.add_argument("--shards", nargs="+", required=True, help="the dataset's shard .h5 files")
    parser.add_argument("--out", required=True, help="index.json to write (failures.tsv goes beside it)")
    args = parser.parse_args(argv)
    try:
        index = build_index(args.shards, args.out)
    except (ValueError, IncompleteStoreError) as exc:
        raise UserError(str(exc)) from None
    except FileNotFoundError as exc:
        raise UserError(f"frame store not found: {exc.filename}") from None
    print(f"frames-index: {index['num_clips']} clips in {len(index['shards'])} shards, "
          f"{index['num_failures']} failures -> {args.out}")
    return 0
