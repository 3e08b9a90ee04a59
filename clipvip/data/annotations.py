"""Readers for the annotation JSONL (official CLIP-ViP format) and the captions stage's JSONL output.

Usage:
    >>> anns = read_annotations("msrvtt_train.jsonl")                  # [{"clip_id": ..., "texts": [...]}, ...]
    >>> paras = read_annotations("didemo_test.jsonl", text_mode="join") # sentences joined into one text
    >>> caps = read_captions(["captions/00000.jsonl", "captions/00001.jsonl"])   # {clip_id: caption}

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
    if "clip_id" not in obj:
        raise ValueError(f"{where}: missing key 'clip_id'")
    value = obj["clip_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise ValueError(f"{where}: 'clip_id' must be a non-empty string, got {value!r}")
    return str(value)


def _texts(value, text_mode: str, where: str) -> list[str]:
    if isinstance(value, str):
        parts = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise ValueError(f"{where}: 'text' must be a string or a list of strings, got {value!r:.80}")
    parts = [p.strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise ValueError(f"{where}: empty text")
    return [" ".join(parts)] if text_mode == "join" else parts


def read_annotations(path: str | PathLike, text_mode: str = "sample") -> list[dict]:
    """Parse an annotation JSONL into ``[{"clip_id": str, "texts": list[str], ...}]`` in file order."""
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    path = Path(path)
    records: dict[str, dict] = {}
    for lineno, obj in _iter_json_lines(path):
        where = f"{path}:{lineno}"
        clip_id = _clip_id(obj, where)
        if "text" not in obj:
            raise ValueError(f"{where}: missing key 'text'")
        texts = _texts(obj["text"], text_mode, where)
        if clip_id in records:
            records[clip_id]["texts"].extend(texts)
            continue
        extra = {k: v for k, v in obj.items() if k not in ("clip_id", "text")}
        records[clip_id] = {**extra, "clip_id": clip_id, "texts": texts}
    if not records:
        raise ValueError(f"{path}: no annotations")
    return list(records.values())


def read_captions(paths: str | PathLike | list) -> dict[str, str]:
    """Merge caption shards (``{"clip_id", "caption", "model"}`` per line) into ``{clip_id: caption}``.

    A clip captioned in two shards is a pipeline error (raises); empty captions are dropped with a warning
    so the dataset treats those clips as uncaptioned.
    """
    paths = [paths] if isinstance(paths, (str, PathLike)) else list(paths)
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
