"""``clipvip frames``: decode the listed videos with decord into one HDF5 frame-store shard.

Usage:
    clipvip frames --video-dir videos/ --ids ids/00000.txt --out frames/00000.h5 \
        [--failures frames/00000.failures.tsv] --options '{"num_frames": 12, "short_side": 224}'

Per clip (N decoded frames) the shard stores, as JPEG bytes, each distinct frame among
    uniform  ``np.linspace(0, N-1, num_frames).astype(int)``  (the evaluation frames)
    pool     ``np.linspace(0, N-1, pool_size).astype(int)``, or all N frames if N <= pool_size (training)
    middle   ``(N - 1) // 2``                                  (the image-captioning frame)
resized so the short side is ``short_side`` (bicubic, antialiased; never cropped, never upscaled).

Options (``FrameOptions``; unknown keys are reported and ignored):
    num_frames 12, pool_size 32, short_side 224 (0 = keep), jpeg_quality 90, max_failure_fraction 0.1,
    extensions ["mp4", "avi", "mkv", "webm", "mov"], decoder_threads 1.

Every listed id ends up either in the store or in the failure manifest (``clip_id``, ``reason``, ``detail``;
reasons: missing, empty, corrupt, truncated, no_video_stream, invalid_id). The exit status is 1 only when
failures exceed ``max_failure_fraction`` of the ids; the manifest is written either way, and then no store.

Atomicity: the store is written to ``<out>.tmp-<pid>``, marked ``complete=True`` last, the manifest is
renamed into place, then the store; so a store's existence implies its manifest's, and a killed job leaves
at most a temp file that ``FrameStore`` refuses. Leftover temp files of earlier killed runs of the same
shard are deleted at start (the workflow runs one writer per shard).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import simplejpeg
from tqdm import tqdm

from clipvip.cli import parse_options
from clipvip.frames.manifest import default_failures_path, write_failures
from clipvip.frames.store import STORE_FORMAT, uniform_indices
from clipvip.video_io import VideoError, decode_frames, resize_short_side, resolve_video_path


@dataclass
class FrameOptions:
    num_frames: int = 12
    pool_size: int = 32
    short_side: int = 224
    jpeg_quality: int = 90
    max_failure_fraction: float = 0.1
    extensions: list = field(default_factory=lambda: ["mp4", "avi", "mkv", "webm", "mov"])
    decoder_threads: int = 1

    @classmethod
    def from_dict(cls, values: dict | None, *, warn=print) -> "FrameOptions":
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            warn(f"clipvip frames: ignoring unknown option keys {unknown}")
        options = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        checks = [("num_frames", options.num_frames >= 1), ("pool_size", options.pool_size >= 1),
                  ("short_side", options.short_side >= 0), ("jpeg_quality", 1 <= options.jpeg_quality <= 100),
                  ("max_failure_fraction", 0 <= options.max_failure_fraction <= 1),
                  ("decoder_threads", options.decoder_threads >= 0)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"clipvip frames: option {name}={getattr(options, name)!r} is out of range")
        return options


def pool_indices(num_frames: int, pool_size: int) -> np.ndarray:
    """P frames uniform over N, or all N frames when N <= P."""
    if num_frames <= pool_size:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, pool_size).astype(int)


def middle_index(num_frames: int) -> int:
    return (num_frames - 1) // 2


def frames_to_store(num_frames: int, options: FrameOptions) -> list[int]:
    """Sorted distinct decoded indices a clip of N frames needs (uniform ∪ pool ∪ middle)."""
    wanted = set(uniform_indices(num_frames, options.num_frames).tolist())
    wanted |= set(pool_indices(num_frames, options.pool_size).tolist())
    wanted.add(middle_index(num_frames))
    return sorted(wanted)


@dataclass
class ShardResult:
    num_ids: int
    stored: int
    failures: list[tuple[str, str, str]]
    decoders: dict
    store_path: Path | None      # None when too many failures kept the store from being published
    failures_path: Path


def _check_clip_id(clip_id: str) -> None:
    if not clip_id or "/" in clip_id or clip_id in (".", ".."):
        raise VideoError("invalid_id", f"clip id {clip_id!r} cannot name a file and an HDF5 dataset")


def _extract_clip(video_dir: Path, clip_id: str, options: FrameOptions):
    _check_clip_id(clip_id)
    path = resolve_video_path(video_dir, clip_id, options.extensions)
    if path is None:
        raise VideoError("missing", f"no file {video_dir / clip_id} nor with extension "
                                    f"{{{','.join(options.extensions)}}}")
    if path.stat().st_size == 0:
        raise VideoError("empty", f"{path} is 0 bytes")
    decoded = decode_frames(path, lambda n: frames_to_store(n, options), threads=options.decoder_threads)
    n = decoded.num_frames
    resized = [resize_short_side(frame, options.short_side) for frame in decoded.frames]
    jpegs = [np.frombuffer(simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=options.jpeg_quality,
                                                  colorspace="RGB"), np.uint8) for frame in resized]
    attrs = {
        "num_frames": n, "fps": decoded.fps, "duration": n / decoded.fps if decoded.fps else 0.0,
        "frame_indices": np.asarray(decoded.indices, np.int64),
        "uniform_indices": uniform_indices(n, options.num_frames).astype(np.int64),
        "pool_indices": pool_indices(n, options.pool_size).astype(np.int64),
        "middle_index": middle_index(n),
        "orig_height": decoded.frames.shape[1], "orig_width": decoded.frames.shape[2],
        "height": resized[0].shape[0], "width": resized[0].shape[1],
        "decoder": decoded.decoder, "decoder_note": decoded.note, "source": path.name,
    }
    return jpegs, attrs


def _write_clip(clips: h5py.Group, clip_id: str, jpegs: list[np.ndarray], attrs: dict) -> None:
    dataset = clips.create_dataset(clip_id, (len(jpegs),), dtype=h5py.vlen_dtype(np.uint8))
    for position, jpeg in enumerate(jpegs):
        dataset[position] = jpeg
    for key, value in attrs.items():
        dataset.attrs[key] = value


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Clip ids, one per line (blank lines skipped, duplicates kept once, order preserved)."""
    with open(path) as fh:
        return list(dict.fromkeys(line.strip() for line in fh if line.strip()))


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # runs the `finally` that removes the temp store


def extract_shard(video_dir: str | os.PathLike, clip_ids: list[str], out: str | os.PathLike,
                  options: FrameOptions | dict | None = None, failures_path: str | os.PathLike | None = None,
                  progress: bool | None = None) -> ShardResult:
    """Decode ``clip_ids`` from ``video_dir`` into the shard ``out`` (see the module docstring)."""
    options = options if isinstance(options, FrameOptions) else FrameOptions.from_dict(options)
    video_dir, out = Path(video_dir), Path(out)
    failures_path = Path(failures_path) if failures_path else default_failures_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    failures: list[tuple[str, str, str]] = []
    decoders: Counter = Counter()
    published = False
    previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm) if _in_main_thread() else None
    try:
        with h5py.File(tmp, "w", locking=False) as store:
            settings = asdict(options)
            settings.pop("max_failure_fraction")
            for key, value in settings.items():
                store.attrs[key] = value
            store.attrs["format"] = STORE_FORMAT
            store.attrs["complete"] = False
            clips = store.create_group("clips")
            # progress=None: tqdm shows the bar only on a terminal.
            hide_bar = None if progress is None else not progress
            for clip_id in tqdm(clip_ids, desc=f"frames {out.name}", unit="video", disable=hide_bar, mininterval=2.0):
                try:
                    jpegs, attrs = _extract_clip(video_dir, clip_id, options)
                except VideoError as exc:
                    failures.append((clip_id, exc.reason, exc.detail))
                    continue
                _write_clip(clips, clip_id, jpegs, attrs)
                decoders[attrs["decoder"]] += 1
            store.attrs["num_clips"] = len(clips)
            store.attrs["failures_manifest"] = os.path.relpath(failures_path, out.parent)
            store.attrs["complete"] = True
        write_failures(failures_path, failures)
        too_many = len(failures) > options.max_failure_fraction * len(clip_ids)
        if not too_many:
            os.replace(tmp, out)
            published = True
    finally:
        if not published:
            tmp.unlink(missing_ok=True)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return ShardResult(len(clip_ids), len(clip_ids) - len(failures), failures, dict(decoders),
                       out if published else None, failures_path)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip frames", description=__doc__.splitlines()[0])
    parser.add_argument("--video-dir", required=True, help="folder holding <id> or <id>.<ext> video files")
    parser.add_argument("--ids", required=True, help="text file, one clip id per line")
    parser.add_argument("--out", required=True, help="shard to write, e.g. frames/<ds>/00000.h5")
    parser.add_argument("--failures", default=None, help="failure manifest TSV (default <out stem>.failures.tsv)")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of FrameOptions fields")
    args = parser.parse_args(argv)
    try:
        options = FrameOptions.from_dict(parse_options(args.options), warn=lambda m: print(m, file=sys.stderr))
    except (TypeError, ValueError) as exc:
        print(f"clipvip frames: {exc}", file=sys.stderr)
        return 2
    clip_ids = read_id_list(args.ids)
    started = time.perf_counter()
    result = extract_shard(args.video_dir, clip_ids, args.out, options, args.failures)
    seconds = time.perf_counter() - started
    reasons = dict(Counter(reason for _, reason, _ in result.failures))
    print(f"frames: {result.stored}/{result.num_ids} clips decoded ({result.decoders}) in {seconds:.1f}s; "
          f"{len(result.failures)} failures {reasons or ''} listed in {result.failures_path}")
    if result.store_path is None:
        print(f"clipvip frames: {len(result.failures)} of {result.num_ids} videos failed, more than "
              f"max_failure_fraction={options.max_failure_fraction}; no store written to {args.out}; "
              f"see the failure manifest {result.failures_path}", file=sys.stderr)
        return 1
    return 0
