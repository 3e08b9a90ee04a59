"""VideoCLIP's overlapped video-text sampling (fairseq MMPT ``TextClipSamplingProcessor`` + ``OverlappedAligner``).

Usage:
    from clipvip.data.overlapped import OverlappedSampler
    sampler = OverlappedSampler(tokenize=lambda s: tok(s, add_special_tokens=False)["input_ids"],
                                mode="overlapped", num_frames=12, seed=42)
    pair = sampler.sample(subtitles, duration=391.5, epoch=3, index=17, draw=5)   # draw: clip k of a video
    pair.token_ids           # span tokens, truncated to max_text_len (61), no special tokens
    pair.text                # the span's lines joined with spaces (for a tokenizer of one's own)
    pair.window              # (start_s, end_s) integer seconds: per-second feature rows start..end-1
    pair.feature_rows(32)    # those rows, at most 32 (VideoCLIP's max_video_len)
    pair.frame_times         # float seconds [T], sorted, inside the window (frame-based models)

Modes:
  * ``overlapped`` (VideoCLIP pre-training, default):
    1. text span: a random line i ~ U{0..L-1}; token budget ~ randint(8, 64) (Python's ``randint`` is
       inclusive at both ends: ``rng.integers(8, 65)``); while (a neighbour exists) and tokens < budget and
       span seconds (end of last - start of first) < 256: with p = 1/2 append the next line if there is one,
       else prepend the previous if there is one, else append the next (so the ends force the direction --
       exactly the official branch order); then the tokens are truncated to ``max_text_len`` (61 =
       96 - 32 - 3, the official ``max_len - max_video_len - 3``). Whole lines are added, so the span may pass
       the budget before the truncation. (The official ``keep_prob`` line skipping is off in VideoCLIP's
       config, ``keep_prob = 1``, and not implemented.)
    2. centre: low = floor(start of first line), high = ceil(end of last line); ``randint(low, high)``
       (inclusive) if low < high else (low + high) // 2; clamped to [0, S - 1] with S = the video's seconds.
    3. duration L ~ randint(3, 32) s; the window [c, c) grows one second at a time, end + 1 or start - 1 with
       p = 1/2 (forced at the video's ends), until it spans L seconds or the whole video (so L = min(L, S)).
  * ``aligned`` (the embedding pass of retrieval-augmented training; official ``VariedLenAligner``): the same
    text span, window = [floor(start of first), ceil(end of last)] clamped to the video -- exactly the span.
  * ``clip``: all lines, window = the whole clip (today's CLIP-ViP behaviour).

Seconds: S = max(1, floor(duration + 1e-6)) whole seconds, matching one S3D feature per 30 frames at 30 fps.
Frame times: N = max(1, round(seconds of the window * fps)) grid positions (``fps``: the frame pool's rate),
indices ``jitter_indices(N, T, rng)`` (``uniform_indices`` with ``jitter=False``), time = start + (i + 0.5)/fps
clipped to the window (and to ``duration``).

Determinism: every draw uses ``numpy.random.default_rng([seed, epoch, index, draw])``, so an item is a pure
function of its position and a resumed run (the sampler state resumes by position) sees the same pairs. The
official code uses Python's global ``random``: the distributions are the same, the streams are not.
Token counts come from the ``tokenize`` callable (CLIP BPE or BERT WordPiece alike); per-clip token lists
are cached (``cache_size`` clips, LRU).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from clipvip.data.sampling import jitter_indices, uniform_indices
from clipvip.data.subtitles import Subtitles

MODES = ("overlapped", "aligned", "clip")


@dataclass
class ClipTextPair:
    clip_id: str
    line_start: int            # first line of the text span
    line_end: int              # one past the last line
    token_ids: list[int]
    text: str
    span: tuple[float, float]  # the text span's time range (start of first line, end of last line)
    window: tuple[int, int]    # video window in whole seconds [start, end)
    frame_times: np.ndarray    # float64 [T] seconds
    budget: int | None = None  # the drawn token budget (overlapped / aligned)
    duration: int | None = None  # the drawn clip duration (overlapped)
    centre: int | None = None    # the window's starting second (overlapped)

    def feature_rows(self, max_len: int = 32) -> np.ndarray:
        """Per-second feature rows of the window, the first ``max_len`` (official ``_build_video_seq``)."""
        start, end = self.window
        return np.arange(start, min(end, start + max_len), dtype=np.int64)


def video_seconds(duration: float) -> int:
    return max(1, int(math.floor(float(duration) + 1e-6)))


def grow_text_span(starts: Sequence[float], ends: Sequence[float], lengths: Sequence[int], centre: int,
                   budget: int, max_span_seconds: float, rng: np.random.Generator) -> tuple[int, int]:
    """The official span growth; returns [first, last + 1) line indices."""
    n = len(lengths)
    first, stop = centre, centre + 1
    tokens = lengths[centre]
    span = max(0.0, ends[centre] - starts[centre])
    while (first > 0 or stop < n) and tokens < budget and span < max_span_seconds:
        if rng.random() > 0.5 and stop < n:
            tokens += lengths[stop]
            stop += 1
        elif first > 0:
            first -= 1
            tokens += lengths[first]
        else:  # first == 0: only the next line is left
            tokens += lengths[stop]
            stop += 1
        span = max(0.0, ends[stop - 1] - starts[first])
    return first, stop


def grow_window(num_seconds: int, length: int, centre: int, rng: np.random.Generator) -> tuple[int, int]:
    """Official ``VideoClipSamplingProcessor``: grow [c, c) by one second per step until ``length`` or full."""
    if not 0 <= centre < num_seconds:
        raise ValueError(f"centre {centre} outside [0, {num_seconds})")
    start = end = centre
    grown = 0
    while (start > 0 or end < num_seconds) and grown < length:
        if start <= 0:
            end += 1
        elif end >= num_seconds:
            start -= 1
        elif rng.random() > 0.5:
            end += 1
        else:
            start -= 1
        grown += 1
    return start, end


class OverlappedSampler:
    def __init__(self, tokenize: Callable[[str], list[int]], mode: str = "overlapped", num_frames: int = 12,
                 fps: float = 1.0, jitter: bool = True, seed: int = 0, min_text_tokens: int = 8,
                 max_text_tokens: int = 64, max_text_len: int = 61, max_span_seconds: float = 256.0,
                 min_clip_seconds: int = 3, max_clip_seconds: int = 32, cache_size: int = 4096):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 1 <= min_text_tokens <= max_text_tokens:
            raise ValueError(f"need 1 <= min_text_tokens <= max_text_tokens, got {min_text_tokens}, "
                             f"{max_text_tokens}")
        if not 1 <= min_clip_seconds <= max_clip_seconds:
            raise ValueError(f"need 1 <= min_clip_seconds <= max_clip_seconds, got {min_clip_seconds}, "
                             f"{max_clip_seconds}")
        if fps <= 0 or num_frames < 1 or max_text_len < 1:
            raise ValueError("fps, num_frames and max_text_len must be positive")
        self.tokenize, self.mode, self.num_frames, self.fps = tokenize, mode, int(num_frames), float(fps)
        self.jitter, self.seed = bool(jitter), int(seed)
        self.min_text_tokens, self.max_text_tokens = int(min_text_tokens), int(max_text_tokens)
        self.max_text_len, self.max_span_seconds = int(max_text_len), float(max_span_seconds)
        self.min_clip_seconds, self.max_clip_seconds = int(min_clip_seconds), int(max_clip_seconds)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[tuple[str, ...], list[list[int]]]] = OrderedDict()

    # ------------------------------------------------------------------------------------------ helpers
    def line_tokens(self, subs: Subtitles) -> list[list[int]]:
        texts = tuple(line.text for line in subs.lines)
        hit = self._cache.get(subs.clip_id)
        if hit is not None and hit[0] == texts:  # same clip id with other lines (another file): re-tokenise
            self._cache.move_to_end(subs.clip_id)
            return hit[1]
        tokens = [list(self.tokenize(text)) for text in texts]
        self._cache[subs.clip_id] = (texts, tokens)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return tokens

    def rng(self, epoch: int, index: int, draw: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index), int(draw)])

    def _frame_times(self, start: float, end: float, rng: np.random.Generator) -> np.ndarray:
        n = max(1, int(round((end - start) * self.fps)))
        idx = jitter_indices(n, self.num_frames, rng) if self.jitter else uniform_indices(n, self.num_frames)
        return np.clip(start + (idx + 0.5) / self.fps, start, end)

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, subs: Subtitles, duration: float, epoch: int = 0, index: int = 0, draw: int = 0,
               mode: str | None = None) -> ClipTextPair:
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not subs.lines:
            raise ValueError(f"{subs.clip_id}: no subtitle lines")
        rng = self.rng(epoch, index, draw)
        seconds = video_seconds(duration)
        lines = subs.resolved(duration)
        tokens = self.line_tokens(subs)
        starts = [ln.start for ln in lines]
        ends = [ln.end for ln in lines]
        if mode == "clip":
            first, stop, budget = 0, len(lines), None
        else:
            centre_line = int(rng.integers(0, len(lines)))
            budget = int(rng.integers(self.min_text_tokens, self.max_text_tokens + 1))
            first, stop = grow_text_span(starts, ends, [len(t) for t in tokens], centre_line, budget,
                                         self.max_span_seconds, rng)
        ids = [t for k in range(first, stop) for t in tokens[k]][: self.max_text_len]
        text = " ".join(lines[k].text for k in range(first, stop))
        span = (float(starts[first]), float(ends[stop - 1]))
        length = centre = None
        if mode == "clip":
            window = (0, seconds)
        elif mode == "aligned":
            # official VariedLenAligner: end = min(ceil(end), S); start = max(min(floor(start), end), 0)
            end = min(math.ceil(span[1]), seconds)
            start = max(min(math.floor(span[0]), end), 0)
            if end <= start:  # a zero-length span (or one at the very end): keep one second
                start, end = min(start, seconds - 1), min(start, seconds - 1) + 1
            window = (start, end)
        else:
            low, high = math.floor(span[0]), math.ceil(span[1])
            centre = int(rng.integers(low, high + 1)) if low < high else int((low + high) // 2)
            centre = max(0, min(seconds - 1, centre))
            length = int(rng.integers(self.min_clip_seconds, self.max_clip_seconds + 1))
            window = grow_window(seconds, length, centre, rng)
        t_end = max(min(float(window[1]), float(duration)), float(window[0]))
        times = self._frame_times(float(window[0]), t_end, rng)
        return ClipTextPair(subs.clip_id, first, stop, ids, text, span, window, times, budget, length, centre)
