"""Benchmark: ``clipvip frames`` extraction speed vs an ``ffmpeg`` CLI select-filter baseline.

Usage:
    .venv/bin/python benchmarks/frames_extraction.py [--quick] [--videos N] [--rounds R]

Generates 320x240, 10 s @ 25 fps H.264 clips (x264 defaults: one keyframe every 250 frames), then times
  ours      ``extract_shard`` (the code behind ``clipvip frames``): decord decode of the 12 uniform frames
            (+ the middle frame; pool_size=12 makes the pool the uniform frames), bicubic resize of the short
            side to 224, JPEG q90, HDF5 write;
  baseline  one ``ffmpeg`` process per video selecting the same frames
            (``select='eq(n\\,i1)+…'`` -> ``scale=-2:224`` -> rawvideo rgb24 pipe -> numpy; no JPEG, no HDF5,
            and N is given to it for free).
Both run in the same process, alternating for ``--rounds`` rounds; each side's best round counts.
The LAST line printed is one JSON object: {"benchmark", "value": ours/baseline videos/s, "unit", "target",
"ok"}. Earlier lines give absolute numbers (and, without --quick, ours at the default pool_size 32).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipvip.frames import FrameOptions, extract_shard, frames_to_store  # noqa: E402
from clipvip.video_io import write_video  # noqa: E402

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 25, 10
TARGET = 2.0


def make_clip(path: Path, seed: int) -> None:
    """Textured, moving content so the codec does real work (gradients, a drifting block, noise)."""
    rng = np.random.default_rng(seed)
    n = FPS * SECONDS
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = rng.normal(0, 6, size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(n):
        image = base + texture
        image[..., 0] += 50 * np.sin((xs + 3 * t) / 40)
        image[..., 1] += 50 * np.cos((ys - 2 * t) / 30)
        x0, y0 = (5 * t) % (WIDTH - 40), (3 * t) % (HEIGHT - 40)
        image[y0:y0 + 40, x0:x0 + 40] = (240, 230, 40)
        frames[t] = np.clip(image, 0, 255)
    write_video(path, frames, FPS, crf=23, preset="veryfast")


def ffmpeg_baseline(paths: list[Path], indices: list[int], short_side: int) -> float:
    """Seconds to select ``indices`` from every video with the ffmpeg CLI into numpy arrays."""
    select = "+".join(f"eq(n\\,{i})" for i in indices)
    out_w = round(WIDTH * short_side / HEIGHT / 2) * 2
    started = time.perf_counter()
    for path in paths:
        result = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf",
                                 f"select='{select}',scale={out_w}:{short_side}:flags=bicubic",
                                 "-vsync", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                                capture_output=True, check=True)
        frames = np.frombuffer(result.stdout, np.uint8).reshape(-1, short_side, out_w, 3)
        if len(frames) != len(indices):
            raise RuntimeError(f"ffmpeg returned {len(frames)} frames for {path}, expected {len(indices)}")
    return time.perf_counter() - started


def ours(folder: Path, ids: list[str], out: Path, options: FrameOptions) -> float:
    started = time.perf_counter()
    result = extract_shard(folder, ids, out, options, progress=False)
    seconds = time.perf_counter() - started
    if result.failures or result.stored != len(ids):
        raise RuntimeError(f"extraction failed: {result.failures}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and rounds (about a minute)")
    parser.add_argument("--videos", type=int, default=None, help="number of clips (default 12 quick, 32 full)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2 quick, 3 full)")
    args = parser.parse_args()
    count = args.videos or (12 if args.quick else 32)
    rounds = args.rounds or (2 if args.quick else 3)
    options = FrameOptions(num_frames=12, pool_size=12, short_side=224, jpeg_quality=90)
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        started = time.perf_counter()
        ids = [f"clip{i:03d}" for i in range(count)]
        for i, clip_id in enumerate(ids):
            make_clip(folder / f"{clip_id}.mp4", seed=i)
        print(f"generated {count} clips {WIDTH}x{HEIGHT}, {SECONDS}s @ {FPS} fps in {time.perf_counter() - started:.1f}s")
        paths = [folder / f"{clip_id}.mp4" for clip_id in ids]
        indices = frames_to_store(FPS * SECONDS, options)  # the 12 uniform frames + the middle frame
        print(f"frames per video: {len(indices)} (decoded indices {indices})")
        ours(folder, ids[:2], Path(tmp) / "warm.h5", options)  # warm caches and imports
        ours_best, base_best = float("inf"), float("inf")
        for round_number in range(rounds):
            ours_s = ours(folder, ids, Path(tmp) / "bench.h5", options)
            base_s = ffmpeg_baseline(paths, indices, options.short_side)
            ours_best, base_best = min(ours_best, ours_s), min(base_best, base_s)
            print(f"round {round_number + 1}: ours {count / ours_s:.2f} videos/s, "
                  f"ffmpeg-cli {count / base_s:.2f} videos/s")
        ours_rate, base_rate = count / ours_best, count / base_best
        print(f"best: ours {ours_rate:.2f} videos/s ({1000 * ours_best / count:.0f} ms/video), "
              f"ffmpeg-cli {base_rate:.2f} videos/s ({1000 * base_best / count:.0f} ms/video)")
        if not args.quick:
            pooled = FrameOptions(num_frames=12, pool_size=32, short_side=224, jpeg_quality=90)
            seconds = ours(folder, ids, Path(tmp) / "pool.h5", pooled)
            print(f"info: ours with the default pool_size 32 (44 distinct frames/video): {count / seconds:.2f} videos/s")
    ratio = ours_rate / base_rate
    print(json.dumps({"benchmark": "frames_extraction", "value": round(ratio, 3), "unit": "x ffmpeg-cli videos/s",
                      "target": TARGET, "ok": ratio >= TARGET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
