"""Action-recognition data: a class list, labelled clips, and a torch Dataset over a frame store.

Formats:
  - class list: a text file, one class name per line (line k = class index k-1); surrounding whitespace is
    stripped, trailing blank lines are ignored; a blank line in between or a repeated name is an error.
  - annotations: JSONL, one ``{"clip_id": "...", "label": "class name"}`` per line (blank lines skipped); the
    label must be a name of the class list (exact match after stripping); each clip appears once.
Every problem raises ``RecognitionDataError`` (a ``UserError`` and a ``ValueError``) naming ``file:line``.

Frame sampling (``sampling``):
  - ``"stride"`` (official Vita-CLIP, ``--sampling_rate 16``): training takes T frames ``sampling_rate``
    apart from a random start (``randint(N - rate·(T-1))``; clips shorter than the span take ``0, rate, …``
    clamped to the last frame). Test: ``num_views`` temporal views (official: 3), each a span of
    ``(T-1)·rate + 1`` frames starting at ``round(slide / (V-1) · v)`` with ``slide = N - span`` (one view:
    the centre), short clips padded with their last frame.
  - ``"uniform"`` (the CLIP-ViP protocol): training = ``jitter_indices``; test with one view = the store's
    exact ``uniform_indices``; with V views, view v takes ``floor((k + (v + 0.5)/V) · N / T)``.
  The wanted decoded frame indices are mapped to the nearest *stored* frame of the clip (``meta
  ["frame_indices"]``: uniform, pool and middle frames), so they are exact when the store holds every frame
  (extract with a pool at least as large as the clips) and approximate otherwise.
Pixels: uint8 centre crops ``crop_uint8`` (the official test transform: short side to S, centre crop);
training augmentation (RandAugment, random resized crop) is not applied here.

Usage:
    names = read_class_list("k400_classes.txt")
    anns = read_recognition_annotations("k400_train.jsonl", names)   # [{"clip_id", "label", "label_index"}]
    ds = RecognitionDataset(FrameIndex(index_json), anns, num_frames=8, image_size=224, train=True)
    ds[0]   # {"pixel_values": uint8 [T,3,S,S], "label": int, "clip_id": str, "index": int}
    test = RecognitionDataset(index, test_anns, 8, 224, train=False, num_views=3)
    test[0]["pixel_values"].shape   # [3, T, 3, S, S]
    DataLoader(test, batch_size=4, collate_fn=collate_recognition)
"""
from __future__ import annotations

import difflib
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from clipvip.stage import UserError

from .annotations import _clip_id, _iter_json_lines
from .datasets import _StoreDataset
from .sampling import jitter_indices, nearest_positions, uniform_indices
from .transforms import crop_uint8

SAMPLING_MODES = ("stride", "uniform")


class RecognitionDataError(UserError, ValueError):
    """A malformed class list or recognition annotation file (message names file:line)."""


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_class_list(path: str | PathLike) -> list[str]:
    """Class names, one per line, in index order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecognitionDataError(f"{path}: cannot read the class list: {exc.strerror or exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names, seen = [], {}
    for lineno, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise RecognitionDataError(f"{path}:{lineno}: empty class name (blank line inside the class list)")
        if name in seen:
            raise RecognitionDataError(f"{path}:{lineno}: class {name!r} repeats line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise RecognitionDataError(f"{path}: the class list is empty")
    return names


def read_recognition_annotations(path: str | PathLike, class_names: list[str]) -> list[dict]:
    """``[{"clip_id": str, "label": str, "label_index": int}, ...]`` in file order (validated)."""
    path = Path(path)
    index = {n: i for i, n in enumerate(class_names)}
    records, first_line = [], {}
    try:
        for lineno, obj in _iter_json_lines(path):
            where = f"{path}:{lineno}"
            clip = _clip_id(obj, where)
            if "label" not in obj:
                raise RecognitionDataError(f"{where}: missing key 'label'")
            label = obj["label"]
            if not isinstance(label, str):
                raise RecognitionDataError(f"{where}: 'label' must be a class name (string), got "
                                           f"{type(label).__name__} {label!r:.80}")
            label = label.strip()
            if not label:
                raise RecognitionDataError(f"{where}: empty label")
            if label not in index:
                raise RecognitionDataError(f"{where}: unknown label {label!r} (not in the class list of "
                                           f"{len(class_names)} classes){_suggest(label, index)}")
            if clip in first_line:
                raise RecognitionDataError(f"{where}: clip {clip!r} already labelled on line {first_line[clip]}")
            first_line[clip] = lineno
            records.append({"clip_id": clip, "label": label, "label_index": index[label]})
    except RecognitionDataError:
        raise
    except OSError as exc:
        raise RecognitionDataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # the shared JSONL / clip_id checks
        raise RecognitionDataError(str(exc)) from None
    if not records:
        raise RecognitionDataError(f"{path}: no annotations")
    return records


# ------------------------------------------------------------------------------------------------ sampling
def stride_train_indices(num_frames: int, num_samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Official training sampling (``_random_sample_frame_idx`` with ``sampling_rate > 0``)."""
    if rate * (num_samples - 1) + 1 >= num_frames:
        return np.minimum(np.arange(num_samples) * rate, num_frames - 1)
    start = int(rng.integers(num_frames - rate * (num_samples - 1)))
    return start + np.arange(num_samples) * rate


def stride_test_views(num_frames: int, num_samples: int, rate: int, num_views: int) -> np.ndarray:
    """Official temporal test views (``_generate_temporal_crops``): ``[V, T]`` decoded indices."""
    span = (num_samples - 1) * rate + 1
    slide = max(num_frames, span) - span
    views = []
    for v in range(num_views):
        start = slide // 2 if num_views == 1 else round(slide / (num_views - 1) * v)
        views.append(np.minimum(start + np.arange(num_samples) * rate, num_frames - 1))  # padding = last frame
    return np.stack(views)


def uniform_test_views(num_frames: int, num_samples: int, num_views: int) -> np.ndarray:
    """``[V, T]``: one view = ``uniform_indices``; V views = segment offsets ``(v + 0.5) / V``."""
    if num_views == 1:
        return uniform_indices(num_frames, num_samples)[None]
    k = np.arange(num_samples)
    views = [np.floor((k + (v + 0.5) / num_views) * num_frames / num_samples).astype(int) for v in range(num_views)]
    return np.minimum(np.stack(views), num_frames - 1)


class RecognitionDataset(_StoreDataset):
    """Labelled clips over a ``FrameIndex``; see the module docstring for sampling and item layout.

    Items: ``pixel_values`` uint8 ``[T,3,S,S]`` (training, or ``num_views == 1``) or ``[V,T,3,S,S]``,
    ``label`` (class index), ``clip_id``, ``index``. Clips missing from the store are dropped and listed in
    ``missing`` (as in ``FinetuneDataset``). Randomness: ``np.random.default_rng([seed, epoch, index])``.
    """

    def __init__(self, frame_index, annotations: list[dict], num_frames: int, image_size: int, train: bool,
                 num_views: int = 1, sampling: str = "stride", sampling_rate: int = 16, seed: int = 0):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r}; choose from {SAMPLING_MODES}")
        if num_views < 1 or sampling_rate < 1:
            raise ValueError("num_views and sampling_rate must be >= 1")
        if train and num_views != 1:
            raise ValueError("training items have one view")
        super().__init__(frame_index, annotations, num_frames, image_size, seed)
        self.train, self.num_views = bool(train), int(num_views)
        self.sampling, self.sampling_rate = sampling, int(sampling_rate)

    def _stored(self, clip_id: str) -> tuple[int, np.ndarray]:
        cache = self.__dict__.setdefault("_stored_cache", {})
        if clip_id not in cache:
            meta = self.frames.meta(clip_id)
            cache[clip_id] = (int(meta["num_frames"]), np.asarray(meta["frame_indices"], dtype=int))
        return cache[clip_id]

    def wanted_indices(self, clip_id: str, index: int) -> np.ndarray:
        """Decoded frame indices this item wants: ``[T]`` (train) or ``[V, T]``."""
        n, _ = self._stored(clip_id)
        t = self.num_frames
        if self.train:
            rng = self.rng(index)
            if self.sampling == "stride":
                return stride_train_indices(n, t, self.sampling_rate, rng)
            return jitter_indices(n, t, rng)
        if self.sampling == "stride":
            return stride_test_views(n, t, self.sampling_rate, self.num_views)
        return uniform_test_views(n, t, self.num_views)

    def used_indices(self, clip_id: str, index: int) -> np.ndarray:
        """The stored frames (decoded indices) nearest to ``wanted_indices``: what the item reads."""
        _, stored = self._stored(clip_id)
        wanted = self.wanted_indices(clip_id, index)
        return stored[nearest_positions(stored, wanted.reshape(-1))].reshape(wanted.shape)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        clip_id = record["clip_id"]
        used = self.used_indices(clip_id, index)
        frames = self.frames.frames(clip_id, used.reshape(-1))
        pixels = crop_uint8(frames, self.image_size)  # [V·T, 3, S, S]
        if used.ndim == 2 and self.num_views > 1:
            pixels = pixels.reshape(self.num_views, self.num_frames, *pixels.shape[1:])
        return {"pixel_values": pixels, "label": int(record["label_index"]), "clip_id": clip_id, "index": index}


def collate_recognition(items: list[dict]) -> dict:
    """Stack items: ``pixel_values`` uint8 ``[B, (V,) T, 3, S, S]``, ``label``/``index`` int64, ``clip_id`` list."""
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "clip_id": [it["clip_id"] for it in items],
    }
