"""Torch datasets over a frame store: fine-tuning (train / eval) and post-pretraining (V, S, F, C).

Usage:
    >>> index = FrameIndex("results/frames/msrvtt/index.json")
    >>> anns = read_annotations("msrvtt_train.jsonl")
    >>> ds = FinetuneDataset(index, anns, num_frames=12, image_size=224, train=True, seed=0)
    >>> ds.set_epoch(3); item = ds[0]    # {"pixel_values": uint8 [12,3,224,224], "text": str, "clip_id": str, "index": int}
    >>> ds.missing                        # clip ids in the annotations that the frame store lacks
    >>> pre = PretrainDataset(index, subtitles, captions=read_captions(paths), num_frames=12, image_size=224)
    >>> pre[0].keys()                     # pixel_values (V), text (S), frame_pixel_values (F), caption (C), ...

Randomness (jittered frames, which caption/subtitle) comes only from ``np.random.default_rng([seed, epoch,
index])``: an item is the same whichever worker loads it, and a resumed run sees the same data. The epoch
lives in shared memory so ``set_epoch`` in the main process reaches persistent DataLoader workers (their
dataset copies would otherwise keep the epoch they were forked with).

Training frames come from the store's pool: jittered indices over the N decoded frames, each mapped to the
pool frame with the nearest decoded index (exact when the pool holds every frame). Evaluation frames are
the store's exact uniform frames.

Pixels (``pixel_values`` V, ``frame_pixel_values`` F) are uint8 ``[T,3,S,S]`` centre crops
(``clipvip.data.crop_uint8``), not normalised: whoever feeds the model normalises once per batch on its
device (``clipvip.data.to_device`` / ``normalize_pixels``), so workers hand 4x fewer bytes to the main process.
"""
from __future__ import annotations

import logging
import multiprocessing
import warnings

import numpy as np
from torch.utils.data import Dataset

from .sampling import jitter_indices, nearest_positions
from .transforms import crop_uint8

log = logging.getLogger(__name__)
META_CACHE_SIZE = 200_000  # clips whose (N, pool indices) a process keeps; ~0.4 KB each


def _failure_reasons(frame_index, clip_ids: list[str]) -> dict[str, str]:
    """Reasons from the store's failure manifest (``FrameIndex.failures()``) for the given clips."""
    reasons = {c: "not in frame store" for c in clip_ids}
    failures = getattr(frame_index, "failures", None)  # a FrameIndex has a manifest, a single FrameStore not
    if clip_ids and failures is not None:
        table = failures()  # columns clip_id, reason, detail, shard
        for clip, reason in zip(table["clip_id"].astype(str), table["reason"].astype(str)):
            if clip in reasons:
                reasons[clip] = reason
    return reasons
    table = failures()
    if table is not None and len(table) and "clip_id" in table.columns:
        column = next((c for c in ("reason", "error", "detail") if c in table.columns), None)
        for row in table.itertuples(index=False):
            clip = str(getattr(row, "clip_id"))
            if clip in reasons and column:
                reasons[clip] = str(getattr(row, column))
    return reasons


class _StoreDataset(Dataset):
    """Shared part: drop (and report) clips absent from the store, epoch-seeded RNG, frame loading."""

    def __init__(self, frame_index, annotations: list[dict], num_frames: int, image_size: int, seed: int):
        self.frames = frame_index
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.seed = int(seed)
        available = set(frame_index.ids())
        self.records = [a for a in annotations if a["clip_id"] in available]
        self.missing = [a["clip_id"] for a in annotations if a["clip_id"] not in available]
        self.missing_reasons = _failure_reasons(frame_index, self.missing)
        if self.missing:
            log.warning(
                "%s: %d of %d annotated clips are missing from the frame store and are excluded (first: %s)",
                type(self).__name__, len(self.missing), len(annotations), ", ".join(self.missing[:5]),
            )
        if not self.records:
            raise ValueError(f"{type(self).__name__}: none of the {len(annotations)} annotated clips is in the store")
        self._epoch = multiprocessing.RawValue("q", 0)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _sampling_meta(self, clip_id: str) -> dict:
        """N and the pool's decoded indices, cached per process: ``meta()`` reads every HDF5 attribute of
        the clip (~4 ms, a third of an item's cost); the cache is bounded for huge pre-training sets."""
        cache = self.__dict__.setdefault("_meta_cache", {})
        if clip_id not in cache:
            if len(cache) >= META_CACHE_SIZE:
                cache.clear()
            meta = self.frames.meta(clip_id)
            cache[clip_id] = {k: meta[k] for k in ("num_frames", "pool_indices") if k in meta}
        return cache[clip_id]

    def jittered_video(self, clip_id: str, rng: np.random.Generator):
        """Training frames uint8 ``[T,3,S,S]`` and the decoded-frame indices actually used."""
        meta = self._sampling_meta(clip_id)
        wanted = jitter_indices(int(meta["num_frames"]), self.num_frames, rng)
        if "pool_indices" in meta and hasattr(self.frames, "frames"):
            # Decode only the T chosen pool frames, not the whole pool (P JPEGs, 32 by default).
            used = np.asarray(meta["pool_indices"])[nearest_positions(meta["pool_indices"], wanted)]
            frames = self.frames.frames(clip_id, used)
        else:
            pool, pool_indices = self.frames.pool(clip_id)
            pos = nearest_positions(pool_indices, wanted)
            frames, used = pool[pos], np.asarray(pool_indices)[pos]
        return crop_uint8(frames, self.image_size), used

    def uniform_video(self, clip_id: str):
        return crop_uint8(self.frames.uniform(clip_id, self.num_frames), self.image_size)

    def middle_frame(self, clip_id: str):
        return crop_uint8(self.frames.middle(clip_id)[None], self.image_size)


class FinetuneDataset(_StoreDataset):
    """Video-text pairs. ``train``: jittered pool frames and one of the clip's texts sampled per (epoch, item);
    eval: the store's uniform frames and the clip's first text."""

    def __init__(self, frame_index, annotations, num_frames: int, image_size: int, train: bool, seed: int = 0):
        super().__init__(frame_index, annotations, num_frames, image_size, seed)
        self.train = bool(train)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        clip_id, texts = record["clip_id"], record["texts"]
        if self.train:
            rng = self.rng(index)
            text = texts[int(rng.integers(len(texts)))]  # draw the caption first: fixed RNG order
            video, _ = self.jittered_video(clip_id, rng)
        else:
            text, video = texts[0], self.uniform_video(clip_id)
        return {"pixel_values": video, "text": text, "clip_id": clip_id, "index": index}


class PretrainDataset(_StoreDataset):
    """Post-pretraining quadruples: V (jittered video), S (a subtitle), F (middle frame as a 1-frame video),
    C (the auxiliary caption of F).

    ``captions``: ``{clip_id: caption}`` from ``read_captions``. Clips without one (or every clip when
    ``captions`` is None) take C from the annotation field ``caption_fallback`` instead -- by default
    ``"texts"``, the subtitles themselves -- with a warning; they are listed in ``self.uncaptioned``.
    """

    def __init__(self, frame_index, annotations, captions: dict | None, num_frames: int, image_size: int,
                 seed: int = 0, caption_fallback: str = "texts"):
        super().__init__(frame_index, annotations, num_frames, image_size, seed)
        self.captions = dict(captions or {})
        self.caption_fallback = caption_fallback
        self.uncaptioned = [r["clip_id"] for r in self.records if r["clip_id"] not in self.captions]
        if self.uncaptioned:
            absent = [c for c, r in zip(self.uncaptioned, self._uncaptioned_records()) if not r.get(caption_fallback)]
            if absent:
                raise ValueError(f"PretrainDataset: no caption and no {caption_fallback!r} field for "
                                 f"{len(absent)} clips (first: {absent[0]})")
            why = "no captions were given" if captions is None else "they have no caption"
            warnings.warn(f"PretrainDataset: {len(self.uncaptioned)} of {len(self.records)} clips use the "
                          f"annotation field {caption_fallback!r} as their caption C because {why}", stacklevel=2)

    def _uncaptioned_records(self) -> list[dict]:
        return [r for r in self.records if r["clip_id"] not in self.captions]

    def _caption(self, record: dict, rng: np.random.Generator) -> str:
        if record["clip_id"] in self.captions:
            return self.captions[record["clip_id"]]
        value = record[self.caption_fallback]
        return value if isinstance(value, str) else value[int(rng.integers(len(value)))]

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        clip_id, texts = record["clip_id"], record["texts"]
        rng = self.rng(index)
        subtitle = texts[int(rng.integers(len(texts)))]
        caption = self._caption(record, rng)
        video, _ = self.jittered_video(clip_id, rng)
        return {
            "pixel_values": video,
            "text": subtitle,
            "frame_pixel_values": self.middle_frame(clip_id),
            "caption": caption,
            "clip_id": clip_id,
            "index": index,
        }
