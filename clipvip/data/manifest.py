"""Failure manifests: one TSV per shard (``clip_id``, ``reason``, ``detail``), merged per dataset (+ ``shard``).

Usage:
    write_failures("00000.failures.tsv", [("vid7", "missing", "no file videos/vid7{,.mp4,...}")])
    read_failures("failures.tsv")  -> pandas.DataFrame with string columns

Details are flattened to one line without tabs so the file stays a plain, quote-free TSV.
"""
from __future__ import annotations

import csv
import errno
import os
import sys
import re
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

SHARD_COLUMNS = ("clip_id", "reason", "detail")
MERGED_COLUMNS = ("clip_id", "reason", "detail", "shard")


def default_failures_path(store_path: str | os.PathLike) -> Path:
    """``<k>.h5`` -> ``<k>.failures.tsv`` in the same folder."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".failures.tsv")


def _clean(value) -> str:
    return re.sub(r"\s+", " ", str(value)).strip()


def write_failures(path: str | os.PathLike, rows: Iterable[Sequence], columns: Sequence[str] = SHARD_COLUMNS) -> None:
    """Write the manifest atomically (temp file + rename, the temp file removed on failure); an empty manifest
    still has its header. An OS error that names no file (a full disk at close) is re-raised naming ``path``."""
    from clipvip.stage import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            fh.write("\t".join(columns) + "\n")
            for row in rows:
                if len(row) != len(columns):
                    raise ValueError(f"failure row {row!r} does not match columns {columns}")
                fh.write("\t".join(_clean(value) for value in row) + "\n")
    except OSError as exc:
        if exc.filename:
            raise
        errno_ = exc.errno or (errno.ENOSPC if "No space left" in str(exc) else None)
        raise OSError(errno_, exc.strerror or str(exc), str(path)) from exc


def log_first_failures(stage: str, rows, limit: int = 10) -> None:
    """The first ``limit`` failures as ``clip_id: reason: detail`` lines on stderr (the rule's log, which a
    failed Snakemake job keeps while it deletes the job's declared outputs)."""
    rows = list(rows)
    for clip_id, reason, detail in rows[:limit]:
        print(f"{stage}: failed: {clip_id}: {reason}: {' '.join(str(detail).split())[:300]}", file=sys.stderr)
    if len(rows) > limit:
        print(f"{stage}: ... and {len(rows) - limit} more failures", file=sys.stderr)


def read_failures(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by ``write_failures`` (all columns as strings, no quoting)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
