"""Corpus tables at HD-VILA-100M scale: clip ids, shard positions, subtitles and captions in memory-mapped
Arrow IPC files, so a training process's private memory does not grow with the corpus.

Usage:
    ids = ClipIdTable("results/frames/hdvila/index.arrow")   # sorted clip_id, shard, row (written by frames-index)
    ids.locate("v0001234")          # -> (shard, row) or None: binary search, no dict of all ids
    anns = AnnotationTable("results/corpus/hdvila/train.arrow", text_mode="sample")
    anns[7]                         # {"clip_id": ..., "texts": [...], ...extra keys}, as read_annotations gives
    caps = CaptionTable("results/captions/hdvila/captions.arrow")
    caps.get("v0001234")            # a Mapping clip_id -> caption, like read_captions' dict

    clipvip corpus-arrow annotations --input train.jsonl --index index.arrow --out train.arrow
    clipvip corpus-arrow captions --inputs 00000.jsonl 00001.jsonl ... --out captions.arrow

Why Arrow IPC: the files are opened with ``pyarrow.memory_map`` and read zero-copy, so every rank and every
forked DataLoader worker shares the same page-cache pages (they count as shared, not private, memory) and
nothing is parsed into Python objects until an item is asked for. Tables pickle as their path (DataLoader
workers reopen the map) and survive fork as is (a read-only map needs no per-process state).

Lookups: ``clip_id`` columns are sorted (bytewise, which is ``sorted()`` order for the ids we write) and a
lookup is a binary search over the zero-copy offsets/data buffers (~20 comparisons at 1 M ids, ~10-30 us);
the datasets do not look ids up per item when the annotation table carries the frame index's ``shard``/``row``
columns (joined once by the ``annotations`` command, checked by the index's ``index_uuid``).

Annotation table columns: ``clip_id`` (large_string), ``texts`` (list<large_string>, stripped, one entry per
string of the source line(s); ``text_mode="join"`` joins them at read time), ``extra`` (large_string: JSON of the
line's other keys, null when none), ``line_lengths`` (only when some clip spans several lines: texts per line,
so ``join`` joins per line), and with ``--index`` also ``shard``/``row`` (int32, -1 = not in the frame
store). Lines with a repeated ``clip_id`` are merged as ``read_annotations`` merges them.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

ANNOTATIONS_FORMAT = "clipvip-annotations/1"
CAPTIONS_FORMAT = "clipvip-captions/1"
IDS_FORMAT = "clipvip-frames-ids/1"
BATCH_ROWS = 65_536


# ------------------------------------------------------------------------------------------------ files
def write_table(path: str | os.PathLike, table: pa.Table, metadata: dict | None = None) -> None:
    """Write ``table`` as one Arrow IPC file (one record batch: contiguous columns) atomically."""
    from clipvip.stage import atomic_path

    table = table.combine_chunks()
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k: str(v) for k, v in metadata.items()}})
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))


class _MappedTable:
    """An Arrow IPC file opened with ``pyarrow.memory_map``; pickles as its path."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        source = pa.memory_map(str(self.path), "r")
        self.table = pa.ipc.open_file(source).read_all()  # zero-copy: buffers point into the map
        self.metadata = {k.decode(): v.decode() for k, v in (self.table.schema.metadata or {}).items()}

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("table", "_ids", "_offsets", "_data"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.Array:
        col = self.table.column(name)
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()

    def numpy(self, name: str) -> np.ndarray:
        """A fixed-width column as a read-only numpy view of the map (no copy)."""
        return self.column(name).to_numpy(zero_copy_only=True)


class _SortedIds(_MappedTable):
    """A table whose ``clip_id`` column is sorted: binary search on the raw Arrow buffers."""

    def _open(self) -> None:
        super()._open()
        ids = self.column("clip_id")
        if ids.type != pa.large_string():
            ids = ids.cast(pa.large_string())
        self._ids = ids
        buffers = ids.buffers()  # validity, offsets, data
        self._offsets = np.frombuffer(buffers[1], dtype=np.int64)[ids.offset: ids.offset + len(ids) + 1]
        self._data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")

    def position(self, clip_id: str) -> int:
        """Row of ``clip_id`` or -1."""
        key = str(clip_id).encode()
        off, data = self._offsets, self._data
        lo, hi = 0, len(off) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if data[off[mid]:off[mid + 1]].tobytes() < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(off) - 1 and data[off[lo]:off[lo + 1]].tobytes() == key:
            return lo
        return -1

    def positions(self, clip_ids) -> np.ndarray:
        """Vectorised ``position`` (int64, -1 where absent) for an Arrow array / list of ids (builds a
        temporary hash table of this table's ids: meant for one-off joins in workflow jobs)."""
        values = pa.array(clip_ids, type=pa.large_string()) if not isinstance(clip_ids, pa.Array) else clip_ids
        found = pc.index_in(values.cast(pa.large_string()), value_set=self._ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def __contains__(self, clip_id) -> bool:
        return self.position(clip_id) >= 0

    def clip_id(self, i: int) -> str:
        return self._data[self._offsets[i]:self._offsets[i + 1]].tobytes().decode()

    def ids(self) -> list[str]:
        return self._ids.to_pylist()


# ------------------------------------------------------------------------------------------------ frame ids
class ClipIdTable(_SortedIds):
    """``index.arrow``: sorted ``clip_id`` with the ``shard`` number and the ``row`` within the shard."""

    def _open(self) -> None:
        super()._open()
        self._shard = self.numpy("shard")
        self._row = self.numpy("row")

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_shard", None)
        state.pop("_row", None)
        return state

    def locate(self, clip_id: str) -> tuple[int, int] | None:
        i = self.position(clip_id)
        return None if i < 0 else (int(self._shard[i]), int(self._row[i]))

    def shard_of(self, clip_id: str) -> int:
        i = self.position(clip_id)
        return -1 if i < 0 else int(self._shard[i])

    @property
    def uuid(self) -> str:
        return self.metadata.get("index_uuid", "")


def write_clip_ids(path: str | os.PathLike, shard_ids: list[pa.Array], metadata: dict | None = None) -> dict:
    """Write ``index.arrow`` from each shard's ids (Arrow arrays); returns counts. Raises ``ValueError`` naming
    a clip found in two shards. Memory: Arrow buffers of the ids (~30 bytes/id), never Python objects."""
    counts = [len(a) for a in shard_ids]
    ids = pa.chunked_array([a.cast(pa.large_string()) for a in shard_ids] or [pa.array([], pa.large_string())],
                           type=pa.large_string()).combine_chunks()
    shard = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    row = np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if counts else np.zeros(0, np.int32)
    order = pc.sort_indices(ids)
    ids = ids.take(order)
    order_np = order.to_numpy()
    shard, row = shard[order_np], row[order_np]
    if len(ids) > 1:
        same = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
        dup = np.flatnonzero(same)
        if len(dup):
            i = int(dup[0])
            raise ValueError(f"clip {ids[i].as_py()!r} is in both shard {int(shard[i])} and shard "
                             f"{int(shard[i + 1])}")
    table = pa.table({"clip_id": ids, "shard": pa.array(shard), "row": pa.array(row)})
    write_table(path, table, {"format": IDS_FORMAT, **(metadata or {})})
    return {"num_clips": len(ids), "shard_num_clips": counts}


# ------------------------------------------------------------------------------------------------ annotations
class AnnotationTable(_MappedTable, Sequence):
    """Lazy ``read_annotations``: ``len()``, ``[i]`` -> the same dict, ``clip_ids()`` as an Arrow array."""

    def __init__(self, path: str | os.PathLike, text_mode: str = "sample"):
        from clipvip.data.annotations import TEXT_MODES

        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        self.text_mode = text_mode
        super().__init__(path)

    def _open(self) -> None:
        super()._open()
        if self.metadata.get("format") != ANNOTATIONS_FORMAT:
            raise ValueError(f"{self.path} is not an annotation table ({ANNOTATIONS_FORMAT})")
        self._clip = self.column("clip_id")
        self._texts = self.column("texts")
        self._extra = self.column("extra")
        self._lines = self.column("line_lengths") if "line_lengths" in self.table.column_names else None
        if len(self) == 0:
            raise ValueError(f"{self.path}: no annotations")

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_clip", "_texts", "_extra", "_lines"):
            state.pop(key, None)
        return state

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"annotation {index} out of range for {n}")
        texts = self._texts[index].as_py()
        if self.text_mode == "join":
            lengths = self._lines[index].as_py() if self._lines is not None else None
            if lengths:  # a clip merged from several lines: each line's texts joined, as read_annotations does
                ends = np.cumsum(lengths)
                texts = [" ".join(texts[e - n:e]) for n, e in zip(lengths, ends)]
            else:
                texts = [" ".join(texts)]
        extra = self._extra[index].as_py()
        extra = json.loads(extra) if extra else {}
        return {**extra, "clip_id": self._clip[index].as_py(), "texts": texts}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def clip_ids(self) -> pa.Array:
        return self._clip

    def clip_id(self, index: int) -> str:
        return self._clip[index].as_py()

    @property
    def index_uuid(self) -> str:
        """The ``index_uuid`` of the frame index the ``shard``/``row`` columns were joined with ('' if none)."""
        return self.metadata.get("index_uuid", "") if "shard" in self.table.column_names else ""

    def shards(self) -> np.ndarray:
        """int32 shard of each line (-1: not in the frame store), a zero-copy view; needs a joined table."""
        return self.numpy("shard")


def _annotation_batches(path: Path):
    """Stream (clip_ids, texts, extra) lists of ``BATCH_ROWS`` lines, validated like ``read_annotations``."""
    from clipvip.data.annotations import _clip_id, _iter_json_lines, record_texts

    ids, texts, extra = [], [], []
    for lineno, obj in _iter_json_lines(path):
        where = f"{path}:{lineno}"
        clip_id = _clip_id(obj, where)
        ids.append(clip_id)
        texts.append(record_texts(obj, "sample", where))  # timed subtitles: the transcript as one text
        rest = {k: v for k, v in obj.items() if k not in ("clip_id", "text", "subtitles")}
        extra.append(json.dumps(rest) if rest else None)
        if len(ids) >= BATCH_ROWS:
            yield ids, texts, extra
            ids, texts, extra = [], [], []
    if ids:
        yield ids, texts, extra


_ANN_SCHEMA = pa.schema([("clip_id", pa.large_string()), ("texts", pa.large_list(pa.large_string())),
                         ("extra", pa.large_string())])


def build_annotation_table(jsonl: str | os.PathLike, out: str | os.PathLike,
                           index: str | os.PathLike | None = None) -> dict:
    """JSONL -> annotation table (see the module docstring); ``index``: an ``index.arrow`` to join with."""
    jsonl = Path(jsonl)
    batches = [pa.record_batch([pa.array(i, pa.large_string()), pa.array(t, _ANN_SCHEMA.field("texts").type),
                                pa.array(e, pa.large_string())], schema=_ANN_SCHEMA)
               for i, t, e in _annotation_batches(jsonl)]
    if not batches:
        raise ValueError(f"{jsonl}: no annotations")
    table = pa.Table.from_batches(batches, schema=_ANN_SCHEMA).combine_chunks()
    ids = table.column("clip_id").chunk(0)
    # Repeated ids are rare (one-caption-per-line files): detect them in Arrow, merge only then (in Python).
    if pc.count_distinct(ids).as_py() != len(ids):
        merged: dict[str, list] = {}
        for batch_ids, batch_texts, batch_extra in _annotation_batches(jsonl):
            for clip_id, texts, extra in zip(batch_ids, batch_texts, batch_extra):
                if clip_id in merged:
                    merged[clip_id][0].extend(texts)
                    merged[clip_id][1].append(len(texts))
                else:
                    merged[clip_id] = [list(texts), [len(texts)], extra]
        table = pa.table({
            "clip_id": pa.array(list(merged), pa.large_string()),
            "texts": pa.array([m[0] for m in merged.values()], _ANN_SCHEMA.field("texts").type),
            "extra": pa.array([m[2] for m in merged.values()], pa.large_string()),
            # texts per source line of a merged clip (join mode joins each line's texts separately)
            "line_lengths": pa.array([m[1] if len(m[1]) > 1 else None for m in merged.values()],
                                     pa.list_(pa.int32())),
        })
        ids = table.column("clip_id").chunk(0)
    metadata = {"format": ANNOTATIONS_FORMAT, "source": str(jsonl)}
    missing = 0
    if index is not None:
        id_table = ClipIdTable(index)
        pos = id_table.positions(ids)
        found = pos >= 0
        shard = np.where(found, id_table._shard[np.where(found, pos, 0)], -1).astype(np.int32)
        row = np.where(found, id_table._row[np.where(found, pos, 0)], -1).astype(np.int32)
        table = table.append_column("shard", pa.array(shard)).append_column("row", pa.array(row))
        metadata["index_uuid"] = id_table.uuid
        missing = int((~found).sum())
    write_table(out, table, metadata)
    return {"num_clips": table.num_rows, "not_in_index": missing}


# ------------------------------------------------------------------------------------------------ captions
class CaptionTable(_SortedIds, Mapping):
    """Lazy ``read_captions``: a read-only Mapping clip_id -> caption over a sorted Arrow file."""

    def _open(self) -> None:
        super()._open()
        if self.metadata.get("format") != CAPTIONS_FORMAT:
            raise ValueError(f"{self.path} is not a caption table ({CAPTIONS_FORMAT})")
        self._captions = self.column("caption")

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_captions", None)
        return state

    def __getitem__(self, clip_id: str) -> str:
        i = self.position(clip_id)
        if i < 0:
            raise KeyError(clip_id)
        return self._captions[i].as_py()

    def __iter__(self):
        return iter(self.ids())

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, clip_id) -> bool:
        return self.position(clip_id) >= 0


def build_caption_table(paths: list, out: str | os.PathLike) -> dict:
    """Merge caption JSONL shards into a sorted caption table; same checks as ``read_captions``."""
    from clipvip.data.annotations import _clip_id, _iter_json_lines

    chunks_ids, chunks_caps, origin_file, empty = [], [], [], 0
    for file_no, path in enumerate(map(Path, paths)):
        ids, caps = [], []
        for lineno, obj in _iter_json_lines(path):
            where = f"{path}:{lineno}"
            clip_id = _clip_id(obj, where)
            caption = obj.get("caption")
            if not isinstance(caption, str):
                raise ValueError(f"{where}: 'caption' must be a string, got {caption!r:.80}")
            if caption.strip():
                ids.append(clip_id)
                caps.append(caption.strip())
            else:
                empty += 1
        chunks_ids.append(pa.array(ids, pa.large_string()))
        chunks_caps.append(pa.array(caps, pa.large_string()))
        origin_file.append(np.full(len(ids), file_no, dtype=np.int32))
    ids = pa.chunked_array(chunks_ids or [pa.array([], pa.large_string())], pa.large_string()).combine_chunks()
    caps = pa.chunked_array(chunks_caps or [pa.array([], pa.large_string())], pa.large_string()).combine_chunks()
    files = np.concatenate(origin_file) if origin_file else np.zeros(0, np.int32)
    order = pc.sort_indices(ids)
    ids, caps, files = ids.take(order), caps.take(order), files[order.to_numpy()]
    if len(ids) > 1:
        dup = np.flatnonzero(pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False))
        if len(dup):
            i = int(dup[0])
            raise ValueError(f"clip {ids[i].as_py()!r} is captioned in both {paths[int(files[i])]} and "
                             f"{paths[int(files[i + 1])]}")
    if empty:
        log.warning("captions table: %d empty caption(s) ignored in %d file(s)", empty, len(paths))
    write_table(out, pa.table({"clip_id": ids, "caption": caps}), {"format": CAPTIONS_FORMAT})
    return {"num_captions": len(ids), "empty": empty}


def is_arrow(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).endswith(".arrow")
