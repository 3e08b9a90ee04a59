"""Benchmark: training input clips/s from the HDF5 frame store vs decoding with decord on the fly.

Usage:
    .venv/bin/python benchmarks/input_pipeline.py [--quick] [--videos 24] [--workers 2] [--workdir DIR]

--quick: 12 videos and 2 alternating timing rounds (about a minute); default 24 videos, 4 rounds.

Both sides run the same training recipe through a DataLoader with the same number of workers: T=12
jittered frame indices per clip (the paper's formula, same seeds), bicubic short-side resize to 224 when
needed, centre crop 224, CLIP normalisation (``clipvip.data.video_transform``).
  * store:  ``FinetuneDataset(train=True)`` over a frame store written by the real ``clipvip frames`` stage
            (short side 224, JPEG) -- pool frames nearest to the jittered indices.
  * decord: the official CLIP-ViP loader's approach: ``decord.VideoReader(path, num_threads=1)``,
            ``get_batch(jittered indices)`` on the original MP4, then the same transform.
Videos: synthetic but codec-realistic H.264 (moving textured shapes over a drifting gradient, light noise),
340x256, 10 s at 25 fps, x264 default GOP. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing the package

from clipvip.data import FinetuneDataset, build_loader, jitter_indices, video_transform  # noqa: E402
from clipvip.video_io import write_video  # noqa: E402

TARGET = 20.0
NUM_FRAMES, SIZE, BATCH = 12, 224, 8


def make_video(path: Path, seed: int, width=340, height=256, seconds=10, fps=25) -> None:
    """Drifting textured background + moving discs + light sensor noise (precomputed tiles: fast to make)."""
    rng = np.random.default_rng(seed)
    n = seconds * fps
    yy, xx = np.mgrid[0 : height + n, 0 : width + n].astype(np.float32)
    texture = rng.uniform(40, 200, 3).astype(np.float32) + 50 * (np.sin(xx / 37.0) * np.cos(yy / 29.0))[..., None]
    texture = texture.astype(np.uint8)
    noise = rng.integers(-4, 5, (8, height, width, 3), dtype=np.int16)
    blobs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-3, 3), rng.uniform(-3, 3),
              int(rng.uniform(15, 45)), rng.integers(0, 256, 3, dtype=np.uint8)) for _ in range(4)]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frame = texture[t : t + height, t : t + width].astype(np.int16) + noise[t % len(noise)]
        for x0, y0, vx, vy, r, colour in blobs:
            cx, cy = int((x0 + vx * t) % width), int((y0 + vy * t) % height)
            y_lo, y_hi, x_lo, x_hi = max(cy - r, 0), min(cy + r, height), max(cx - r, 0), min(cx + r, width)
            ys, xs = np.ogrid[y_lo:y_hi, x_lo:x_hi]
            frame[y_lo:y_hi, x_lo:x_hi][(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = colour
        frames[t] = np.clip(frame, 0, 255)
    write_video(path, frames, fps=fps, crf=20, preset="veryfast")


class DecordDataset(Dataset):
    """The official loader's per-clip work: open the MP4, decode the jittered frames, transform."""

    def __init__(self, paths: list[Path], seed: int = 0):
        self.paths, self.seed = paths, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        import decord

        reader = decord.VideoReader(str(self.paths[index]), num_threads=1)
        idx = jitter_indices(len(reader), NUM_FRAMES, np.random.default_rng([self.seed, 0, index]))
        frames = reader.get_batch(list(idx)).asnumpy()
        return {"pixel_values": video_transform(frames, SIZE), "index": index}


def collate(items: list[dict]) -> dict:
    return {"pixel_values": default_collate([i["pixel_values"] for i in items])}  # shared memory in workers


def timed_round(dataset, workers: int, min_clips: int) -> tuple[int, float]:
    """(clips, seconds) of one steady-state round: a fresh loader, the first batch (worker start-up) untimed."""
    loader = build_loader(dataset, None, BATCH, workers, collate)
    it = iter(loader)
    next(it)
    done, start = 0, time.perf_counter()
    while done < min_clips:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        assert batch["pixel_values"].shape[1:] == (NUM_FRAMES, 3, SIZE, SIZE)
        done += len(batch["pixel_values"])
    seconds = time.perf_counter() - start
    del it, loader  # shuts the workers down before the other pipeline's round
    return done, seconds


def compare(store_ds, decord_ds, workers: int, rounds: int, store_clips: int, decord_clips: int):
    """Alternate rounds so both pipelines see the same background load (the machine is shared)."""
    totals = {"store": [0, 0.0], "decord": [0, 0.0]}
    for _ in range(rounds):
        for name, ds, clips in (("store", store_ds, store_clips), ("decord", decord_ds, decord_clips)):
            done, seconds = timed_round(ds, workers, clips)
            totals[name][0] += done
            totals[name][1] += seconds
    return {name: done / seconds for name, (done, seconds) in totals.items()}


def cpu_ms_per_clip(dataset, count: int) -> float:
    """In-process CPU time per item: the pipelines' intrinsic cost, insensitive to other jobs' load."""
    dataset[0]
    start = time.process_time()
    for i in range(count):
        dataset[i % len(dataset)]
    return (time.process_time() - start) / count * 1000


def build_store(root: Path, paths: list[Path]) -> Path:
    """The real ``clipvip frames`` + ``frames-index`` stages, short side 224 (the paper's protocol)."""
    from clipvip.cli import main as cli

    ids = root / "ids.txt"
    ids.write_text("".join(p.stem + "\n" for p in paths))
    shard = root / "00000.h5"
    assert cli(["frames", "--video-dir", str(paths[0].parent), "--ids", str(ids), "--out", str(shard),
                "--failures", str(root / "00000.failures.tsv"), "--options", json.dumps({"short_side": SIZE})]) == 0
    assert cli(["frames-index", "--shards", str(shard), "--out", str(root / "index.json")]) == 0
    return root / "index.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed clips (about a minute in all)")
    parser.add_argument("--videos", type=int, default=0, help="default 24 (--quick: 12)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", help="reuse/keep videos and the store here (default: a temporary dir)")
    args = parser.parse_args(argv)
    from clipvip.frames import FrameIndex

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        (root / "videos").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        count = args.videos or (12 if args.quick else 24)
        paths = [root / "videos" / f"bench_{i:03d}.mp4" for i in range(count)]
        todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
        if todo:
            with ProcessPoolExecutor(max(1, args.workers)) as pool:
                list(pool.map(make_video, *zip(*todo)))
        t1 = time.perf_counter()
        index_path = root / "index.json"
        if not index_path.exists():
            build_store(root, paths)
        t2 = time.perf_counter()
        print(f"videos: {len(paths)} x 340x256, 250 frames ({t1 - t0:.1f} s); store built in {t2 - t1:.1f} s")

        index = FrameIndex(index_path)
        anns = [{"clip_id": p.stem, "texts": ["x"]} for p in paths]
        store_ds = FinetuneDataset(index, anns, NUM_FRAMES, SIZE, train=True, seed=0)
        rounds = 2 if args.quick else 4
        rates = compare(store_ds, DecordDataset(paths), args.workers, rounds, store_clips=120, decord_clips=12)
        ratio = rates["store"] / rates["decord"]
        print(f"frame store: {rates['store']:.1f} clips/s   decord on the fly: {rates['decord']:.1f} clips/s   "
              f"({args.workers} workers, T={NUM_FRAMES}, {SIZE} crop, {rounds} alternating rounds)")
        torch.set_num_threads(1)  # like a DataLoader worker
        store_ms, decord_ms = cpu_ms_per_clip(store_ds, 2 * len(paths)), cpu_ms_per_clip(DecordDataset(paths), 3)
        print(f"single-process CPU per clip: store {store_ms:.1f} ms, decord {decord_ms:.1f} ms "
              f"(ratio {decord_ms / store_ms:.1f}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "input_pipeline", "value": round(ratio, 2),
                      "unit": "x decord on-the-fly clips/s", "target": TARGET, "ok": bool(ratio >= TARGET)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
