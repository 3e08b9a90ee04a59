"""Timed subtitles (ASR lines) for VideoCLIP-style overlapped sampling: parsing and strict validation.

Usage:
    from clipvip.data.subtitles import read_subtitles
    subs = read_subtitles("how2_train.jsonl", durations={"vid1": 391.5})   # list[Subtitles], file order
    subs[0].clip_id, subs[0].lines[0].start, subs[0].lines[0].text, subs[0].timed

One JSON object per line, either timed

    {"clip_id": "vid1", "subtitles": [{"start": 12.3, "end": 15.1, "text": "cut the onion"}, ...]}

or plain (the official CLIP-ViP annotation format)

    {"clip_id": "vid1", "text": "a caption"}      (or a list of captions: ["a caption", "another one"])

which gives one *untimed* line covering the whole clip (``start = 0``, ``end = duration`` when known, else
``None``; the sampler then uses the video's length). A list's captions are joined with spaces into that line
(``text_mode: join``, the paragraph of DiDeMo-style sets) and kept one by one in ``Subtitles.captions``, so a
consumer can use one caption instead (``text_mode: sample``: VideoCLIP fine-tuning draws one per step,
``clipvip.trainer.videoclip_task``; ``subs.caption(k)`` is the record with caption k as its line). Timed
records have no ``captions`` (``()``); a plain string gives one.

Every bad line is reported, none is dropped: a ``UserError`` lists (up to 20 of) them as
``<file>:<line>: <field>: <problem>``, e.g. ``subs.jsonl:7: subtitles[3].end: 11.0 is before start 12.3``.
Checked: valid JSON object; ``clip_id`` a non-empty string, unique in the file; exactly one of ``subtitles``
(a non-empty list) or ``text`` (a non-empty string, or a non-empty list of them, none empty after
stripping: ``text[2]: empty``); every entry an object with numeric (not bool), finite ``start``/``end``,
``start >= 0``, ``end >= start``, ``end <= duration + tolerance`` when ``durations`` gives the clip's length
(``start`` likewise), and a non-empty (after stripping) string ``text``. Blank lines are skipped (they are
not records). Lines are kept in file order when sorted; otherwise they are sorted by (start, end) -- a
stable reorder, nothing removed -- since the sampler grows spans over neighbouring lines in time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from clipvip.stage import UserError

MAX_REPORTED = 20


@dataclass(frozen=True)
class SubtitleLine:
    start: float | None
    end: float | None
    text: str


@dataclass
class Subtitles:
    clip_id: str
    lines: list[SubtitleLine] = field(default_factory=list)
    timed: bool = True
    captions: tuple[str, ...] = ()  # an untimed record's captions, one by one (``lines`` holds them joined)

    def caption(self, k: int) -> "Subtitles":
        """An untimed record with caption ``k`` alone as its line (same times); ``IndexError`` if there is none."""
        if self.timed or not 0 <= k < len(self.captions):
            raise IndexError(f"{self.clip_id}: no caption {k} (timed={self.timed}, {len(self.captions)} "
                             f"caption(s))")
        line = self.lines[0]
        return Subtitles(self.clip_id, [SubtitleLine(line.start, line.end, self.captions[k])], timed=False,
                         captions=(self.captions[k],))

    def resolved(self, duration: float) -> list[SubtitleLine]:
        """Lines with an untimed line's missing times filled in as ``[0, duration]``."""
        if self.timed:
            return self.lines
        return [SubtitleLine(0.0, float(duration), ln.text) for ln in self.lines]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_subtitle_record(obj, where: str, duration: float | None = None, tolerance: float = 0.0
                          ) -> tuple[Subtitles | None, list[str]]:
    """One decoded JSON value -> (Subtitles or None, problems); ``where`` = ``"<file>:<line>"``."""
    problems: list[str] = []

    def bad(fieldname: str, problem: str) -> None:
        problems.append(f"{where}: {fieldname}: {problem}")

    if not isinstance(obj, dict):
        bad("(line)", f"expected a JSON object, got {type(obj).__name__}")
        return None, problems
    clip_id = obj.get("clip_id")
    if not isinstance(clip_id, str) or not clip_id.strip():
        bad("clip_id", "missing" if "clip_id" not in obj else f"expected a non-empty string, got {clip_id!r}")
    has_subs, has_text = "subtitles" in obj, "text" in obj
    if has_subs and has_text:
        bad("(line)", "has both 'subtitles' and 'text'; give one")
        return None, problems
    if not has_subs and not has_text:
        bad("subtitles", "missing (and no plain 'text' either)")
        return None, problems
    if has_text:
        text, captions = obj["text"], None
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            captions = tuple(t.strip() for t in text)
            for i, caption in enumerate(captions):
                if not caption:
                    bad(f"text[{i}]", "empty")
            text = " ".join(captions)
        if not isinstance(text, str):
            bad("text", f"expected a string or a list of strings, got {type(text).__name__}")
        elif not text.strip() and not problems:
            bad("text", "empty")
        if problems:
            return None, problems
        end = float(duration) if duration is not None else None
        return Subtitles(clip_id, [SubtitleLine(0.0 if end is not None else None, end, text.strip())],
                         timed=False, captions=captions or (text.strip(),)), problems
    entries = obj["subtitles"]
    if not isinstance(entries, list):
        bad("subtitles", f"expected a list, got {type(entries).__name__}")
        return None, problems
    if not entries:
        bad("subtitles", "empty list")
        return None, problems
    lines = []
    for i, entry in enumerate(entries):
        name = f"subtitles[{i}]"
        if not isinstance(entry, dict):
            bad(name, f"expected an object, got {type(entry).__name__}")
            continue
        ok = True
        for key in ("start", "end"):
            value = entry.get(key)
            if key not in entry:
                bad(f"{name}.{key}", "missing")
                ok = False
            elif not _is_number(value):
                bad(f"{name}.{key}", f"expected a number, got {type(value).__name__} {value!r}")
                ok = False
            elif not math.isfinite(value):
                bad(f"{name}.{key}", f"not finite: {value!r}")
                ok = False
            elif value < 0:
                bad(f"{name}.{key}", f"negative time {value}")
                ok = False
            elif duration is not None and value > duration + tolerance:
                bad(f"{name}.{key}", f"{value} is past the video's duration {duration}")
                ok = False
        if ok and entry["end"] < entry["start"]:
            bad(f"{name}.end", f"{entry['end']} is before start {entry['start']}")
            ok = False
        text = entry.get("text")
        if "text" not in entry:
            bad(f"{name}.text", "missing")
            ok = False
        elif not isinstance(text, str):
            bad(f"{name}.text", f"expected a string, got {type(text).__name__}")
            ok = False
        elif not text.strip():
            bad(f"{name}.text", "empty")
            ok = False
        if ok:
            lines.append(SubtitleLine(float(entry["start"]), float(entry["end"]), text.strip()))
    if problems:
        return None, problems
    order = sorted(range(len(lines)), key=lambda k: (lines[k].start, lines[k].end))
    if order != list(range(len(lines))):
        lines = [lines[k] for k in order]
    return Subtitles(clip_id, lines, timed=True), problems


def read_subtitles(path, durations: Mapping[str, float] | None = None, tolerance: float = 0.0
                   ) -> list[Subtitles]:
    """Parse a subtitles JSONL file; any bad line raises one ``UserError`` naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read subtitles {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from None
    out: list[Subtitles] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: (line): not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        clip_id = obj.get("clip_id") if isinstance(obj, dict) else None
        duration = durations.get(clip_id) if durations is not None and isinstance(clip_id, str) else None
        subs, bad = parse_subtitle_record(obj, where, duration, tolerance)
        problems.extend(bad)
        if subs is None:
            continue
        if subs.clip_id in seen:
            problems.append(f"{where}: clip_id: {subs.clip_id!r} already given on line {seen[subs.clip_id]}")
            continue
        seen[subs.clip_id] = line_no
        out.append(subs)
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise UserError(f"{len(problems)} bad subtitle line(s) in {path}:\n" + "\n".join(problems[:MAX_REPORTED])
                        + more)
    if not out:
        raise UserError(f"{path}: no subtitle records")
    return out
