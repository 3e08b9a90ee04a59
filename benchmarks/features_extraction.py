"""Benchmark: ``clipvip features`` (clip extractor) from the fixed-rate frame pool vs decoding the video again.

Usage:
    .venv/bin/python benchmarks/features_extraction.py [--quick] [--videos N] [--seconds S] [--model CLIP_DIR]

Generates 320x240 H.264 clips at 25 fps (x264 defaults: a keyframe every 250 frames), writes their frame store
with a 1-fps fixed-rate pool (``clipvip frames``, ``pool_fps: 1``, short side 224; timed separately, it is
paid once and shared with training), then times per-second feature extraction (``extract_features_shard``,
the code behind ``clipvip features``) with the ``clip`` extractor
  pool   frames read from the frame store (JPEG decode of the pool frames), and
  video  the videos decoded again (decord seeks to one frame per second),
alternating for ``--rounds`` rounds, each side's best round counted. The extractor is a tiny CLIP built
locally (``--model`` for a real one), so the numbers measure the frame path, not the network.
The LAST line is one JSON object: {"benchmark": "features_extraction", "value": pool/video features/s, ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipvip.features import FeatureOptions, build_extractor, extract_features_shard  # noqa: E402
from clipvip.frames import extract_shard  # noqa: E402
from clipvip.video_io import write_video  # noqa: E402

WIDTH, HEIGHT, FPS = 320, 240, 25


def make_clip(path: Path, seconds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = seconds * FPS
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(n):
        img = np.empty((HEIGHT, WIDTH, 3), np.float32)
        img[..., 0] = base[0] + 50 * np.sin((xs + 3 * t) / WIDTH * np.pi)
        img[..., 1] = base[1] + 50 * np.cos((ys - 2 * t) / HEIGHT * np.pi)
        img[..., 2] = base[2] + 20 * rng.standard_normal((HEIGHT, WIDTH))
        x0, y0 = (5 * t) % (WIDTH - 40), (3 * t) % (HEIGHT - 40)
        img[y0:y0 + 40, x0:x0 + 40] = (250, 240, 50)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    write_video(path, frames, FPS, crf=23, preset="veryfast")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 videos of 20 s, 2 rounds")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="HF CLIP folder (default: a tiny CLIP built here)")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.rounds = 3, 20, 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "videos"
        folder.mkdir()
        ids = [f"v{k:03d}" for k in range(args.videos)]
        for k, clip_id in enumerate(ids):
            make_clip(folder / f"{clip_id}.mp4", args.seconds, k)
        model = args.model
        if model is None:
            from clipvip.model.tiny import build_tiny_clip

            model = str(build_tiny_clip(tmp / "clip", image_size=64, patch_size=16, hidden_size=64,
                                        projection_dim=64))
        started = time.perf_counter()
        extract_shard(folder, ids, tmp / "frames.h5", {"pool_fps": 1, "num_frames": 12, "short_side": 224})
        frames_s = time.perf_counter() - started
        options = FeatureOptions.from_dict({"extractor": "clip", "model": model, "device": "cpu"})
        extractor = build_extractor(options)
        best = {"pool": float("inf"), "video": float("inf")}
        total = 0
        for r in range(args.rounds):
            for side in ("pool", "video"):
                out = tmp / side / f"{r}.h5"
                started = time.perf_counter()
                result = extract_features_shard(folder, ids, out, options, extractor=extractor,
                                                frames=tmp / "frames.h5" if side == "pool" else None)
                seconds = time.perf_counter() - started
                assert result.stored == len(ids), result.failures
                import h5py

                with h5py.File(out, "r") as fh:
                    total = sum(fh["clips"][c].shape[0] for c in ids)
                    sources = {fh["clips"][c].attrs["source"] for c in ids}
                assert sources == {"frames" if side == "pool" else "video"}, sources
                best[side] = min(best[side], seconds)
                print(f"round {r + 1}: {side} {total / seconds:.1f} features/s")
    pool_rate, video_rate = total / best["pool"], total / best["video"]
    print(f"best: pool {pool_rate:.1f} features/s, video {video_rate:.1f} features/s ({total} features of "
          f"{args.videos} x {args.seconds} s videos at {WIDTH}x{HEIGHT} {FPS} fps); the 1-fps frame store itself "
          f"took {frames_s:.1f} s ({args.videos * args.seconds / frames_s:.1f} video-seconds/s)")
    ratio = pool_rate / video_rate
    print(json.dumps({"benchmark": "features_extraction", "value": round(ratio, 3),
                      "unit": "x features/s (frame pool / decode video)", "pool_features_per_s": round(pool_rate, 1),
                      "video_features_per_s": round(video_rate, 1), "videos": args.videos, "seconds": args.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
