"""Video decoding and writing helpers shared by the frame stores, the demo corpus and the tests.

Usage:
    from clipvip.video_io import write_video, probe_video, decode_frames, VideoError

    write_video("clip.mp4", frames_uint8_NHWC, fps=8)          # H.264, yuv420p, via PyAV
    probe = probe_video("clip.mp4")                            # container facts (PyAV demux, no decoding)
    decoded = decode_frames("clip.mp4", pick=lambda n: [0, n // 2, n - 1])

``decode_frames`` decodes with **decord** (fast, seeks) and falls back to an exact PyAV decode-all-and-pick
path whenever decord's frame count cannot be trusted: decord takes the count from the container, so on MP4
edit-list cuts (``ffmpeg -ss X -i in.mp4 -t Y -c copy out.mp4`` at a non-keyframe) it reports e.g. 205
frames for 122 real ones and returns repeated frames. The fast path is used only when decord's count equals
the demuxer's count of presented packets (packets minus those an edit list discards) and no two distinct
picked indices decode to byte-identical frames. Which path ran is recorded in ``DecodedVideo.decoder``.

Bad input raises ``VideoError(reason, detail)`` with a reason class from ``FAILURE_REASONS``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

# Reason classes written to failure manifests.
FAILURE_REASONS = ("missing", "empty", "corrupt", "truncated", "no_video_stream", "invalid_id")

DECORD = "decord"
PYAV_EXACT = "pyav-exact"

# Top-level ISO-BMFF (MP4/MOV) box types; a file starting with one of these is walked box by box.
_MP4_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"meta", b"moof",
                  b"mfra", b"styp", b"sidx", b"pdin", b"prft"}


class VideoError(Exception):
    """A video that cannot be used; ``reason`` is one of ``FAILURE_REASONS``, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------- writing
def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int, *, crf: int = 12,
                preset: str = "veryfast", gop: int | None = None, codec: str = "libx264") -> None:
    """Encode ``frames`` (uint8 [N,H,W,3] RGB, even H and W) as an H.264/yuv420p video with PyAV.

    Single-threaded x264 so the bytes are deterministic for the same frames and settings.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video({path}): expected uint8 [N,H,W,3] frames, got {frames.dtype} {frames.shape}")
    n, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"write_video({path}): yuv420p needs even width and height, got {width}x{height}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if gop is not None:
            stream.codec_context.gop_size = gop
        for number, frame in enumerate(frames):
            # Convert to yuv420p ourselves and set pts: frames that PyAV converts inside encode() made x264
            # output vary between runs in one process (same pixels, different bytes).
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            video_frame.pts = number
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----------------------------------------------------------------------------------------------- probing
@dataclass
class VideoProbe:
    """What the container says, read by demuxing (no decoding)."""

    presented_packets: int   # video packets the demuxer will present (edit-list discards removed)
    discarded_packets: int   # packets an edit list marks as discarded
    declared_frames: int     # the container's frame count (0 if the container does not store one)
    fps: float
    width: int
    height: int


def check_container_structure(path: str | os.PathLike) -> None:
    """Raise ``VideoError('truncated')`` when an MP4/MOV file's top-level boxes run past the end of the file.

    A copy or download cut short leaves the last box (usually ``mdat``) declaring more bytes than exist, or
    drops the ``moov`` index the muxer writes last. Non-MP4 files pass through unchecked.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[4:8] not in _MP4_TOP_LEVEL:
            return
        offset, seen_moov = 0, False
        while offset + 8 <= size:
            fh.seek(offset)
            box_size, box_type = struct.unpack(">I4s", fh.read(8))
            if box_size == 1:  # 64-bit size follows the type
                box_size = struct.unpack(">Q", fh.read(8))[0]
            elif box_size == 0:  # box extends to the end of the file
                box_size = size - offset
            if box_size < 8:
                raise VideoError("corrupt", f"MP4 box {box_type!r} at byte {offset} has invalid size {box_size}")
            if offset + box_size > size:
                raise VideoError("truncated", f"MP4 box {box_type.decode('latin-1')!r} at byte {offset} declares "
                                              f"{box_size} bytes but the file ends at byte {size}")
            seen_moov |= box_type == b"moov"
            offset += box_size
        if not seen_moov:
            raise VideoError("truncated", f"MP4 file of {size} bytes has no 'moov' index box "
                                          "(typically a file cut before the muxer finished)")


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """Open ``path`` with PyAV and count the video packets it presents; raise ``VideoError`` on bad input."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError("corrupt", f"cannot open container: {exc}") from exc
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoError("no_video_stream", f"container has no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        presented = discarded = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                if packet.is_discard:
                    discarded += 1
                else:
                    presented += 1
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt", f"demuxing failed after {presented} packets: {exc}") from exc
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        declared = int(stream.frames or 0)
        if declared and presented + discarded < declared:
            raise VideoError("truncated", f"container declares {declared} video packets, only "
                                          f"{presented + discarded} are present")
        return VideoProbe(presented, discarded, declared, float(rate) if rate else 0.0,
                          stream.codec_context.width, stream.codec_context.height)


# ----------------------------------------------------------------------------------------------- decoding
@dataclass
class DecodedVideo:
    num_frames: int            # N: frames the video really has
    fps: float
    indices: list[int]         # the distinct decoded-frame indices that were picked, sorted
    frames: np.ndarray         # uint8 [len(indices), H, W, 3] RGB, original size
    decoder: str               # DECORD or PYAV_EXACT
    note: str                  # why the exact path ran ("" on the fast path)


Picker = Callable[[int], Sequence[int]]  # or Callable[[int, float], ...]: pick(N, fps) (fixed-rate pools)


def _pick(pick: Picker, count: int, fps: float) -> Sequence[int]:
    """``pick(N)``, or ``pick(N, fps)`` when the picker takes two positional arguments."""
    import inspect

    try:
        params = [p for p in inspect.signature(pick).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return pick(count, fps) if len(params) >= 2 else pick(count)


def decode_frames(path: str | os.PathLike, pick: Picker, *, threads: int = 1) -> DecodedVideo:
    """Decode the frames ``pick(N)`` selects from ``path`` (decord fast path, exact PyAV fallback)."""
    check_container_structure(path)
    probe = probe_video(path)
    if probe.presented_packets == 0:
        raise VideoError("corrupt", "video stream has no packets")
    try:
        import decord

        reader = decord.VideoReader(str(path), num_threads=threads)
    except Exception as exc:  # decord raises RuntimeError/DECORDError; PyAV opened it, so try the exact path
        return decode_exact(path, pick, expected_count=probe.presented_packets,
                            note=f"decord could not open the file: {exc}"[:300])
    count = len(reader)
    if count != probe.presented_packets:
        del reader
        return decode_exact(path, pick, expected_count=probe.presented_packets,
                            note=f"decord reports {count} frames, the demuxer presents "
                                              f"{probe.presented_packets} ({probe.discarded_packets} discarded "
                                              "by an edit list)")
    indices = _checked_indices(_pick(pick, count, float(reader.get_avg_fps()) or probe.fps), count)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as exc:
        return decode_exact(path, pick, expected_count=probe.presented_packets,
                            note=f"decord failed to decode: {exc}"[:300])
    fps = float(reader.get_avg_fps()) or probe.fps
    del reader
    if _has_duplicate_frames(frames):
        return decode_exact(path, pick, expected_count=count,
                            note="decord returned byte-identical frames for distinct indices")
    return DecodedVideo(count, fps, indices, frames, DECORD, "")


def decode_exact(path: str | os.PathLike, pick: Picker, *, expected_count: int | None = None,
                 note: str = "") -> DecodedVideo:
    """Decode every frame with PyAV (honours edit lists), count them, keep the ones ``pick(N)`` selects.

    N is known only after the last frame, so frames are picked with ``pick(expected_count)`` (the demuxer's
    presented-packet count) while decoding; if the real count differs, a second pass picks with the real N.
    Only picked frames are kept in memory.
    """
    guess = expected_count
    if guess is None:
        guess = _count_decoded_frames(path)
    count, fps, indices, frames = _decode_pass(path, pick, guess)
    if count != guess:
        count, fps, indices, frames = _decode_pass(path, pick, count)
    return DecodedVideo(count, fps, indices, frames, PYAV_EXACT, note)


def _open_video_stream(path):
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError("corrupt", f"cannot open container: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoError("no_video_stream", "container has no video stream")
    return container, container.streams.video[0]


def _count_decoded_frames(path) -> int:
    container, stream = _open_video_stream(path)
    count = 0
    with container:
        try:
            for _ in container.decode(stream):
                count += 1
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt", f"decoding failed after {count} frames: {exc}") from exc
    return count


def _decode_pass(path, pick: Picker, assumed_count: int, fps: float | None = None):
    """One decode pass keeping the frames ``pick(assumed_count)`` selects; returns the real frame count too."""
    container, stream = _open_video_stream(path)
    if fps is None:
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
    wanted = _checked_indices(_pick(pick, assumed_count, fps), assumed_count) if assumed_count > 0 else []
    wanted_set = set(wanted)
    kept: dict[int, np.ndarray] = {}
    count = 0
    with container:
        try:
            for frame in container.decode(stream):
                if count in wanted_set:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt", f"decoding failed after {count} frames: {exc}") from exc
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
    if count == 0:
        raise VideoError("corrupt", "no decodable video frames")
    if count != assumed_count:
        return count, fps, [], None
    return count, fps, wanted, np.stack([kept[i] for i in wanted])


def _checked_indices(indices: Sequence[int], count: int) -> list[int]:
    unique = sorted({int(i) for i in indices})
    if unique and (unique[0] < 0 or unique[-1] >= count):
        raise ValueError(f"picked frame indices {unique[0]}..{unique[-1]} outside 0..{count - 1}")
    return unique


def _has_duplicate_frames(frames: np.ndarray) -> bool:
    digests = {hash(frame.tobytes()) for frame in frames}
    return len(digests) < len(frames)


# ----------------------------------------------------------------------------------------------- resizing
def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Bicubic (antialiased when shrinking) resize so the short side is ``short_side``; no crop.

    Frames whose short side is already ``<= short_side`` are returned unchanged (upscaling at store time
    only costs space; the load-time transform resizes anyway). ``short_side <= 0`` disables resizing.
    """
    height, width = frame.shape[:2]
    short = min(height, width)
    if short_side <= 0 or short <= short_side:
        return frame
    from PIL import Image

    scale = short_side / short
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if height <= width:
        new_size = (new_size[0], short_side)
    else:
        new_size = (short_side, new_size[1])
    return np.asarray(Image.fromarray(frame).resize(new_size, Image.BICUBIC))


def resolve_video_path(video_dir: str | os.PathLike, clip_id: str, extensions: Sequence[str]) -> Path | None:
    """``video_dir/clip_id`` if that file exists, else the first ``video_dir/clip_id.<ext>`` that does."""
    base = Path(video_dir)
    exact = base / clip_id
    if exact.is_file():
        return exact
    for ext in extensions:
        candidate = base / f"{clip_id}.{ext.lstrip('.')}"
        if candidate.is_file():
            return candidate
    return None
