"""Benchmark: training input clips/s from the HDF5 frame store vs decoding with decord on the fly.

Usage:
    .venv/bin/python benchmarks/input_pipeline.py [--quick] [--videos 24] [--workers 2] [--workdir DIR]
                                                  [--normalise-on-device]

--quick: 12 videos and 2 alternating timing rounds (about a minute); default 24 videos, 4 rounds.

Both sides run the same training recipe through a DataLoader with the same number of workers: T=12
jittered frame indices per clip (the paper's formula, same seeds); workers apply bicubic short-side resize
to 224 when needed and centre crop 224 and hand over uint8 ``[T,3,224,224]`` (``clipvip.data.crop_uint8``);
the main process converts each batch to float and CLIP-normalises it (``clipvip.data.normalize_pixels``) --
on a GPU trainer that runs on the device after the uint8 copy; here on the CPU, inside the timed loop, so
the rates below are model-ready batches. The time the main process spent normalising is reported too.
--normalise-on-device: leave it out of the main process (what a GPU trainer's input pipeline sees: the
normalisation runs on the device, off the CPU) -- the rates of the uint8 hand-off itself.
  * store:  ``FinetuneDataset(train=True)`` over a frame store written by the real ``clipvip frames`` stage
            (short side 224, JPEG) -- pool frames nearest to the jittered indices.
  * decord: the official CLIP-ViP loader's approach: ``decord.VideoReader(path, num_threads=1)``,
            ``get_batch(jittered indices)`` on the original MP4, then the same crop / normalisation.
Videos: synthetic but codec-realistic H.264 (moving textured shapes over a drifting gradient, light noise),
340x256, 10 s at 25 fps, x264 default GOP. The last line printed is one JSON object.

History (this machine, 2 shared cores, load average 5-7, --quick; rates are noisy, CPU/clip less so):
  * float32 items normalised in the workers: 5-13x (6.4x: store 42 clips/s, decord 6.5; CPU per item:
    store 13.1 ms, decord 150 ms).
  * uint8 items (crop view, stacked once by the collate): CPU per store item 6.4-8.4 ms (decord 108-152 ms:
    ratio 15-19.5); normalisation 6-8 ms/clip of main-process CPU when it runs on the CPU.
    Normalised in the main process: 5.1-7.9x (store 30-52 clips/s). --normalise-on-device: 9.4-13.6x
    (store 87-94 clips/s). Still short of 20x: the remaining item cost is JPEG decode (~4.6 ms at
    0.38 ms/frame), the HDF5 vlen read (~1.3 ms) and ``np.stack`` in ``FrameStore.frames``.
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

from clipvip.data import FinetuneDataset, build_loader, crop_uint8, jitter_indices, normalize_pixels  # noqa: E402
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
    """The official loader's per-clip work: open the MP4, decode the jittered frames, crop (uint8)."""

    def __init__(self, paths: list[Path], seed: int = 0):
        self.paths, self.seed = paths, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        import decord

        reader = decord.VideoReader(str(self.paths[index]), num_threads=1)
        idx = jitter_indices(len(reader), NUM_FRAMES, np.random.default_rng([self.seed, 0, index]))
        frames = reader.get_batch(list(idx)).asnumpy()
        return {"pixel_values": crop_uint8(frames, SIZE), "index": index}


def collate(items: list[dict]) -> dict:
    return {"pixel_values": default_collate([i["pixel_values"] for i in items])}  # shared memory in workers


def timed_round(dataset, workers: int, min_clips: int, normalise: bool = True) -> tuple[int, float, float]:
    """(clips, seconds, seconds spent normalising) of one steady-state round: a fresh loader, the first batch
    (worker start-up) untimed; every batch is normalised in this (the main) process, as the trainer does."""
    loader = build_loader(dataset, None, BATCH, workers, collate)
    it = iter(loader)
    next(it)
    done, norm, start = 0, 0.0, time.perf_counter()
    while done < min_clips:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        assert batch["pixel_values"].dtype == torch.uint8
        pixels = batch["pixel_values"]
        if normalise:
            t = time.perf_counter()
            pixels = normalize_pixels(pixels, "cpu")
            norm += time.perf_counter() - t
            assert pixels.dtype == torch.float32
        assert pixels.shape[1:] == (NUM_FRAMES, 3, SIZE, SIZE)
        done += len(pixels)
    seconds = time.perf_counter() - start
    del it, loader  # shuts the workers down before the other pipeline's round
    return done, seconds, norm


def compare(store_ds, decord_ds, workers: int, rounds: int, store_clips: int, decord_clips: int,
            normalise: bool = True):
    """Alternate rounds so both pipelines see the same background load (the machine is shared)."""
    totals = {"store": [0, 0.0, 0.0], "decord": [0, 0.0, 0.0]}
    for _ in range(rounds):
        for name, ds, clips in (("store", store_ds, store_clips), ("decord", decord_ds, decord_clips)):
            for k, v in enumerate(timed_round(ds, workers, clips, normalise)):
                totals[name][k] += v
    rates = {name: done / seconds for name, (done, seconds, _) in totals.items()}
    norm_ms = {name: norm / done * 1000 for name, (done, _, norm) in totals.items()}
    return rates, norm_ms


def cpu_ms_per_clip(dataset, count: int) -> float:
    """In-process CPU time per item: the pipelines' intrinsic cost, insensitive to other jobs' load."""
    dataset[0]
    start = time.process_time()
    for i in range(count):
        dataset[i % len(dataset)]
    return (time.process_time() - start) / count * 1000


def cpu_ms_normalise(dataset, count: int) -> float:
    """CPU time per clip of the main process's ``normalize_pixels`` on a batch of ``BATCH`` items."""
    batch = default_collate([dataset[i % len(dataset)]["pixel_values"] for i in range(BATCH)])
    normalize_pixels(batch)
    start = time.process_time()
    for _ in range(count):
        normalize_pixels(batch)
    return (time.process_time() - start) / (count * BATCH) * 1000


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
    parser.add_argument("--normalise-on-device", action="store_true",
                        help="do not normalise in the main process (a GPU trainer does it on the device)")
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
        rates, norm_ms = compare(store_ds, DecordDataset(paths), args.workers, rounds, store_clips=120,
                                 decord_clips=12, normalise=not args.normalise_on_device)
        ratio = rates["store"] / rates["decord"]
        print(f"frame store: {rates['store']:.1f} clips/s   decord on the fly: {rates['decord']:.1f} clips/s   "
              f"({args.workers} workers, T={NUM_FRAMES}, {SIZE} crop, uint8 hand-off, {rounds} alternating rounds); "
              + (f"main-process normalisation {norm_ms['store']:.1f} ms/clip (inside the store's timed loop)"
                 if not args.normalise_on_device else "normalisation left to the device (not timed)"))
        torch.set_num_threads(1)  # like a DataLoader worker
        store_ms, decord_ms = cpu_ms_per_clip(store_ds, 2 * len(paths)), cpu_ms_per_clip(DecordDataset(paths), 3)
        normalise_ms = cpu_ms_normalise(store_ds, 4)
        print(f"single-process CPU per clip: store item {store_ms:.1f} ms, decord item {decord_ms:.1f} ms "
              f"(ratio {decord_ms / store_ms:.1f}); + normalise in the main process {normalise_ms:.1f} ms "
              f"(ratio incl. it {(decord_ms + normalise_ms) / (store_ms + normalise_ms):.1f}); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(json.dumps({"benchmark": "input_pipeline", "value": round(ratio, 2),
                      "unit": "x decord on-the-fly clips/s", "target": TARGET, "ok": bool(ratio >= TARGET),
                      "normalised_in_main_process": not args.normalise_on_device,
                      "store_clips_per_s": round(rates["store"], 1), "decord_clips_per_s": round(rates["decord"], 1),
                      "cpu_ms_per_clip": {"store_item": round(store_ms, 2), "decord_item": round(decord_ms, 1),
                                          "normalise": round(normalise_ms, 2)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
