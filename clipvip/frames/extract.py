"""``clipvip frames``: decode the listed videos with decord into one HDF5 frame-store shard.

Usage:
    clipvip frames --video-dir videos/ --ids ids/00000.txt --out frames/00000.h5 \
        [--failures frames/00000.failures.tsv] --options '{"num_frames": 12, "short_side": 224}'

Per clip (N decoded frames) the shard stores, as JPEG bytes, each distinct frame among
    uniform  ``np.linspace(0, N-1, num_frames).astype(int)``  (the evaluation frames)
    pool     ``np.linspace(0, N-1, pool_size).astype(int)``, or all N frames if N <= pool_size (training);
             with ``pool_fps`` (fixed-rate pool, VideoCLIP-style window sampling) instead the frame nearest to
             each grid time ``(k + 0.5) / pool_fps``, k < ceil(duration * pool_fps): index
             ``min(N-1, floor(t * fps))``, distinct; their presentation times ``index / fps`` are the clip
             attribute ``pool_times`` (seconds). Only those frames are decoded (decord seeks; the exact PyAV
             fallback decodes all but keeps only them), never every frame.
    middle   ``(N - 1) // 2``                                  (the image-captioning frame)
resized so the short side is ``short_side`` (bicubic, antialiased; never cropped, never upscaled).

Options: ``FrameOptions`` (strict: an unknown key or a bad value is refused, see ``clipvip.stage``);
``decoder_threads`` defaults to the rule's ``threads`` (``--threads``).

Every listed id ends up either in the store or in the failure manifest (``clip_id``, ``reason``, ``detail``;
reasons: missing, empty, corrupt, truncated, no_video_stream, invalid_id). The exit status is 1 only when
failures exceed ``max_failure_fraction`` of the ids; the manifest is written either way, and then no store.
The first 10 failures are printed to stderr (``clip_id: reason: detail``, the rule's log) and
``--failures-copy`` writes the manifest a second time outside the rule's outputs (the workflow uses
``R/failures/frames/<ds>/<k>.failures.tsv``): a failed Snakemake job deletes its outputs, the copy stays.
A ``--video-dir`` that does not exist or an ``--ids`` file that cannot be read is one error line, exit 2.

Atomicity: the store is written to ``<out>.tmp-<pid>``, marked ``complete=True`` last, the manifest is
renamed into place, then the store; so a store's existence implies its manifest's, and a killed job leaves
at most a temp file that ``FrameStore`` refuses. Leftover temp files of earlier killed runs of the same
shard are deleted at start (the workflow runs one writer per shard).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections import Counter
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import simplejpeg
from tqdm import tqdm

from clipvip.stage import (SigtermGuard, StageOptions, UserError, hide_progress, is_disk_full, option, parse_options,
                           stage_main)
from clipvip.data.manifest import default_failures_path, log_first_failures, write_failures
from clipvip.data.frame_store import STORE_FORMAT
from clipvip.data.sampling import uniform_indices
from clipvip.video_io import VideoError, decode_frames, resize_short_side, resolve_video_path


@dataclass
class FrameOptions(StageOptions):
    STAGE = "frames"
    num_frames: int = option(12, "T evaluation frames stored exactly (np.linspace(0, N-1, T))", minimum=1,
                             maximum=256)
    pool_size: int = option(32, "training-pool frames stored per clip (jitter samples from it)", minimum=1,
                            maximum=1024)
    pool_fps: float | None = option(None, "fixed-rate training pool at this many frames per second (e.g. 1-3; "
                                    "attrs pool_times) instead of pool_size frames; None = fixed-count pool",
                                    minimum=0.01, maximum=60.0)
    short_side: int = option(224, "short side of stored frames in pixels (not cropped; 0 = keep)", minimum=0,
                             maximum=1024)
    jpeg_quality: int = option(90, "JPEG quality of stored frames", minimum=50, maximum=100)
    max_failure_fraction: float = option(0.1, "the shard job fails only when more of its videos fail than this",
                                         minimum=0.0, maximum=1.0)
    extensions: list = option(["mp4", "avi", "mkv", "webm", "mov"], "video file extensions tried after <clip_id>")
    decoder_threads: int | None = option(None, "decord/PyAV threads per video; None = the rule's threads "
                                         "(--threads), 1 without", minimum=0)


def pool_indices(num_frames: int, pool_size: int) -> np.ndarray:
    """P frames uniform over N, or all N frames when N <= P."""
    if num_frames <= pool_size:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, pool_size).astype(int)


def fixed_rate_pool(num_frames: int, fps: float, pool_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(decoded indices int64 [P], their times index / fps float64 [P]) of a fixed-rate pool: the frame
    nearest-below each grid time (k + 0.5) / pool_fps for k < ceil(duration * pool_fps), distinct, sorted.

    Without a usable ``fps`` the video is treated as 1 frame per second of nothing known: all N frames' slots
    are spread over N seconds (``fps = 1``)."""
    fps = float(fps) if fps and fps > 0 else 1.0
    duration = num_frames / fps
    count = max(1, int(np.ceil(duration * pool_fps - 1e-9)))
    grid = (np.arange(count) + 0.5) / float(pool_fps)
    indices = np.unique(np.clip(np.floor(grid * fps + 1e-9).astype(np.int64), 0, num_frames - 1))
    return indices, indices / fps


def middle_index(num_frames: int) -> int:
    return (num_frames - 1) // 2


def clip_pool(num_frames: int, options: FrameOptions, fps: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(pool indices, pool times or None): the fixed-rate pool when ``options.pool_fps`` is set."""
    if options.pool_fps:
        return fixed_rate_pool(num_frames, fps or 0.0, options.pool_fps)
    return pool_indices(num_frames, options.pool_size), None


def frames_to_store(num_frames: int, options: FrameOptions, fps: float | None = None) -> list[int]:
    """Sorted distinct decoded indices a clip of N frames needs (uniform ∪ pool ∪ middle)."""
    wanted = set(uniform_indices(num_frames, options.num_frames).tolist())
    wanted |= set(clip_pool(num_frames, options, fps)[0].tolist())
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
    decoded = decode_frames(path, lambda n, fps: frames_to_store(n, options, fps), threads=options.decoder_threads)
    n = decoded.num_frames
    pool, pool_times = clip_pool(n, options, decoded.fps)
    resized = [resize_short_side(frame, options.short_side) for frame in decoded.frames]
    jpegs = [np.frombuffer(simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=options.jpeg_quality,
                                                  colorspace="RGB"), np.uint8) for frame in resized]
    attrs = {
        "num_frames": n, "fps": decoded.fps, "duration": n / decoded.fps if decoded.fps else 0.0,
        "frame_indices": np.asarray(decoded.indices, np.int64),
        "uniform_indices": uniform_indices(n, options.num_frames).astype(np.int64),
        "pool_indices": np.asarray(pool, np.int64),
        "middle_index": middle_index(n),
        "orig_height": decoded.frames.shape[1], "orig_width": decoded.frames.shape[2],
        "height": resized[0].shape[0], "width": resized[0].shape[1],
        "decoder": decoded.decoder, "decoder_note": decoded.note, "source": path.name,
    }
    if pool_times is not None:
        attrs["pool_times"] = np.asarray(pool_times, np.float64)
    return jpegs, attrs


def _write_clip(clips: h5py.Group, clip_id: str, jpegs: list[np.ndarray], attrs: dict) -> None:
    dataset = clips.create_dataset(clip_id, (len(jpegs),), dtype=h5py.vlen_dtype(np.uint8))
    for position, jpeg in enumerate(jpegs):
        dataset[position] = jpeg
    for key, value in attrs.items():
        dataset.attrs[key] = value


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Clip ids, one per line (blank lines skipped, duplicates kept once, order preserved)."""
    try:
        with open(path) as fh:
            return list(dict.fromkeys(line.strip() for line in fh if line.strip()))
    except OSError as exc:
        raise UserError(f"--ids: cannot read {path}: {exc.strerror or exc}") from None


def publish_shard(tmp: Path, out: Path, failures: list, manifests: list, terminated: SigtermGuard,
                  too_many: bool) -> bool:
    """A shard writer's last step: the failure manifest(s) (``None`` entries skipped), then, unless too many
    clips failed, ``tmp`` renamed to ``out``; a SIGTERM seen on the way (``terminated``) stops it before either.
    Returns whether ``out`` was published."""
    terminated.check()
    for path in manifests:
        if path:
            write_failures(Path(path), failures)
    terminated.check()
    if too_many:
        return False
    os.replace(tmp, out)
    return True


def extract_shard(video_dir: str | os.PathLike, clip_ids: list[str], out: str | os.PathLike,
                  options: FrameOptions | dict | None = None, failures_path: str | os.PathLike | None = None,
                  progress: bool | None = None, failures_copy: str | os.PathLike | None = None) -> ShardResult:
    """Decode ``clip_ids`` from ``video_dir`` into the shard ``out`` (see the module docstring);
    ``failures_copy``: a second manifest outside the rule's outputs (written whether or not the store is)."""
    options = options if isinstance(options, FrameOptions) else FrameOptions.from_dict(options)
    if options.decoder_threads is None:
        options = dataclasses.replace(options, decoder_threads=1)
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
    terminated = SigtermGuard.install()
    try:
        with h5py.File(tmp, "w", locking=False) as store:
            settings = asdict(options)
            settings.pop("max_failure_fraction")
            for key, value in settings.items():
                if value is not None:  # HDF5 has no null (pool_fps=None: a fixed-count pool)
                    store.attrs[key] = value
            store.attrs["format"] = STORE_FORMAT
            store.attrs["complete"] = False
            clips = store.create_group("clips")
            for clip_id in tqdm(clip_ids, desc=f"frames {out.name}", unit="video", disable=hide_progress(progress),
                                mininterval=2.0):
                terminated.check()
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
        published = publish_shard(tmp, out, failures, [failures_path, failures_copy], terminated,
                                  len(failures) > options.max_failure_fraction * len(clip_ids))
    except OSError as exc:
        if is_disk_full(exc) and not exc.filename:  # h5py: "file write failed: ... errno = 28" and no file name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from exc
        raise
    finally:
        if not published:
            tmp.unlink(missing_ok=True)
        terminated.restore()
    return ShardResult(len(clip_ids), len(clip_ids) - len(failures), failures, dict(decoders),
                       out if published else None, failures_path)


@stage_main("frames")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip frames", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + FrameOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-dir", required=True, help="folder holding <id> or <id>.<ext> video files")
    parser.add_argument("--ids", required=True, help="text file, one clip id per line")
    parser.add_argument("--out", required=True, help="shard to write, e.g. frames/<ds>/00000.h5")
    parser.add_argument("--failures", default=None, help="failure manifest TSV (default <out stem>.failures.tsv)")
    parser.add_argument("--failures-copy", default=None,
                        help="second copy of the manifest outside the rule's outputs (survives a failed job), "
                             "e.g. R/failures/frames/<ds>/<k>.failures.tsv")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of FrameOptions fields")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPUs of the job (the rule's threads): decoder threads unless options set them")
    args = parser.parse_args(argv)
    options = FrameOptions.from_dict(parse_options(args.options))
    if options.decoder_threads is None:
        options.decoder_threads = max(1, args.threads)
    clip_ids = read_id_list(args.ids)
    if not Path(args.video_dir).is_dir():
        raise UserError(f"--video-dir {args.video_dir} does not exist or is not a folder "
                        f"({len(clip_ids)} clips listed in {args.ids})")
    started = time.perf_counter()
    result = extract_shard(args.video_dir, clip_ids, args.out, options, args.failures,
                           failures_copy=args.failures_copy)
    seconds = time.perf_counter() - started
    reasons = dict(Counter(reason for _, reason, _ in result.failures))
    print(f"frames: {result.stored}/{result.num_ids} clips decoded ({result.decoders}) in {seconds:.1f}s; "
          f"{len(result.failures)} failures {reasons or ''} listed in {result.failures_path}", flush=True)
    log_first_failures("frames", result.failures)
    if result.store_path is None:
        where = (f"{args.failures_copy} (kept; the rule's output {result.failures_path} is deleted with a failed "
                 f"job)") if args.failures_copy else str(result.failures_path)
        print(f"clipvip frames: error: {len(result.failures)} of {result.num_ids} videos failed "
              f"{reasons}, more than max_failure_fraction={options.max_failure_fraction}; no store written to "
              f"{args.out}; see the failure manifest {where}", file=sys.stderr)
        return 1
    return 0
