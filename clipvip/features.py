"""``clipvip features``: one feature vector per second of video (VideoCLIP inputs) into one HDF5 shard.

Usage:
    clipvip features --video-dir videos/ --ids ids/00000.txt --out features/<ds>/00000.h5 \
        [--frames frames/<ds>/00000.h5] [--failures features/<ds>/00000.failures.tsv] \
        --options '{"extractor": "clip", "model": "results/pretrained/clip", "device": "auto"}'

Per clip the shard holds ``/clips/<clip_id>``: float16 [seconds, D], rows L2-normalised, from the
``FEATURE_EXTRACTORS`` entry ``extractor`` (``clipvip.features_extractors``):
  * ``clip``: the middle frame of each second through a CLIP image tower (``model``: a HF CLIP folder);
  * ``s3d``: MIL-NCE S3D-G on 30-fps frames (``weights``: the official ``s3d_howto100m.pth``; without weights
    only with ``allow_random_weights: true``, for tests).
Frames come from the fixed-rate frame pool (frames option ``pool_fps``) of ``--frames`` (the frame-store shard
of the same shard number) when the clip is stored there with a pool the extractor can use (``clip``: any
rate, the frame nearest to each second's middle; ``s3d``: a 30-fps pool only); otherwise (``source: video``,
no pool, or the clip missing from the frame store) the video is decoded again with ``clipvip.video_io``,
only the frames needed (``clip``: one per second; ``s3d``: a 30-fps grid, nearest-below frame, repeats for
slower videos). Clip attrs: ``duration`` (N / fps), ``seconds``, ``fps``, ``num_frames``, ``source``
(``frames`` | ``video``), ``frames_used``.

Contract (as ``clipvip frames``): every listed id ends up in the store or in the failure manifest
(``clip_id``, ``reason``, ``detail``; reasons of ``clipvip.video_io.FAILURE_REASONS`` plus ``too_short`` for
a video shorter than one feature); exit 1 only when failures exceed ``max_failure_fraction`` (the manifest is
written, the store not); the store is written to ``<out>.tmp-<pid>``, marked ``complete=True`` last, renamed
after its manifest; a kill (SIGTERM included) leaves no store. Bad options / paths: one line, exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from clipvip.data.feature_store import FEATURE_FORMAT
from clipvip.data.manifest import default_failures_path, log_first_failures
from clipvip.frames.extract import _check_clip_id, publish_shard, read_id_list
from clipvip.registry import FEATURE_EXTRACTORS
from clipvip.stage import (OptionError, SigtermGuard, StageOptions, UserError, hide_progress, is_disk_full, option,
                           parse_options, resolve_device, stage_main)
from clipvip.video_io import VideoError, decode_frames, resolve_video_path


@dataclass
class FeatureOptions(StageOptions):
    STAGE = "features"
    extractor: str = option("clip", "per-second feature extractor (FEATURE_EXTRACTORS)",
                            choices=lambda: FEATURE_EXTRACTORS.names())
    model: str | None = option(None, "clip: HF CLIP folder whose image tower embeds each second's middle frame")
    weights: str | None = option(None, "s3d: path of the MIL-NCE s3d_howto100m.pth weights")
    allow_random_weights: bool = option(False, "s3d without weights: a seeded random network (tests only)")
    device: str = option("auto", "auto (cuda when available) | cpu | cuda[:N]")
    batch_size: int = option(64, "frames (clip) or 1-s chunks (s3d) per forward pass", minimum=1)
    size: int = option(224, "s3d input size (short side resize + centre crop)", minimum=32, maximum=512)
    source: str = option("auto", "auto (the fixed-rate frame pool when usable, else decode) | frames | video",
                         choices=("auto", "frames", "video"))
    max_failure_fraction: float = option(0.1, "the shard job fails only when more of its videos fail than this",
                                         minimum=0.0, maximum=1.0)
    extensions: list = option(["mp4", "avi", "mkv", "webm", "mov"], "video file extensions tried after <clip_id>")
    decoder_threads: int | None = option(None, "decoder threads per video; None = the rule's threads", minimum=0)

    def check(self, where: str, **context) -> None:
        if self.extractor == "clip" and not self.model:
            raise OptionError(f"{where}.model", "required for extractor clip (a HF CLIP model folder)")
        if self.extractor == "s3d" and not self.weights and not self.allow_random_weights:
            raise OptionError(f"{where}.weights", "required for extractor s3d (s3d_howto100m.pth; nothing is "
                                                  "downloaded) unless allow_random_weights: true")


def build_extractor(options: FeatureOptions):
    device = resolve_device(options.device)
    cls = FEATURE_EXTRACTORS.get(options.extractor)
    if options.extractor == "clip":
        return cls(model_dir=options.model, device=device, batch_size=options.batch_size)
    if options.extractor == "s3d":
        return cls(weights=options.weights, device=device, size=options.size, batch_size=options.batch_size)
    kwargs = {k: v for k, v in (("model_dir", options.model), ("weights", options.weights)) if v}
    return cls(device=device, **kwargs)


def seconds_of(duration: float) -> int:
    return max(1, int(np.floor(float(duration) + 1e-6)))


def video_pick(extractor):
    """The decode picker of an extractor: pick(N, fps) -> indices (clip: one per second; s3d: 30-fps grid)."""
    rate = getattr(extractor, "fps", None)

    def pick(n: int, fps: float):
        fps = fps if fps and fps > 0 else 1.0
        duration = n / fps
        if rate:
            grid = (np.arange(int(np.floor(duration * rate + 1e-6))) + 0.5) / rate
        else:
            grid = np.arange(seconds_of(duration)) + 0.5
        if len(grid) == 0:
            return [0]
        return np.clip(np.floor(grid * fps + 1e-9).astype(np.int64), 0, n - 1).tolist()

    return pick


def _pool_usable(frame_store, clip_id: str, extractor) -> dict | None:
    if frame_store is None or clip_id not in frame_store:
        return None
    meta = frame_store.meta(clip_id)
    times = meta.get("pool_times")
    if times is None:
        return None
    rate = getattr(extractor, "fps", None)
    pool_fps = frame_store.settings.get("pool_fps")
    if rate and (not pool_fps or abs(float(pool_fps) - float(rate)) > 1e-6):
        return None
    return meta


def clip_features(extractor, clip_id: str, video_dir: Path, options: FeatureOptions, frame_store=None):
    """(float16 [S, D], attrs) of one clip; raises ``VideoError`` on bad input."""
    _check_clip_id(clip_id)
    meta = _pool_usable(frame_store, clip_id, extractor) if options.source != "video" else None
    if meta is not None:
        frames, _ = frame_store.pool(clip_id)
        times = np.asarray(meta["pool_times"], np.float64)
        duration, fps, n, source = float(meta["duration"]), float(meta["fps"]), int(meta["num_frames"]), "frames"
    else:
        if options.source == "frames":
            raise VideoError("missing", f"no usable fixed-rate frame pool for {clip_id} in "
                                        f"{getattr(frame_store, 'path', None)} (source: frames)")
        path = resolve_video_path(video_dir, clip_id, options.extensions)
        if path is None:
            raise VideoError("missing", f"no file {video_dir / clip_id} nor with extension "
                                        f"{{{','.join(options.extensions)}}}")
        if path.stat().st_size == 0:
            raise VideoError("empty", f"{path} is 0 bytes")
        pick = video_pick(extractor)
        decoded = decode_frames(path, pick, threads=options.decoder_threads or 1)
        n, fps = decoded.num_frames, float(decoded.fps) or 1.0
        wanted = np.asarray(pick(n, fps), np.int64)
        positions = np.searchsorted(np.asarray(decoded.indices), wanted)
        frames = decoded.frames[positions]                     # repeats where the video is slower than the grid
        times = wanted / fps
        duration, source = n / fps, "video"
    feats = extractor.extract(frames, times, duration)
    if len(feats) == 0:
        raise _TooShort(f"{clip_id}: {duration:.2f} s gives no whole feature of {extractor.__class__.__name__}")
    attrs = {"duration": duration, "seconds": int(len(feats)), "fps": fps, "num_frames": n, "source": source,
             "frames_used": int(len(frames))}
    return np.asarray(feats, np.float16), attrs


class _TooShort(Exception):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.reason, self.detail = "too_short", detail


@dataclass
class FeatureShardResult:
    num_ids: int
    stored: int
    failures: list[tuple[str, str, str]]
    sources: dict
    store_path: Path | None
    failures_path: Path


def extract_features_shard(video_dir, clip_ids: list[str], out, options: FeatureOptions | dict | None = None,
                           frames=None, failures_path=None, failures_copy=None, progress: bool | None = None,
                           extractor=None) -> FeatureShardResult:
    """Write the feature shard ``out`` for ``clip_ids`` (see the module docstring); ``frames``: a frame-store
    shard path (or ``FrameStore``) whose fixed-rate pools are used when present."""
    from clipvip.data.frame_store import FrameStore

    options = options if isinstance(options, FeatureOptions) else FeatureOptions.from_dict(options)
    if options.decoder_threads is None:
        options = dataclasses.replace(options, decoder_threads=1)
    video_dir, out = Path(video_dir), Path(out)
    failures_path = Path(failures_path) if failures_path else default_failures_path(out)
    frame_store = None
    if frames is not None and options.source != "video":
        frame_store = frames if isinstance(frames, FrameStore) else FrameStore(frames)
        try:
            frame_store._file()  # an incomplete frame store is an error, not a silent fallback
        except ValueError as exc:  # IncompleteStoreError
            raise UserError(f"--frames: {exc}") from None
    extractor = extractor or build_extractor(options)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    failures: list[tuple[str, str, str]] = []
    sources: Counter = Counter()
    published = False
    terminated = SigtermGuard.install()
    try:
        with h5py.File(tmp, "w", locking=False) as store:
            for key, value in asdict(options).items():
                if value is not None and key != "max_failure_fraction":
                    store.attrs[key] = value
            store.attrs["format"] = FEATURE_FORMAT
            store.attrs["dim"] = int(extractor.dim)
            store.attrs["random_weights"] = bool(getattr(extractor, "random_weights", False))
            store.attrs["complete"] = False
            clips = store.create_group("clips")
            for clip_id in tqdm(clip_ids, desc=f"features {out.name}", unit="video",
                                disable=hide_progress(progress), mininterval=2.0):
                terminated.check()
                try:
                    feats, attrs = clip_features(extractor, clip_id, video_dir, options, frame_store)
                except (VideoError, _TooShort) as exc:
                    failures.append((clip_id, exc.reason, exc.detail))
                    continue
                dataset = clips.create_dataset(clip_id, data=feats)
                for key, value in attrs.items():
                    dataset.attrs[key] = value
                sources[attrs["source"]] += 1
            store.attrs["num_clips"] = len(clips)
            store.attrs["failures_manifest"] = os.path.relpath(failures_path, out.parent)
            store.attrs["complete"] = True
        published = publish_shard(tmp, out, failures, [failures_path, failures_copy], terminated,
                                  len(failures) > options.max_failure_fraction * len(clip_ids))
    except OSError as exc:
        if is_disk_full(exc) and not exc.filename:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from exc
        raise
    finally:
        if not published:
            tmp.unlink(missing_ok=True)
        terminated.restore()
        if frame_store is not None and not isinstance(frames, FrameStore):
            frame_store.close()
    return FeatureShardResult(len(clip_ids), len(clip_ids) - len(failures), failures, dict(sources),
                              out if published else None, failures_path)


@stage_main("features")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip features", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + FeatureOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-dir", required=True, help="folder holding <id> or <id>.<ext> video files")
    parser.add_argument("--ids", required=True, help="text file, one clip id per line")
    parser.add_argument("--out", required=True, help="shard to write, e.g. features/<ds>/00000.h5")
    parser.add_argument("--frames", default=None, help="frame-store shard of the same ids (fixed-rate pool)")
    parser.add_argument("--failures", default=None, help="failure manifest TSV (default <out stem>.failures.tsv)")
    parser.add_argument("--failures-copy", default=None, help="second copy of the manifest (survives a failed job)")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of FeatureOptions fields")
    parser.add_argument("--threads", type=int, default=1, help="CPUs of the job: decoder threads unless set")
    args = parser.parse_args(argv)
    options = FeatureOptions.from_dict(parse_options(args.options))
    if options.decoder_threads is None:
        options.decoder_threads = max(1, args.threads)
    clip_ids = read_id_list(args.ids)
    if not Path(args.video_dir).is_dir():
        raise UserError(f"--video-dir {args.video_dir} does not exist or is not a folder")
    if args.frames and not Path(args.frames).is_file():
        raise UserError(f"--frames {args.frames}: no such frame-store shard")
    started = time.perf_counter()
    result = extract_features_shard(args.video_dir, clip_ids, args.out, options, frames=args.frames,
                                    failures_path=args.failures, failures_copy=args.failures_copy)
    seconds = time.perf_counter() - started
    reasons = dict(Counter(reason for _, reason, _ in result.failures))
    print(f"features: {result.stored}/{result.num_ids} clips ({result.sources}) in {seconds:.1f}s; "
          f"{len(result.failures)} failures {reasons or ''} listed in {result.failures_path}", flush=True)
    log_first_failures("features", result.failures)
    if result.store_path is None:
        print(f"clipvip features: error: {len(result.failures)} of {result.num_ids} videos failed {reasons}, "
              f"more than max_failure_fraction={options.max_failure_fraction}; no store written to {args.out}",
              file=sys.stderr)
        return 1
    return 0
