"""Readers for the annotation JSONL (official CLIP-ViP format) and the captions stage's JSONL output.

Usage:
    >>> anns = read_annotations("msrvtt_train.jsonl")                  # [{"clip_id": ..., "texts": [...]}, ...]
    >>> paras = read_annotations("didemo_test.jsonl", text_mode="join") # sentences joined into one text
    >>> caps = read_captions(["captions/00000.jsonl", "captions/00001.jsonl"])   # {clip_id: caption}
    >>> big = read_annotations("results/corpus/hdvila/train.arrow")   # lazy AnnotationTable, same items
    >>> caps = read_captions("results/captions/hdvila/captions.arrow")  # lazy CaptionTable (a Mapping)

``.arrow`` paths (written by ``python -m clipvip.data.corpus``, see ``clipvip.data.corpus``) give memory-mapped,
lazily decoded sequences/mappings with the same items, shared by every process through the page cache: the
form for corpora of millions of clips.

Annotation lines are ``{"clip_id": str, "text": str | [str, ...]}``. ``text_mode="sample"`` keeps every
string as a separate text (the trainer samples one per step); ``"join"`` joins a list with single spaces
into one paragraph text. Lines with the same ``clip_id`` are merged (texts appended in file order), so a
one-caption-per-line file reads the same as one list per clip. Other keys of a line are kept on the record
(e.g. a pre-training line's extra fields), ``texts`` and ``clip_id`` always present. Blank lines are
skipped; anything else malformed raises ``ValueError`` naming the file and line number.
"""
from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path

log = logging.getLogger(__name__)
TEXT_MODES = ("sample", "join")


def _iter_json_lines(path: Path):
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _clip_id(obj: dict, where: str) -> str:
    """The line's ``clip_id`` as a string: a non-empty string (or an integer, read as its decimal string)
    without surrounding whitespace, line breaks or control characters -- it names a file, an HDF5 dataset
    and a line of a shard's id list, where such characters would silently lose or split the clip."""
    if "clip_id" not in obj:
        raise ValueError(f"{where}: missing key 'clip_id'")
    value = obj["clip_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: 'clip_id' must be a non-empty string, got {type(value).__name__} {value!r:.80}")
    value = str(value)
    if value == "":
        raise ValueError(f"{where}: 'clip_id' must be a non-empty string, got ''")
    if value != value.strip():
        raise ValueError(f"{where}: 'clip_id' {value!r:.80} has leading or trailing whitespace")
    if any(ch in value for ch in "\n\r\t\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029") or not value.isprintable():
        raise ValueError(f"{where}: 'clip_id' {value!r:.80} contains a line break or control character")
    return value


def record_texts(obj: dict, text_mode: str, where: str) -> list[str]:
    """A record's texts: its ``text`` (a string or list), or for a timed-subtitle line (``{"subtitles": [{"start",
    "end", "text"}, ...]}``, VideoCLIP / HD-VILA transcripts) the whole transcript as one text. The lines' times
    are checked where they are used (``clipvip.data.subtitles.read_subtitles``)."""
    if "text" in obj:
        return _texts(obj["text"], text_mode, where)
    lines = obj.get("subtitles")
    if lines is None:
        raise ValueError(f"{where}: missing key 'text' (or 'subtitles', timed lines)")
    if not isinstance(lines, list) or not lines or not all(isinstance(x, dict) for x in lines):
        raise ValueError(f"{where}: 'subtitles' must be a non-empty list of {{start, end, text}} objects")
    return _texts([x.get("text") for x in lines], "join", where)


def _texts(value, text_mode: str, where: str) -> list[str]:
    if isinstance(value, str):
        parts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        parts = list(value)
    elif isinstance(value, list) and not value:
        raise ValueError(f"{where}: empty text: 'text' is an empty list")
    else:
        bad = next((v for v in value if not isinstance(v, str)), value) if isinstance(value, list) else value
        raise ValueError(f"{where}: 'text' must be a string or a list of strings, got {type(bad).__name__} "
                         f"{bad!r:.80}")
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise ValueError(f"{where}: empty text (a caption that is empty or only whitespace)")
    return [" ".join(parts)] if text_mode == "join" else parts


def read_annotations(path: str | PathLike, text_mode: str = "sample") -> list[dict]:
    """Parse an annotation JSONL into ``[{"clip_id": str, "texts": list[str], ...}]`` in file order
    (an ``.arrow`` annotation table: a lazy ``AnnotationTable`` sequence of the same dicts)."""
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    if str(path).endswith(".arrow"):
        from clipvip.data.corpus import AnnotationTable

        return AnnotationTable(path, text_mode=text_mode)
    path = Path(path)
    records: dict[str, dict] = {}
    for lineno, obj in _iter_json_lines(path):
        where = f"{path}:{lineno}"
        clip_id = _clip_id(obj, where)
        texts = record_texts(obj, text_mode, where)
        if clip_id in records:
            records[clip_id]["texts"].extend(texts)
            continue
        extra = {k: v for k, v in obj.items() if k not in ("clip_id", "text", "subtitles")}
        records[clip_id] = {**extra, "clip_id": clip_id, "texts": texts}
    if not records:
        raise ValueError(f"{path}: no annotations")
    return list(records.values())


def read_captions(paths: str | PathLike | list) -> dict[str, str]:
    """Merge caption shards (``{"clip_id", "caption", "model"}`` per line) into ``{clip_id: caption}``
    (one ``.arrow`` caption table: a lazy ``CaptionTable`` mapping).

    A clip captioned in two shards is a pipeline error (raises); empty captions are dropped with a warning
    so the dataset treats those clips as uncaptioned.
    """
    paths = [paths] if isinstance(paths, (str, PathLike)) else list(paths)
    if any(str(p).endswith(".arrow") for p in paths):
        if len(paths) != 1:
            raise ValueError(f"read_captions: one caption table (.arrow) at a time, got {len(paths)} paths")
        from clipvip.data.corpus import CaptionTable

        return CaptionTable(paths[0])
    captions: dict[str, str] = {}
    origin: dict[str, str] = {}
    empty = 0
    for path in map(Path, paths):
        for lineno, obj in _iter_json_lines(path):
            where = f"{path}:{lineno}"
            clip_id = _clip_id(obj, where)
            caption = obj.get("caption")
            if not isinstance(caption, str):
                raise ValueError(f"{where}: 'caption' must be a string, got {caption!r:.80}")
            if clip_id in origin:
                raise ValueError(f"{where}: clip {clip_id!r} already captioned in {origin[clip_id]}")
            origin[clip_id] = where
            if caption.strip():
                captions[clip_id] = caption.strip()
            else:
                empty += 1
    if empty:
        log.warning("read_captions: %d empty caption(s) ignored in %d file(s)", empty, len(paths))
    return captions
