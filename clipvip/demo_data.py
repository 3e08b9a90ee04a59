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
    demo_pretrain  train only; ASR-like subtitles (fillers, unrelated chatter, misheard and wrong words,
                   the motion ~75% of the time; ``asr_subtitle``)
    demo_long      off unless ``long_clips`` > 0 (ids ``lp_00000``, train only): long videos (``long_seconds``,
                   20-40 s) of several 4-8 s shape events back to back, with timed ASR-like ``subtitles`` lines
                   (one per event, spoken with a -1..+2 s lag, sometimes wrong; unrelated chatter between):
                   VideoCLIP's overlapped sampling has something to do (``long_specs``, ``long_subtitles``)
    demo_msrvtt    train lines hold a list of 5 paraphrases; val/test lines one caption (like 1k-A)
    demo_didemo    paragraphs: one sentence per motion segment
    demo_actions   action recognition (off unless ``actions_clips`` has counts; ids ``act_00000``): the class is
                   the clip's direction sequence ("moves right then up", 2-3 perpendicular segments, 24
                   classes); every 4th class (6) is held out for zero-shot. Files: demo_actions_{train,val,
                   test}.jsonl (seen classes) and demo_actions_unseen_test.jsonl (held-out classes), lines
                   {"clip_id", "label"}; demo_actions_classes.txt / demo_actions_unseen_classes.txt (one class
                   per line). ``clip_ids(options, "demo_actions_unseen")`` gives the held-out clips' ids.

Still images (``still_specs``, ``render_still``, ``still_caption``: "a small red square in the top left",
``still_alt_text``: that or, half the time, with a motion clause the still cannot show, ``still_short_caption``:
"a red square"): the image-text corpus the demo's tiny CLIP and captioner are
pre-trained on (``clipvip tiny-models``), drawn like the video frames; generated on the fly, not written.

Options (``DemoOptions``): seed 0, frame_size 64 (square px, even), num_frames 32, fps 8, crf 0 (x264
quality; 0 = lossless, so decoded frames are reproducible bit for bit: libx264's output bytes can differ
between runs inside one process, its lossless decode cannot), pretrain_clips 256, msrvtt_clips {train 128, val 32, test 32}, didemo_clips {train 96, val 32,
test 32} (the demo's config.yaml: val 128, test 256), actions_clips {} (e.g. {train 144, val 36, test 72, unseen 36}), workers 2 (processes encoding videos; output does not depend on it).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipvip.stage import OptionError, StageOptions, option, parse_options, stage_main, write_json_atomic

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
           "pink": (245, 120, 190), "brown": (140, 85, 40), "grey": (150, 150, 150), "lime": (160, 230, 50)}
BACKGROUNDS = ((15, 15, 15), (45, 45, 45), (75, 75, 75))
# Shapes a 2-layer ViT with 16-pixel patches tells apart within a few hundred steps: they differ in extent and
# in which pixels of a patch they fill. (Square, circle, triangle and diamond of the same size did not: the
# tiny CLIP named them at 28-38 % in the clips, chance 25 %; these reach 73-82 %, docs/demo.md.)
SHAPES = ("square", "bar", "pillar", "ring")
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows downward
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
REACH_SCALE = 1.25  # the farthest any shape reaches from its centre, in half-sizes (a bar's end, a ring's rim)
THIN_SCALE = 0.45  # half-thickness of a bar or pillar, in half-sizes
RING_HOLE = 0.55  # inner radius of a ring, as a share of its outer radius
ADVERB = {"right": "to the right", "left": "to the left", "up": "upward", "down": "downward"}

# dataset name -> (clip id prefix, options field holding its per-split counts)
DATASETS = {"demo_pretrain": ("pt", "pretrain_clips"), "demo_msrvtt": ("msr", "msrvtt_clips"),
            "demo_didemo": ("dd", "didemo_clips")}
SPLITS = ("train", "val", "test")
# Action recognition (Vita-CLIP demo): its own datasets, kept apart from DATASETS (video-text sets).
# name -> (clip id prefix, options field, which class split); "unseen" clips hold the held-out classes only.
ACTION_DATASETS = {"demo_actions": ("act", "actions_clips"), "demo_actions_unseen": ("act", "actions_clips")}
ACTION_SPLITS = ("train", "val", "test", "unseen")
ACTION_HELD_OUT_EVERY = 4
# Long videos with timed subtitles (VideoCLIP-style pre-training): ids lp_00000, train only.
LONG_DATASET = "demo_long"  # classes 3, 7, 11, ... of action_classes() are never trained on


@dataclass
class DemoOptions(StageOptions):
    STAGE = "demo-data"
    seed: int = option(0, "corpus seed (shapes, colours, motions)")
    frame_size: int = option(64, "square frame side in pixels (even)", minimum=16, maximum=512)
    num_frames: int = option(32, "frames per clip (3 motion segments need >= 6)", minimum=6, maximum=512)
    fps: int = option(8, "frames per second of the MP4s", minimum=1, maximum=60)
    crf: int = option(0, "x264 CRF; 0 = lossless: decoded frames are then identical across runs", minimum=0,
                      maximum=51)
    pretrain_clips: int = option(256, "clips of demo_pretrain (train split)", minimum=2)
    msrvtt_clips: dict = option({"train": 128, "val": 32, "test": 32}, "clips per split of demo_msrvtt")
    didemo_clips: dict = option({"train": 96, "val": 32, "test": 32}, "clips per split of demo_didemo")
    actions_clips: dict = option({}, "clips per split of demo_actions (train, val, test: seen classes; unseen: "
                                 "held-out classes, for zero-shot); empty = no action clips")
    long_clips: int = option(0, "long videos of demo_long (train only; 0 = none): several shape events in "
                             "sequence with timed ASR-like subtitles, for VideoCLIP's overlapped sampling", minimum=0)
    long_seconds: list = option([20, 40], "[min, max] length of a demo_long video in seconds")
    workers: int = option(2, "encoding processes", minimum=1)

    @classmethod
    def from_dict(cls, values: dict | "DemoOptions" | None, where: str = "--options") -> "DemoOptions":
        return values if isinstance(values, DemoOptions) else super().from_dict(values, where)

    def check(self, where: str) -> None:
        if self.frame_size % 2:
            raise OptionError(f"{where}.frame_size", f"{self.frame_size} is not even (H.264 needs even sizes)")
        for name in ("msrvtt_clips", "didemo_clips"):
            counts = getattr(self, name)
            for split, count in counts.items():
                if split not in SPLITS:
                    raise OptionError(f"{where}.{name}.{split}", f"unknown split (valid: {', '.join(SPLITS)})")
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise OptionError(f"{where}.{name}.{split}", f"{count!r} is not a clip count")
        lengths = self.long_seconds
        if (not isinstance(lengths, list) or len(lengths) != 2 or not all(isinstance(x, int) for x in lengths)
                or not 8 <= lengths[0] <= lengths[1]):
            raise OptionError(f"{where}.long_seconds", f"{lengths!r} is not [min, max] whole seconds with "
                              "8 <= min <= max (an event lasts 4-8 s)")
        for split, count in self.actions_clips.items():
            if split not in ACTION_SPLITS:
                raise OptionError(f"{where}.actions_clips.{split}", f"unknown split (valid: {', '.join(ACTION_SPLITS)})")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise OptionError(f"{where}.actions_clips.{split}", f"{count!r} is not a clip count")

    def split_counts(self, dataset: str) -> dict[str, int]:
        if dataset not in DATASETS:
            raise ValueError(f"unknown demo dataset {dataset!r}; choose from {sorted(DATASETS)}")
        counts = getattr(self, DATASETS[dataset][1])
        if isinstance(counts, int):
            counts = {"train": counts}
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
    if dataset in ACTION_DATASETS:
        return action_split_ids(options, dataset)
    if dataset == LONG_DATASET:
        return {"train": [f"lp_{n:05d}" for n in range(options.long_clips)]} if options.long_clips else {}
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
    if dataset in ACTION_DATASETS or dataset == LONG_DATASET:
        return {split: Path(out) / "annotations" / f"{dataset}_{split}.jsonl"
                for split in split_clip_ids(options, dataset)}
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
    reach = int(np.ceil(options.frame_size // 8 * REACH_SCALE))  # farthest shape pixel from the centre
    room = options.frame_size - 2 * reach - 4  # centre range keeping every shape 2 px inside the frame
    extent = unit_path.max(0) - unit_path.min(0)
    step = float(min(options.frame_size / 16, room / max(extent.max(), 1)))
    low = 2 + reach - unit_path.min(0) * step
    high = options.frame_size - 2 - reach - unit_path.max(0) * step
    high = np.maximum(high, low)  # a path that spans exactly the room: high == low up to rounding
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
    mask = shape_mask(spec.shape, dx, dy, half)
    frames = np.empty((options.num_frames, size, size, 3), np.uint8)
    frames[:] = spec.background
    frames[mask] = COLOURS[spec.colour]
    return frames[::-1].copy() if spec.reversed else frames


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Pixels of ``shape`` (half-size ``half``) at offsets ``dx, dy`` from its centre (as ``render_clip``)."""
    reach = half * REACH_SCALE
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "bar":  # lying: wide and thin
        return (np.abs(dx) <= reach) & (np.abs(dy) <= half * THIN_SCALE)
    if shape == "pillar":  # standing: thin and tall
        return (np.abs(dx) <= half * THIN_SCALE) & (np.abs(dy) <= reach)
    if shape == "ring":
        squared = dx ** 2 + dy ** 2
        return (squared <= reach ** 2) & (squared >= (RING_HOLE * reach) ** 2)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


# ----------------------------------------------------------------------------------------------- still images
# The image-text corpus the demo's tiny CLIP and captioner are pre-trained on (a stand-in for CLIP's web
# images): one still shape, captions saying what and where, nothing about motion.
SIZES = {"small": 1.0, "large": 1.6}  # half-size in units of frame_size // 8 (videos use "small")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def still_specs(rng, count: int) -> list[dict]:
    """``count`` random still-image specs: colour, shape, size, background, row/column cell, centre jitter."""
    specs = []
    for _ in range(count):
        specs.append({"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES)),
                      "size": str(rng.choice(list(SIZES))), "background": int(rng.integers(len(BACKGROUNDS))),
                      "row": int(rng.integers(3)), "column": int(rng.integers(3)),
                      "jitter": [float(v) for v in rng.uniform(-0.5, 0.5, 2)]})
    return specs


def render_still(spec: dict, frame_size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3]: the shape of ``spec`` in its cell of a 3x3 grid (same drawing as the videos)."""
    half = frame_size // 8 * SIZES[spec["size"]]
    reach = half * REACH_SCALE
    cell = (frame_size - 2 * reach - 4) / 3
    cx = 2 + reach + cell * (spec["column"] + 0.5 + 0.8 * spec["jitter"][0])
    cy = 2 + reach + cell * (spec["row"] + 0.5 + 0.8 * spec["jitter"][1])
    ys, xs = np.mgrid[0:frame_size, 0:frame_size].astype(np.float32) + 0.5
    image = np.empty((frame_size, frame_size, 3), np.uint8)
    image[:] = BACKGROUNDS[spec["background"]]
    image[shape_mask(spec["shape"], xs - cx, ys - cy, half)] = COLOURS[spec["colour"]]
    return image


def still_position(spec: dict) -> str:
    row, column = ROWS[spec["row"]], COLUMNS[spec["column"]]
    if row == "middle" and column == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"in the {row} {column}"


def still_caption(spec: dict, rng=None) -> str:
    """Alt-text-like description: ``"a small red square in the top left"`` (a few templates)."""
    what = f"{spec['size']} {spec['colour']} {spec['shape']}"
    where = still_position(spec)
    templates = (f"a {what} {where}", f"a photo of a {what} {where}", f"{where} there is a {what}",
                 f"a {what} {where} on a plain background")
    return templates[0] if rng is None else str(rng.choice(templates))


# Web alt-text names actions a still cannot show ("a dog running"): a share of the CLIP's alt-texts carry a
# motion clause in the downstream captions' words with a random direction, so its text tower knows those words
# (and learns that, in a still, they say nothing about the image) -- like OpenAI's CLIP, it is then order- and
# direction-blind but not thrown by the vocabulary of video captions.
MOTION_CLAUSES = ("random", "arrival")
MOTION_VERBS = ("moves", "moving", "slides", "goes", "heads", "travels", "going")
MOTION_LINKS = (", then", " and then", " before moving", ". then it goes", ". after that it heads",
                ". next it moves", ". finally it")


def motion_phrase(rng, directions: list[str] | None = None) -> str:
    """A motion clause, random 1-3 segments unless ``directions`` are given: ``"slides left and then upward"``."""
    if directions is None:
        directions = [str(rng.choice(list(DIRECTIONS))) for _ in range(int(rng.integers(1, 4)))]
    words = [ADVERB[d] for d in directions] if rng.random() < 0.3 else directions
    return f"{rng.choice(MOTION_VERBS)} {words[0]}" + "".join(f"{rng.choice(MOTION_LINKS)} {w}" for w in words[1:])


def _motion_lists(max_segments: int = 3) -> list[list[str]]:
    """Every motion list a clip can have: 1 to ``max_segments`` segments, consecutive ones perpendicular."""
    lists, frontier = [], [[d] for d in DIRECTIONS]
    for _ in range(max_segments):
        lists += frontier
        frontier = [m + [d] for m in frontier for d in DIRECTIONS
                    if (d in ("left", "right")) != (m[-1] in ("left", "right"))]
    return lists


def arrival_motions(spec: dict, rng) -> list[str] | None:
    """A motion list (equal segments, as in the clips) that, started at the frame's centre, ends in the still's
    cell: the still read as the last frame of that motion (``None`` for the centre cell, which no list ends in).
    ``"moves right, then up"`` then goes with a shape in the top right, as a photo shows where a thing went."""
    want = (spec["column"] - 1, spec["row"] - 1)  # sign of the net (dx, dy); y grows downward
    fits = [m for m in _motion_lists()
            if tuple(int(np.sign(sum(DIRECTIONS[d][axis] for d in m))) for axis in (0, 1)) == want]
    return [str(d) for d in fits[int(rng.integers(len(fits)))]] if fits else None


def still_alt_text(spec: dict, rng, motion_share: float = 0.5, clause: str = "random") -> str:
    """The tiny CLIP's pre-training text: ``still_caption``, or (``motion_share`` of the time) the same
    description with a motion clause: ``"the small red square moves left, then up."``. ``clause``: ``random``
    (a direction the still cannot show) or ``arrival`` (a motion that ends where the shape is,
    ``arrival_motions``; the centre cell keeps the plain caption)."""
    if rng.random() >= motion_share:
        return still_caption(spec, rng)
    if clause not in MOTION_CLAUSES:
        raise ValueError(f"motion clause {clause!r}; choose from {MOTION_CLAUSES}")
    directions = arrival_motions(spec, rng) if clause == "arrival" else None
    if clause == "arrival" and directions is None:
        return still_caption(spec, rng)
    what = f"{spec['size']} {spec['colour']} {spec['shape']}"
    article = "the" if rng.random() < 0.5 else "a"
    templates = (f"{article} {what} {motion_phrase(rng, directions)}.",
                 f"{article} {spec['colour']} {spec['shape']} {motion_phrase(rng, directions)} {still_position(spec)}",
                 f"a photo of {article} {what} {motion_phrase(rng, directions)}")
    return str(rng.choice(templates))


def still_short_caption(spec: dict) -> str:
    """What the demo's captioner learns to write: ``"a red square"``."""
    return f"a {spec['colour']} {spec['shape']}"


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


# What a speech recogniser makes of the words (homophones and near-misses), and the confusions a speaker
# makes (the wrong colour or shape named): ASR subtitles are only partly about what is on screen.
MISHEARD = {"red": ("read", "bread"), "blue": ("blew", "glue"), "green": ("greet", "queen"),
            "yellow": ("hello", "fellow"), "purple": ("people", "pebble"), "orange": ("arrange", "storage"),
            "white": ("right", "wide"), "cyan": ("sign", "science"), "pink": ("think", "pin"),
            "brown": ("round", "brow"), "grey": ("great", "gray"), "lime": ("line", "time"),
            "square": ("scare", "where"), "bar": ("car", "far"), "pillar": ("pillow", "killer"),
            "ring": ("bring", "wing"),
            "right": ("write", "bright"), "left": ("lift", "laughed"), "up": ("op", "cup"), "down": ("town", "done")}


# Share of subtitles that are only chatter (HD-VILA's ASR is often about something else entirely).
ASR_UNRELATED_SHARE = 0.25


def _heard(word: str, rng, p_misheard: float) -> str:
    return str(rng.choice(MISHEARD[word])) if word in MISHEARD and rng.random() < p_misheard else word


def asr_subtitle(spec: ClipSpec, rng) -> str:
    """Noisy lowercase ASR-like text, only partly about the clip (like HD-VILA's subtitles).

    The speaker mentions the motion ~75% of the time (in order; each direction word misheard 15%), names the
    colour ~55% (a wrong colour 25% of those) and the shape ~55% (a wrong shape 25%), and 25% of
    subtitles are unrelated chatter (``ASR_UNRELATED_SHARE``); every content word may come out as a homophone (``MISHEARD``) and the
    text is padded with fillers and unrelated words."""
    def noise(low, high):
        words = [str(rng.choice(FILLERS)) if rng.random() < 0.4 else str(rng.choice(UNRELATED))
                 for _ in range(int(rng.integers(low, high)))]
        return " ".join(words)

    if rng.random() < ASR_UNRELATED_SHARE:
        return noise(7, 17)
    colour, shape = spec.colour, spec.shape
    if rng.random() < 0.25:
        colour = str(rng.choice([c for c in COLOURS if c != spec.colour]))
    if rng.random() < 0.25:
        shape = str(rng.choice([x for x in SHAPES if x != spec.shape]))
    thing = " ".join(w for w, keep in ((_heard(colour, rng, 0.2), rng.random() < 0.55),
                                       (_heard(shape, rng, 0.2), rng.random() < 0.55)) if keep) or "thing"
    if rng.random() < 0.75:
        moves = f" {rng.choice(FILLERS)} and then ".join(_heard(m, rng, 0.15) for m in spec.motions)
        core = f"the {thing} is going {moves}"
    else:
        core = f"here's the {thing}"
    return " ".join(part for part in (noise(3, 9), core, noise(2, 7)) if part)


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


# ----------------------------------------------------------------------------------------------- actions
def action_classes() -> list[str]:
    """Every action class: direction sequences of 2 and 3 perpendicular segments (24), as labels."""
    sequences = []
    for length in (2, 3):
        partial = [[d] for d in DIRECTIONS]
        for _ in range(length - 1):
            partial = [seq + [d] for seq in partial for d in DIRECTIONS
                       if (d in ("left", "right")) != (seq[-1] in ("left", "right"))]
        sequences += partial
    return [action_label(seq) for seq in sequences]


def action_label(motions: list[str]) -> str:
    """The class name of a motion sequence: ``["right", "up"]`` -> ``"moves right then up"``."""
    return "moves " + " then ".join(motions)


def action_class_split() -> tuple[list[str], list[str]]:
    """``(seen, held_out)`` classes: every ``ACTION_HELD_OUT_EVERY``-th class is held out for zero-shot."""
    classes = action_classes()
    held = [c for i, c in enumerate(classes) if i % ACTION_HELD_OUT_EVERY == ACTION_HELD_OUT_EVERY - 1]
    return [c for c in classes if c not in held], held


def action_split_ids(options: dict | DemoOptions | None, dataset: str = "demo_actions") -> dict[str, list[str]]:
    """Clip ids per split of ``demo_actions`` (train/val/test) or ``demo_actions_unseen`` (its ``test`` split =
    the held-out classes' clips); numbered consecutively over train, val, test, unseen."""
    options = DemoOptions.from_dict(options)
    out, number = {}, 0
    for split in ACTION_SPLITS:
        count = int(options.actions_clips.get(split, 0))
        ids = [f"act_{n:05d}" for n in range(number, number + count)]
        number += count
        if count and (split == "unseen") == (dataset == "demo_actions_unseen"):
            out["test" if split == "unseen" else split] = ids
    return out


def action_specs(options: dict | DemoOptions | None) -> list[ClipSpec]:
    """Every action clip (both datasets): clip k of a split shows class k mod n of that split's classes
    (seen classes for train/val/test, held-out ones for unseen); colour, shape, background and position random."""
    options = DemoOptions.from_dict(options)
    seen, held = action_class_split()
    motions_of = {action_label(m): m for m in _action_sequences()}
    specs = []
    for dataset in ACTION_DATASETS:
        classes = held if dataset == "demo_actions_unseen" else seen
        for split, ids in action_split_ids(options, dataset).items():
            for k, clip_id in enumerate(ids):
                rng = np.random.default_rng([options.seed, 100, int(clip_id.split("_")[1])])
                specs.append(_action_spec(rng, options, clip_id, split, motions_of[classes[k % len(classes)]]))
    return specs


def _action_sequences() -> list[list[str]]:
    return [label[len("moves "):].split(" then ") for label in action_classes()]


def _action_spec(rng, options: DemoOptions, clip_id: str, split: str, motions: list[str]) -> ClipSpec:
    """A clip of the given motions (same geometry rules as the video-text clips; no twin)."""
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    unit_path = _path(motions, options.num_frames, step=1.0, start=(0.0, 0.0))
    reach = int(np.ceil(options.frame_size // 8 * REACH_SCALE))
    room = options.frame_size - 2 * reach - 4
    extent = unit_path.max(0) - unit_path.min(0)
    step = float(min(options.frame_size / 16, room / max(extent.max(), 1)))
    low = 2 + reach - unit_path.min(0) * step
    high = options.frame_size - 2 - reach - unit_path.max(0) * step
    start = tuple(float(rng.uniform(lo, hi)) for lo, hi in zip(low, high))
    return ClipSpec(clip_id, split, colour, shape, background, list(motions), None, False, start, step)


def write_action_annotations(folder: Path, options: DemoOptions) -> dict:
    """The action datasets' label JSONL files and class lists into ``folder``; returns the clip counts."""
    seen, held = action_class_split()
    specs = {s.clip_id: s for s in action_specs(options)}
    counts = {}
    for dataset in ACTION_DATASETS:
        for split, ids in action_split_ids(options, dataset).items():
            _write_jsonl(folder / f"{dataset}_{split}.jsonl",
                         [{"clip_id": i, "label": action_label(specs[i].motions)} for i in ids])
            counts[f"{dataset}/{split}"] = len(ids)
    (folder / "demo_actions_classes.txt").write_text("".join(f"{c}\n" for c in seen))
    (folder / "demo_actions_unseen_classes.txt").write_text("".join(f"{c}\n" for c in held))
    _write_jsonl(folder / "demo_actions_meta.jsonl", [
        {"clip_id": s.clip_id, "split": s.split, "label": action_label(s.motions), "colour": s.colour,
         "shape": s.shape, "motions": s.motions} for s in specs.values()])
    return counts


# ----------------------------------------------------------------------------------------------- long videos
@dataclass
class LongSpec:
    """A long video: events (each a ``ClipSpec`` rendered for ``frames`` frames) back to back."""
    clip_id: str
    events: list[ClipSpec]
    frames: list[int]   # frames per event

    @property
    def starts(self) -> list[float]:
        return [0.0] + list(np.cumsum(self.frames)[:-1].astype(float))


def long_specs(options: dict | DemoOptions | None) -> list[LongSpec]:
    """Every demo_long video: events of 4-8 s (a random shape moving in 1-3 segments) until the drawn length
    ``U[long_seconds]`` is filled (the last event takes the remainder, at least 2 s)."""
    options = DemoOptions.from_dict(options)
    specs = []
    for clip_id in split_clip_ids(options, LONG_DATASET).get("train", []):
        rng = np.random.default_rng([options.seed, 200, int(clip_id.split("_")[1])])
        total = int(rng.integers(options.long_seconds[0], options.long_seconds[1] + 1)) * options.fps
        events, frames = [], []
        while sum(frames) < total:
            n = int(rng.integers(4 * options.fps, 8 * options.fps + 1))
            n = total - sum(frames) if total - sum(frames) - n < 2 * options.fps else n
            event_opts = DemoOptions.from_dict({**options.to_dict(), "num_frames": max(6, n)})
            events.append(_random_forward_spec(rng, event_opts, f"{clip_id}#{len(events)}", "train"))
            frames.append(n)
        specs.append(LongSpec(clip_id, events, frames))
    return specs


def render_long(spec: LongSpec, options: dict | DemoOptions | None) -> np.ndarray:
    """uint8 [sum(frames), size, size, 3]: every event rendered for its own frame count, concatenated."""
    options = DemoOptions.from_dict(options)
    parts = [render_clip(event, {**options.to_dict(), "num_frames": max(6, n)})[:n]
             for event, n in zip(spec.events, spec.frames)]
    return np.concatenate(parts)


def long_subtitles(spec: LongSpec, options: DemoOptions, rng) -> list[dict]:
    """Timed ASR-like lines: per event one line about it (``asr_subtitle``, so sometimes wrong or unrelated),
    spoken with a lag of -1..+2 s as real speech is, plus 0-2 lines of unrelated chatter between events;
    sorted by start, clipped to the video."""
    duration = sum(spec.frames) / options.fps
    lines = []
    for event, start, n in zip(spec.events, spec.starts, spec.frames):
        t0, length = start / options.fps, n / options.fps
        lag = float(rng.uniform(-1.0, 2.0))
        begin = min(max(0.0, t0 + lag), duration - 1.0)
        end = min(duration, begin + float(rng.uniform(0.5, 0.9)) * length)
        lines.append({"start": round(float(begin), 2), "end": round(float(max(end, begin + 0.5)), 2),
                      "text": asr_subtitle(event, rng)})
        for _ in range(int(rng.integers(0, 3))):
            chat = float(rng.uniform(t0, t0 + length))
            words = [str(rng.choice(FILLERS if rng.random() < 0.4 else UNRELATED)) for _ in range(rng.integers(3, 9))]
            lines.append({"start": round(float(min(chat, duration - 0.5)), 2),
                          "end": round(float(min(duration, chat + rng.uniform(1.0, 2.5))), 2), "text": " ".join(words)})
    return sorted(lines, key=lambda line: (line["start"], line["end"]))


def write_long_annotations(folder: Path, options: DemoOptions) -> dict:
    """``demo_long_train.jsonl`` (timed ``subtitles`` lines) and ``demo_long_meta.jsonl`` (the events)."""
    specs = long_specs(options)
    lines, meta = [], []
    for spec in specs:
        rng = np.random.default_rng([options.seed, 201, int(spec.clip_id.split("_")[1])])
        lines.append({"clip_id": spec.clip_id, "subtitles": long_subtitles(spec, options, rng)})
        meta.append({"clip_id": spec.clip_id, "split": "train", "duration": sum(spec.frames) / options.fps,
                     "events": [{"start": start / options.fps, "end": (start + n) / options.fps,
                                 "colour": e.colour, "shape": e.shape, "motions": e.motions}
                                for e, start, n in zip(spec.events, spec.starts, spec.frames)]})
    _write_jsonl(folder / f"{LONG_DATASET}_train.jsonl", lines)
    _write_jsonl(folder / f"{LONG_DATASET}_meta.jsonl", meta)
    return {"train": len(lines)}


# ----------------------------------------------------------------------------------------------- writing
def _write_clip(job: tuple["ClipSpec | LongSpec", DemoOptions, str]) -> None:
    from clipvip.video_io import write_video

    spec, options, path = job
    frames = render_long(spec, options) if isinstance(spec, LongSpec) else render_clip(spec, options)
    write_video(path, frames, options.fps, crf=options.crf, gop=options.fps * 2)


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
        if any(options.actions_clips.values()):
            summary["demo_actions"] = write_action_annotations(tmp / "annotations", options)
            jobs += [(spec, options, str(tmp / "videos" / f"{spec.clip_id}.mp4")) for spec in action_specs(options)]
        if options.long_clips:
            summary[LONG_DATASET] = write_long_annotations(tmp / "annotations", options)
            jobs += [(spec, options, str(tmp / "videos" / f"{spec.clip_id}.mp4")) for spec in long_specs(options)]
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
        done = {"options": options.to_dict(), "clips": summary, "num_videos": len(jobs),
                "annotations": sorted(p.name for p in (out / "annotations").glob("*.jsonl"))}
        write_json_atomic(done_path, done)
        return done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@stage_main("demo-data")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip demo-data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="corpus directory (videos/, annotations/, DONE.json)")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of DemoOptions fields")
    args = parser.parse_args(argv)
    options = DemoOptions.from_dict(parse_options(args.options))
    started = time.perf_counter()
    done = write_corpus(args.out, options)
    print(f"demo-data: wrote {done['num_videos']} videos and annotations {done['clips']} to {args.out} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
