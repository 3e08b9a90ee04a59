"""``clipvip demo-data``: a deterministic synthetic video-text corpus shaped like the real datasets.

Usage:
    clipvip demo-data --out results/demo --options '{"seed": 0, "frame_size": 64}'

    from clipvip.demo_data import clip_ids, annotation_files
    clip_ids({"seed": 0}, "demo_msrvtt")          # ids without writing anything (Snakefile parse time)

Each clip is a real H.264/yuv420p MP4 of one coloured shape moving over a plain grey background in 2-3
perpendicular motion segments ("a red square moves right, then up"). Clips come in **time-reversed twin
pairs**: clip 2k+1 holds clip 2k's frames in the opposite order, so its motions are the reversed list with
each direction flipped ("down, then left") and its captions say so. One frame cannot tell a pair apart;
only order-aware video encoders can.

Layout under ``--out``:
    videos/<clip_id>.mp4
    annotations/<dataset>_<split>.jsonl   official lines {"clip_id", "text"}
    annotations/<dataset>_meta.jsonl      clip_id, split, colour, shape, motions, twin_of, reversed, ...
    DONE.json                             written last: options, counts, files (the workflow's output)

Datasets (ids ``pt_00000``, ``msr_00000``, ``dd_00000``):
    demo_pretrain  train only; noisy ASR-like subtitles (fillers, unrelated words, usually the motion)
    demo_msrvtt    train lines hold a list of 5 paraphrases; val/test lines one caption (like 1k-A)
    demo_didemo    paragraphs: one sentence per motion segment

Options (``DemoOptions``): seed 0, frame_size 64 (square px, even), num_frames 32, fps 8, crf 0 (x264
quality; 0 = lossless, so decoded frames are reproducible bit for bit: libx264's output bytes can differ
between runs inside one process, its lossless decode cannot), pretrain_clips 256, msrvtt_clips {train 128, val 32, test 32}, didemo_clips {train 96, val 32,
test 32}, workers 2 (processes encoding videos; output does not depend on it).

Writes are atomic: everything goes to ``--out/.demo-tmp-<pid>/`` first, then ``videos/`` and
``annotations/`` are swapped in and ``DONE.json`` is written last, so a killed run never looks complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clipvip.cli import parse_options

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240)}
BACKGROUNDS = ((15, 15, 15), (45, 45, 45), (75, 75, 75))
SHAPES = ("square", "circle", "triangle", "diamond")
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows downward
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
DIAMOND_SCALE = 1.25  # a diamond's corners reach 1.25 half-sizes so it looks as big as the square
ADVERB = {"right": "to the right", "left": "to the left", "up": "upward", "down": "downward"}

# dataset name -> (clip id prefix, options field holding its per-split counts)
DATASETS = {"demo_pretrain": ("pt", "pretrain_clips"), "demo_msrvtt": ("msr", "msrvtt_clips"),
            "demo_didemo": ("dd", "didemo_clips")}
SPLITS = ("train", "val", "test")


@dataclass
class DemoOptions:
    seed: int = 0
    frame_size: int = 64
    num_frames: int = 32
    fps: int = 8
    crf: int = 0  # 0 = lossless: decoded frames are then identical across runs (x264's bytes may not be)
    pretrain_clips: int = 256
    msrvtt_clips: dict = field(default_factory=lambda: {"train": 128, "val": 32, "test": 32})
    didemo_clips: dict = field(default_factory=lambda: {"train": 96, "val": 32, "test": 32})
    workers: int = 2

    @classmethod
    def from_dict(cls, values: dict | "DemoOptions" | None) -> "DemoOptions":
        if isinstance(values, DemoOptions):
            return values
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"demo-data options: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        options = cls(**values)
        if options.frame_size < 16 or options.frame_size % 2:
            raise ValueError(f"demo-data options: frame_size must be an even number >= 16, got {options.frame_size}")
        if options.num_frames < 6:
            raise ValueError(f"demo-data options: num_frames must be >= 6 (3 motion segments), got {options.num_frames}")
        return options

    def split_counts(self, dataset: str) -> dict[str, int]:
        if dataset not in DATASETS:
            raise ValueError(f"unknown demo dataset {dataset!r}; choose from {sorted(DATASETS)}")
        counts = getattr(self, DATASETS[dataset][1])
        if isinstance(counts, int):
            counts = {"train": counts}
        unknown = sorted(set(counts) - set(SPLITS))
        if unknown:
            raise ValueError(f"demo-data options: {DATASETS[dataset][1]} has unknown splits {unknown}")
        return {split: int(counts[split]) for split in SPLITS if int(counts.get(split, 0)) > 0}


@dataclass
class ClipSpec:
    clip_id: str
    split: str
    colour: str
    shape: str
    background: tuple
    motions: list[str]
    twin_of: str | None
    reversed: bool
    start: tuple[float, float]  # centre of the shape in frame 0 of the *forward* member of the pair
    step: float                 # pixels per frame


# ----------------------------------------------------------------------------------------------- ids
def split_clip_ids(options: dict | DemoOptions | None, dataset: str) -> dict[str, list[str]]:
    """Clip ids per split, numbered consecutively over train, val, test (nothing is written)."""
    options = DemoOptions.from_dict(options)
    prefix = DATASETS[dataset][0] if dataset in DATASETS else None
    out, next_number = {}, 0
    for split, count in options.split_counts(dataset).items():
        out[split] = [f"{prefix}_{number:05d}" for number in range(next_number, next_number + count)]
        next_number += count
    return out


def clip_ids(options: dict | DemoOptions | None, dataset: str) -> list[str]:
    """All clip ids of ``dataset``, sorted, without writing anything."""
    return sorted(i for ids in split_clip_ids(options, dataset).values() for i in ids)


def annotation_files(out: str | os.PathLike, dataset: str, options: dict | DemoOptions | None = None
                     ) -> dict[str, Path]:
    """``{split: out/annotations/<dataset>_<split>.jsonl}`` for the splits the options give ``dataset``."""
    splits = DemoOptions.from_dict(options).split_counts(dataset)
    return {split: Path(out) / "annotations" / f"{dataset}_{split}.jsonl" for split in splits}


# ----------------------------------------------------------------------------------------------- clips
def clip_specs(options: dict | DemoOptions | None, dataset: str) -> list[ClipSpec]:
    """Every clip of ``dataset``: pairs (2k, 2k+1) inside each split are time-reversed twins."""
    options = DemoOptions.from_dict(options)
    dataset_number = list(DATASETS).index(dataset)
    specs = []
    for split, ids in split_clip_ids(options, dataset).items():
        for local in range(0, len(ids), 2):
            first_number = int(ids[local].split("_")[1])
            # One generator per pair, keyed by the pair's number: counts of other splits never shift it.
            rng = np.random.default_rng([options.seed, dataset_number, first_number])
            forward = _random_forward_spec(rng, options, ids[local], split)
            if local + 1 < len(ids):
                twin = ClipSpec(ids[local + 1], split, forward.colour, forward.shape, forward.background,
                                reverse_motions(forward.motions), ids[local], True, forward.start, forward.step)
                forward.twin_of = twin.clip_id
                specs += [forward, twin]
            else:
                specs.append(forward)
    return specs


def reverse_motions(motions: list[str]) -> list[str]:
    """What a clip's motion list becomes when its frames play backwards: reversed order, flipped directions."""
    return [OPPOSITE[m] for m in reversed(motions)]


def _random_forward_spec(rng, options: DemoOptions, clip_id: str, split: str) -> ClipSpec:
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    # Consecutive segments are perpendicular, so a twin's caption always differs from its partner's.
    motions = [str(rng.choice(list(DIRECTIONS)))]
    for _ in range(int(rng.integers(1, 3))):
        horizontal = motions[-1] in ("left", "right")
        motions.append(str(rng.choice(["up", "down"] if horizontal else ["left", "right"])))
    unit_path = _path(motions, options.num_frames, step=1.0, start=(0.0, 0.0))
    reach = int(np.ceil(options.frame_size // 8 * DIAMOND_SCALE))  # farthest shape pixel from the centre
    room = options.frame_size - 2 * reach - 4  # centre range keeping every shape 2 px inside the frame
    extent = unit_path.max(0) - unit_path.min(0)
    step = float(min(options.frame_size / 16, room / max(extent.max(), 1)))
    low = 2 + reach - unit_path.min(0) * step
    high = options.frame_size - 2 - reach - unit_path.max(0) * step
    start = tuple(float(rng.uniform(lo, hi)) for lo, hi in zip(low, high))
    return ClipSpec(clip_id, split, colour, shape, background, motions, None, False, start, step)


def _path(motions: list[str], num_frames: int, step: float, start: tuple[float, float]) -> np.ndarray:
    """Shape centre (x, y) per frame: frame i > 0 moves one step in the direction of its segment."""
    segments = len(motions)
    centres = np.zeros((num_frames, 2))
    centres[0] = start
    for i in range(1, num_frames):
        dx, dy = DIRECTIONS[motions[min(i * segments // num_frames, segments - 1)]]
        centres[i] = centres[i - 1] + step * np.array([dx, dy])
    return centres


def render_clip(spec: ClipSpec, options: dict | DemoOptions | None) -> np.ndarray:
    """The clip's frames, uint8 [num_frames, size, size, 3]; a reversed twin gets the forward frames reversed."""
    options = DemoOptions.from_dict(options)
    forward_motions = reverse_motions(spec.motions) if spec.reversed else spec.motions
    centres = _path(forward_motions, options.num_frames, spec.step, spec.start)
    size, half = options.frame_size, options.frame_size // 8
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx = xs[None] - centres[:, 0, None, None]
    dy = ys[None] - centres[:, 1, None, None]
    if spec.shape == "square":
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif spec.shape == "circle":
        mask = dx ** 2 + dy ** 2 <= half ** 2
    elif spec.shape == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= half * DIAMOND_SCALE
    else:  # triangle pointing up: half-width grows from 0 at the top to `half` at the bottom
        mask = (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    frames = np.empty((options.num_frames, size, size, 3), np.uint8)
    frames[:] = spec.background
    frames[mask] = COLOURS[spec.colour]
    return frames[::-1].copy() if spec.reversed else frames


# ----------------------------------------------------------------------------------------------- captions
def _then_list(words: list[str]) -> str:
    return ", then ".join(words)


def _and_then(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", then ".join(words[:-1]) + " and then " + words[-1]


def msrvtt_captions(spec: ClipSpec) -> list[str]:
    """Five paraphrases that all state colour, shape and the motions in order."""
    c, s, m = spec.colour, spec.shape, spec.motions
    return [
        f"a {c} {s} moves {_then_list(m)}.",
        f"a {c} {s} slides {_and_then([ADVERB[d] for d in m])}.",
        f"the {c} {s} travels {m[0]} before moving {_and_then(m[1:])}.",
        f"a small {c} {s} moving {_and_then(m)} on a plain background.",
        f"first the {c} {s} goes {m[0]}, " + ", ".join(f"then it goes {d}" for d in m[1:]) + ".",
    ]


def didemo_paragraph(spec: ClipSpec, rng) -> list[str]:
    """One sentence per motion segment, like DiDeMo's moment descriptions."""
    sentences = [f"the {spec.colour} {spec.shape} moves {spec.motions[0]}."]
    for position, direction in enumerate(spec.motions[1:], start=1):
        last = position == len(spec.motions) - 1 and position > 1
        lead = "finally it" if last else str(rng.choice(["then it", "after that it", "next it"]))
        sentences.append(f"{lead} {rng.choice(['moves', 'goes', 'heads'])} {direction}.")
    return sentences


FILLERS = ("um", "uh", "so", "you know", "like", "okay", "alright", "i mean")
UNRELATED = ("today", "we're", "gonna", "look", "at", "this", "recipe", "thanks", "for", "watching", "the",
             "weather", "guys", "video", "check", "out", "my", "channel", "really", "nice", "and", "here")


def asr_subtitle(spec: ClipSpec, rng) -> str:
    """Noisy lowercase ASR-like text: fillers and unrelated words; mentions the motion ~85% of the time."""
    def noise(low, high):
        words = [str(rng.choice(FILLERS)) if rng.random() < 0.4 else str(rng.choice(UNRELATED))
                 for _ in range(int(rng.integers(low, high)))]
        return " ".join(words)

    roll = rng.random()
    if roll < 0.85:
        moves = f" {rng.choice(FILLERS)} and then ".join(spec.motions)
        core = f"the {spec.colour} {spec.shape} is going {moves}"
    elif roll < 0.95:
        core = f"here's a {spec.colour} {spec.shape}"
    else:
        core = noise(3, 6)
    return " ".join(part for part in (noise(1, 5), core, noise(0, 4)) if part)


def annotation_lines(options: DemoOptions, dataset: str) -> tuple[dict[str, list[dict]], list[dict]]:
    """The official annotation lines per split and the metadata lines of ``dataset``."""
    by_split: dict[str, list[dict]] = {split: [] for split in options.split_counts(dataset)}
    meta = []
    dataset_number = list(DATASETS).index(dataset)
    for spec in clip_specs(options, dataset):
        # Text randomness is per clip (and separate from the pair's geometry generator).
        rng = np.random.default_rng([options.seed, dataset_number, int(spec.clip_id.split("_")[1]), 1])
        if dataset == "demo_pretrain":
            text = asr_subtitle(spec, rng)
        elif dataset == "demo_msrvtt":
            captions = msrvtt_captions(spec)
            text = captions if spec.split == "train" else captions[int(rng.integers(len(captions)))]
        else:
            text = didemo_paragraph(spec, rng)
        by_split[spec.split].append({"clip_id": spec.clip_id, "text": text})
        meta.append({"clip_id": spec.clip_id, "split": spec.split, "colour": spec.colour, "shape": spec.shape,
                     "motions": spec.motions, "twin_of": spec.twin_of, "reversed": spec.reversed,
                     "background": list(spec.background), "num_frames": options.num_frames, "fps": options.fps,
                     "frame_size": options.frame_size})
    return by_split, meta


# ----------------------------------------------------------------------------------------------- writing
def _write_clip(job: tuple[ClipSpec, DemoOptions, str]) -> None:
    from clipvip.video_io import write_video

    spec, options, path = job
    write_video(path, render_clip(spec, options), options.fps, crf=options.crf, gop=options.fps * 2)


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    with open(path, "w") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")


def write_corpus(out: str | os.PathLike, options: dict | DemoOptions | None = None) -> dict:
    """Write the whole corpus under ``out`` atomically; returns the DONE.json content."""
    options = DemoOptions.from_dict(options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".demo-tmp-*"):  # leftovers of killed runs (one writer per corpus)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".demo-tmp-{os.getpid()}"
    (tmp / "videos").mkdir(parents=True)
    (tmp / "annotations").mkdir()
    try:
        jobs, summary = [], {}
        for dataset in DATASETS:
            by_split, meta = annotation_lines(options, dataset)
            for split, lines in by_split.items():
                _write_jsonl(tmp / "annotations" / f"{dataset}_{split}.jsonl", lines)
            _write_jsonl(tmp / "annotations" / f"{dataset}_meta.jsonl", meta)
            summary[dataset] = {split: len(lines) for split, lines in by_split.items()}
            jobs += [(spec, options, str(tmp / "videos" / f"{spec.clip_id}.mp4"))
                     for spec in clip_specs(options, dataset)]
        if options.workers > 1:
            with ProcessPoolExecutor(options.workers) as pool:
                list(pool.map(_write_clip, jobs, chunksize=16))
        else:
            for job in jobs:
                _write_clip(job)
        done_path = out / "DONE.json"
        done_path.unlink(missing_ok=True)  # from here on the corpus must not look complete
        for sub in ("videos", "annotations"):
            target = out / sub
            if target.exists():
                old = tmp / f"old-{sub}"
                os.replace(target, old)
            os.replace(tmp / sub, target)
        done = {"options": asdict(options), "clips": summary, "num_videos": len(jobs),
                "annotations": sorted(p.name for p in (out / "annotations").glob("*.jsonl"))}
        done_tmp = out / f"DONE.json.tmp-{os.getpid()}"
        done_tmp.write_text(json.dumps(done, indent=2) + "\n")
        os.replace(done_tmp, done_path)
        return done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip demo-data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus directory (videos/, annotations/, DONE.json)")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of DemoOptions fields")
    args = parser.parse_args(argv)
    try:
        options = DemoOptions.from_dict(parse_options(args.options))
    except (TypeError, ValueError) as exc:
        print(f"clipvip demo-data: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    done = write_corpus(args.out, options)
    print(f"demo-data: wrote {done['num_videos']} videos and annotations {done['clips']} to {args.out} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
