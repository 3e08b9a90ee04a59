"""Torch datasets over a frame store: fine-tuning (train / eval) and post-pretraining (V, S, F, C).

Usage:
    >>> index = FrameIndex("results/frames/msrvtt/index.json")
    >>> anns = read_annotations("msrvtt_train.jsonl")
    >>> ds = FinetuneDataset(index, anns, num_frames=12, image_size=224, train=True, seed=0)
    >>> ds.set_epoch(3); item = ds[0]    # {"pixel_values": uint8 [12,3,224,224], "text": str, "clip_id": str, "index": int}
    >>> ds.missing                        # clip ids in the annotations that the frame store lacks
    >>> pre = PretrainDataset(index, subtitles, captions=read_captions(paths), num_frames=12, image_size=224)
    >>> pre[0].keys()                     # pixel_values (V), text (S), frame_pixel_values (F), caption (C), ...
    >>> win = WindowedPretrainDataset(index, records, read_subtitles_by_id, captions, 12, 224, tokenize=tok,
    ...                               pair_sampling="overlapped")   # VideoCLIP windows of long videos

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
from collections.abc import Sequence

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


def _joined_shards(frame_index, annotations):
    """The annotation table's ``shard`` column when it was joined with exactly this frame index, else None."""
    uuid = getattr(annotations, "index_uuid", "")
    if uuid and uuid == getattr(frame_index, "uuid", None):
        return annotations.shards()
    return None


def _py_strings(values, chunk: int = 65_536):
    """Iterate Python strings of a list or an Arrow array (decoded a chunk at a time)."""
    if hasattr(values, "slice") and hasattr(values, "to_pylist"):
        for start in range(0, len(values), chunk):
            yield from values.slice(start, chunk).to_pylist()
    else:
        yield from values


def _clip_id_at(annotations, i: int) -> str:
    return annotations.clip_id(i) if hasattr(annotations, "clip_id") else annotations[i]["clip_id"]


class _Without(Sequence):
    """A lazy sequence minus some rows (sorted ``missing_rows``): memory O(missing), not O(rows)."""

    def __init__(self, base, missing_rows: np.ndarray):
        self.base = base
        self.missing_rows = np.asarray(missing_rows, dtype=np.int64)
        # kept rows before the k-th missing row: item i is row i + #{k : _before[k] <= i}
        self._before = self.missing_rows - np.arange(len(self.missing_rows))

    def __len__(self) -> int:
        return len(self.base) - len(self.missing_rows)

    def row(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)}")
        return int(index + np.searchsorted(self._before, index, side="right"))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.base[self.row(index + len(self) if index < 0 else index)]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def clip_ids(self):
        ids = self.base.clip_ids() if hasattr(self.base, "clip_ids") else [r["clip_id"] for r in self.base]
        if not len(self.missing_rows):
            return ids
        keep = np.ones(len(self.base), dtype=bool)
        keep[self.missing_rows] = False
        return ids.filter(keep) if hasattr(ids, "filter") else [c for c, k in zip(ids, keep) if k]


class _StoreDataset(Dataset):
    """Shared part: drop (and report) clips absent from the store, epoch-seeded RNG, frame loading."""

    def __init__(self, frame_index, annotations: list[dict], num_frames: int, image_size: int, seed: int):
        self.frames = frame_index
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self._joined = _joined_shards(frame_index, annotations)
        if isinstance(annotations, list):
            available = set(frame_index.ids())
            self.records = [a for a in annotations if a["clip_id"] in available]
            self.missing = [a["clip_id"] for a in annotations if a["clip_id"] not in available]
        else:
            # A lazy table (clipvip.data.corpus.AnnotationTable): keep it, skip the rows the store lacks.
            if self._joined is not None:
                missing_rows = np.flatnonzero(self._joined < 0)
            else:
                ids = annotations.clip_ids() if hasattr(annotations, "clip_ids") else [a["clip_id"] for a in annotations]
                missing_rows = np.fromiter((i for i, c in enumerate(_py_strings(ids)) if c not in frame_index),
                                           dtype=np.int64)
            self.records = _Without(annotations, missing_rows)
            self.missing = [_clip_id_at(annotations, int(i)) for i in missing_rows]
        self.missing_reasons = _failure_reasons(frame_index, self.missing)
        if self.missing:
            log.warning(
                "%s: %d of %d annotated clips are missing from the frame store and are excluded (first: %s)",
                type(self).__name__, len(self.missing), len(annotations), ", ".join(self.missing[:5]),
            )
        if not len(self.records):
            raise ValueError(f"{type(self).__name__}: none of the {len(annotations)} annotated clips is in the store")
        self._epoch = multiprocessing.RawValue("q", 0)

    def item_shards(self) -> np.ndarray:
        """int32 frame-store shard of every item (for ``ResumableDistributedSampler(shuffle_mode="shard")``):
        from the annotation table's joined ``shard`` column when it has one, else one lookup per item."""
        if self._joined is not None:
            return np.delete(self._joined, self.records.missing_rows).astype(np.int32)
        shard_of = getattr(self.frames, "shard_of", None)
        if shard_of is None:  # a single FrameStore: one shard
            return np.zeros(len(self.records), dtype=np.int32)
        ids = self.records.clip_ids() if hasattr(self.records, "clip_ids") else [r["clip_id"] for r in self.records]
        return np.fromiter((shard_of(c) for c in _py_strings(ids)), dtype=np.int32, count=len(self.records))

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
            # pool_times / fps / duration: the windowed sampler's (WindowedPretrainDataset) -- one cache for both
            cache[clip_id] = {k: meta[k] for k in ("num_frames", "pool_indices", "pool_times", "fps", "duration")
                              if meta.get(k) is not None}
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

    ``captions``: ``{clip_id: caption}`` from ``read_captions`` (or a lazy ``CaptionTable``); ``captions_source``
    names where they came from, for messages (default: the table's path). Missing captions are never silent:
    when more than ``max_missing_captions`` (a share of the clips, default 0.01 = TrainOptions'
    ``max_missing_captions``) lack a caption -- every clip when ``captions`` is None -- construction raises
    ``UserError`` naming how many and the source, because the caption loss terms would be trained on
    something else than the config asked for. The few clips within the tolerance take C from their subtitle
    (``texts``) with a warning; they are listed in ``self.uncaptioned``.

    ``caption_fallback`` (None by default) is the explicit opt-in to the old behaviour: e.g. ``"texts"``
    makes every uncaptioned clip take C from that annotation field, whatever their share, with a warning.
    ``needs_captions=False`` (a loss without a C term) skips the check: C is then the subtitle, unused.
    """

    def __init__(self, frame_index, annotations, captions: dict | None, num_frames: int, image_size: int,
                 seed: int = 0, caption_fallback: str | None = None, max_missing_captions: float = 0.01,
                 captions_source: str | None = None, needs_captions: bool = True):
        super().__init__(frame_index, annotations, num_frames, image_size, seed)
        # A lazy caption table (read_captions on an .arrow file) is kept as is: no dict of every caption.
        self.captions = dict(captions or {}) if captions is None or isinstance(captions, dict) else captions
        self.caption_fallback = caption_fallback
        self._fallback_field = caption_fallback or "texts"
        self._uncaptioned_items = self._find_uncaptioned()
        self.uncaptioned = [self.records[int(i)]["clip_id"] for i in self._uncaptioned_items]
        if not self.uncaptioned or not needs_captions:
            return
        source = captions_source or (str(getattr(captions, "path", "")) or None)
        where = "no captions were given" if captions is None else f"captions from {source or 'the given mapping'}"
        share = len(self.uncaptioned) / len(self.records)
        if caption_fallback is None and share > max_missing_captions:
            from clipvip.stage import UserError

            raise UserError(
                f"PretrainDataset: {len(self.uncaptioned)} of {len(self.records)} clips have no caption ({where}; "
                f"first: {', '.join(self.uncaptioned[:5])}), more than max_missing_captions={max_missing_captions}"
                f": the caption loss terms need them. Rerun the captions stage (its failures are in "
                f"R/captions/<ds>/*.failures.tsv), raise max_missing_captions, or opt in to "
                f"caption_fallback='texts' (subtitles as captions)")
        absent = [c for c, r in zip(self.uncaptioned, self._uncaptioned_records()) if not r.get(self._fallback_field)]
        if absent:
            raise ValueError(f"PretrainDataset: no caption and no {self._fallback_field!r} field for "
                             f"{len(absent)} clips (first: {absent[0]})")
        because = "no captions were given" if captions is None else f"they have no caption in {source or 'the given mapping'}"
        allowed = "caption_fallback is set" if caption_fallback else f"within max_missing_captions={max_missing_captions}"
        warnings.warn(f"PretrainDataset: {len(self.uncaptioned)} of {len(self.records)} clips use the annotation "
                      f"field {self._fallback_field!r} as their caption C because {because} ({allowed})", stacklevel=2)

    def _find_uncaptioned(self) -> np.ndarray:
        """Items without a caption; vectorised in Arrow when both sides are tables (no per-item Python)."""
        caption_ids = getattr(self.captions, "_ids", None)
        if caption_ids is not None and hasattr(self.records, "clip_ids"):
            import pyarrow.compute as pc

            import pyarrow as pa

            has = pc.is_in(self.records.clip_ids(), value_set=caption_ids).to_numpy(zero_copy_only=False)
            pa.default_memory_pool().release_unused()  # the lookup's hash table (~64 B/caption) back to the OS
            return np.flatnonzero(~has)
        if isinstance(self.records, list):
            return np.asarray([i for i, r in enumerate(self.records) if r["clip_id"] not in self.captions],
                              dtype=np.int64)
        ids = self.records.clip_ids()
        return np.fromiter((i for i, c in enumerate(_py_strings(ids)) if c not in self.captions), dtype=np.int64)

    def _uncaptioned_records(self) -> list[dict]:
        return [self.records[int(i)] for i in self._uncaptioned_items]

    def _caption(self, record: dict, rng: np.random.Generator) -> str:
        caption = self.captions.get(record["clip_id"])
        if caption is not None:
            return caption
        value = record[self._fallback_field]
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


class WindowedPretrainDataset(PretrainDataset):
    """Post-pretraining quadruples from VideoCLIP-style windows of long videos with timed subtitles (issue 14).

    ``pair_sampling`` ``overlapped`` (official ``TextClipSamplingProcessor`` + ``OverlappedAligner``: a text span
    of whole subtitle lines grown to a U[8, 64] token budget, a U[3, 32] s video window around a centre drawn
    inside the span) or ``aligned`` (the window is exactly the span); see ``clipvip.data.overlapped``. An item:
      V  T frames at the window's jittered times, each the pool frame nearest in time (a fixed-rate pool,
         frames option ``pool_fps``, stores ``pool_times``; a fixed-count pool's times are its indices / fps);
      S  the span's lines joined (the collator truncates to ``max_text_len`` tokens as for any text);
      F  the pool frame nearest the window's centre, C the clip's auxiliary caption (captions are per clip:
         the captions stage captions one middle frame per clip, so for a long video C describes its middle,
         not necessarily the window -- caption each window's frame for more, at that stage's cost).
    ``subtitles``: ``{clip_id: Subtitles}`` (``read_subtitles``); a record without subtitles is an error.
    ``tokenize``: text -> token ids without specials, for the token budget (the trainer's tokenizer).
    Randomness: the sampler's ``default_rng([seed, epoch, index, 0])``, so a resumed run sees the same pairs.
    """

    def __init__(self, frame_index, annotations, subtitles, captions, num_frames: int, image_size: int,
                 tokenize, pair_sampling: str = "overlapped", seed: int = 0, max_text_len: int = 70,
                 grid_fps: float = 10.0, **kwargs):
        from .overlapped import OverlappedSampler

        super().__init__(frame_index, annotations, captions, num_frames, image_size, seed=seed, **kwargs)
        if pair_sampling not in ("overlapped", "aligned"):
            raise ValueError(f"WindowedPretrainDataset: pair_sampling must be overlapped or aligned, got "
                             f"{pair_sampling!r} (clip = PretrainDataset)")
        self.subtitles = subtitles
        lacking = [r["clip_id"] for r in self.records if r["clip_id"] not in subtitles]
        if lacking:
            raise ValueError(f"WindowedPretrainDataset: {len(lacking)} clips have no subtitles "
                             f"(first: {', '.join(lacking[:5])})")
        self.pair_sampling = pair_sampling
        # Frame times on a fine grid (grid_fps), then the nearest pool frame: the pool's rate decides.
        self.sampler = OverlappedSampler(tokenize=tokenize, mode=pair_sampling, num_frames=self.num_frames,
                                         fps=grid_fps, seed=seed, max_text_len=max(1, int(max_text_len) - 2))

    def _window_meta(self, clip_id: str) -> dict:
        """Pool frames' decoded indices and times (``pool_times``, else indices / fps) and the clip's duration."""
        meta = self._sampling_meta(clip_id)
        indices = np.asarray(meta["pool_indices"], dtype=np.int64)
        fps = float(meta.get("fps") or 0.0)
        times = meta.get("pool_times")
        if times is None:
            if fps <= 0:
                raise ValueError(f"{clip_id}: the frame store has neither pool_times nor an fps to time "
                                 "its pool frames (windowed sampling needs times)")
            times = indices / fps
        duration = float(meta.get("duration") or (int(meta["num_frames"]) / fps if fps > 0 else 0.0))
        return {"indices": indices, "times": np.asarray(times, dtype=np.float64), "duration": max(duration, 1e-3)}

    @staticmethod
    def _nearest(meta: dict, times: np.ndarray) -> np.ndarray:
        """Decoded indices of the pool frames nearest in time to ``times`` (works on any float values)."""
        return meta["indices"][nearest_positions(meta["times"], times)]

    def window_pair(self, index: int):
        """The ``ClipTextPair`` of item ``index`` this epoch (what ``__getitem__`` loads)."""
        clip_id = self.records[index]["clip_id"]
        meta = self._window_meta(clip_id)
        return self.sampler.sample(self.subtitles[clip_id], meta["duration"], self.epoch, index), meta

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        clip_id = record["clip_id"]
        pair, meta = self.window_pair(index)
        centre = (pair.window[0] + min(pair.window[1], meta["duration"])) / 2.0
        # V's T frames and F (nearest the window's centre) in one read of the clip
        frames = self.frames.frames(clip_id, self._nearest(meta, np.append(pair.frame_times, centre)))
        return {
            "pixel_values": crop_uint8(frames[:-1], self.image_size),
            "text": pair.text,
            "frame_pixel_values": crop_uint8(frames[-1:], self.image_size),
            "caption": self._caption(record, self.rng(index)),
            "clip_id": clip_id,
            "index": index,
        }
