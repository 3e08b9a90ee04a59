"""Frame stores on real videos: decord vs a PyAV oracle, edit-list cuts, bad inputs, atomicity, shards, index."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import decord
import h5py
import numpy as np
import pytest
from PIL import Image

from clipvip.frames import (FrameIndex, FrameStore, IncompleteStoreError, extract_shard, index_main, main,
                            read_clip_ids, read_failures, shard_count, split_ids_main)
from clipvip.video_io import VideoError, check_container_structure, decode_frames

REPO = Path(__file__).resolve().parents[1]


def pyav_frames(path) -> np.ndarray:
    """The oracle: every frame PyAV decodes, in order, RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def reference_resize(frame: np.ndarray, short_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if min(h, w) <= short_side:
        return frame
    size = (round(w * short_side / h), short_side) if h <= w else (short_side, round(h * short_side / w))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


def assert_close_to(stored: np.ndarray, expected: np.ndarray) -> None:
    assert stored.shape == expected.shape
    diff = stored.astype(np.float64) - expected.astype(np.float64)
    psnr = 10 * np.log10(255 ** 2 / max(np.mean(diff ** 2), 1e-12))
    assert np.abs(diff).mean() < 3, f"mean abs diff {np.abs(diff).mean():.2f}"
    assert psnr > 35, f"PSNR {psnr:.1f} dB"


def write_ids(path: Path, ids) -> Path:
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def link_videos(folder: Path, videos: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, source in videos.items():
        shutil.copy(source, folder / f"{clip_id}{source.suffix}")
    return folder


# ---------------------------------------------------------------------------------------- correct frames
@pytest.mark.parametrize("num_frames,width,height,fps,short_side", [
    (40, 96, 64, 8, 48),     # resized, N > pool_size: the pool is subsampled
    (30, 64, 128, 25, 32),   # resized portrait, N <= pool_size: the pool is every frame
    (40, 96, 64, 25, 224),   # short side already below 224: stored unresized
])
def test_stored_frames_equal_pyav_decode(tmp_path, make_video, num_frames, width, height, fps, short_side):
    video = make_video(num_frames=num_frames, width=width, height=height, fps=fps)
    videos = link_videos(tmp_path / "videos", {"clip_a": video})
    result = extract_shard(videos, ["clip_a"], tmp_path / "s.h5",
                           {"num_frames": 12, "pool_size": 32, "short_side": short_side}, progress=False)
    assert result.failures == [] and result.store_path == tmp_path / "s.h5"
    oracle = pyav_frames(video)
    assert len(oracle) == num_frames
    with FrameStore(tmp_path / "s.h5") as store:
        meta = store.meta("clip_a")
        assert meta["num_frames"] == num_frames and meta["fps"] == pytest.approx(fps)
        assert meta["duration"] == pytest.approx(num_frames / fps)
        assert meta["decoder"] == "decord"
        assert (meta["orig_height"], meta["orig_width"]) == (height, width)
        expected_uniform = np.linspace(0, num_frames - 1, 12).astype(int)
        assert meta["uniform_indices"] == expected_uniform.tolist()
        expected_pool = (np.arange(num_frames) if num_frames <= 32
                         else np.linspace(0, num_frames - 1, 32).astype(int))
        assert meta["pool_indices"] == expected_pool.tolist()
        assert meta["middle_index"] == (num_frames - 1) // 2
        # Stored frames are deduplicated: each decoded index once.
        assert meta["frame_indices"] == sorted(set(expected_uniform) | set(expected_pool) | {(num_frames - 1) // 2})

        uniform = store.uniform("clip_a")
        assert uniform.dtype == np.uint8 and uniform.shape[0] == 12
        assert min(uniform.shape[1:3]) == min(short_side, height, width)
        assert (meta["height"], meta["width"]) == uniform.shape[1:3]
        for frame, index in zip(uniform, expected_uniform):
            assert_close_to(frame, reference_resize(oracle[index], short_side))
        pool, pool_idx = store.pool("clip_a")
        assert pool_idx.tolist() == expected_pool.tolist()
        for frame, index in zip(pool, pool_idx):
            assert_close_to(frame, reference_resize(oracle[index], short_side))
        assert_close_to(store.middle("clip_a"), reference_resize(oracle[(num_frames - 1) // 2], short_side))


def test_uniform_with_other_t_uses_stored_frames_or_refuses(tmp_path, make_video):
    videos = link_videos(tmp_path / "v", {"short": make_video(num_frames=20), "long": make_video(num_frames=90)})
    extract_shard(videos, ["short", "long"], tmp_path / "s.h5", {"pool_size": 16, "short_side": 64},
                  progress=False)
    with FrameStore(tmp_path / "s.h5") as store:
        # The pool linspace(0, 19, 16) holds 0, 6, 12 and 19, exactly what T=4 needs.
        four = store.uniform("short", 4)
        assert four.shape[0] == 4
        np.testing.assert_array_equal(four, store.frames("short", [0, 6, 12, 19]))
        with pytest.raises(ValueError, match=r"clip 'long'.*not stored"):
            store.uniform("long", 7)  # linspace(0, 89, 7) needs frame 14: neither uniform, pool nor middle
        with pytest.raises(KeyError, match="not in frame store"):
            store.uniform("nope")


# ---------------------------------------------------------------------------------------- edit lists
def test_edit_list_cut_is_detected_and_decoded_exactly(tmp_path, make_video):
    source = make_video(num_frames=100, width=96, height=64, fps=25, gop=25, name="for_cut")
    cut = tmp_path / "videos" / "cut.mp4"
    cut.parent.mkdir()
    # Stream copy from a non-keyframe start: the MP4 keeps the GOP's head and an edit list hiding it.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1.3", "-i", str(source), "-t", "2.0", "-c", "copy",
                    str(cut)], check=True)
    oracle = pyav_frames(cut)
    reported = len(decord.VideoReader(str(cut)))
    assert reported > len(oracle), "precondition: decord must over-count this cut"

    result = extract_shard(cut.parent, ["cut"], tmp_path / "s.h5", {"short_side": 64}, progress=False)
    assert result.failures == [] and result.decoders == {"pyav-exact": 1}
    with FrameStore(tmp_path / "s.h5") as store:
        meta = store.meta("cut")
        assert meta["num_frames"] == len(oracle)
        assert meta["decoder"] == "pyav-exact" and str(reported) in meta["decoder_note"]
        indices = np.linspace(0, len(oracle) - 1, 12).astype(int)
        for frame, index in zip(store.uniform("cut"), indices):
            assert_close_to(frame, oracle[index])
        pool, pool_idx = store.pool("cut")
        assert pool_idx.tolist() == np.linspace(0, len(oracle) - 1, 32).astype(int).tolist()
        # No repeated frames sneak in: consecutive pool frames all differ.
        assert all(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(pool[:-1], pool[1:]))


def test_other_containers_decode_on_the_fast_path(tmp_path, make_video):
    mp4 = make_video(num_frames=30, width=64, height=64, fps=25)
    mkv = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-c", "copy", str(mkv)], check=True)
    decoded = decode_frames(mkv, lambda n: [0, n - 1])
    assert decoded.num_frames == 30 and decoded.decoder == "decord" and decoded.indices == [0, 29]
    np.testing.assert_array_equal(decoded.frames, pyav_frames(mp4)[[0, 29]])


# ---------------------------------------------------------------------------------------- bad inputs
@pytest.fixture()
def mixed_inputs(tmp_path, make_video):
    """Five good videos plus one of each bad-input class, in one folder."""
    folder = tmp_path / "videos"
    good = {f"good{i}": make_video(num_frames=16 + i, width=64, height=64, seed=i) for i in range(5)}
    link_videos(folder, good)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    real = make_video(num_frames=60, width=96, height=64, seed=9).read_bytes()
    (folder / "truncated.mp4").write_bytes(real[: len(real) // 2])
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(folder / "audio.mp4")],
                   check=True)
    expected = {"missing": "missing", "empty": "empty", "corrupt": "corrupt", "truncated": "truncated",
                "audio": "no_video_stream"}
    ids = list(good) + list(expected)
    return folder, ids, expected


def test_bad_inputs_are_listed_with_reasons_and_good_ones_stored(tmp_path, mixed_inputs):
    folder, ids, expected = mixed_inputs
    out = tmp_path / "shard" / "00000.h5"
    code = main(["--video-dir", str(folder), "--ids", str(write_ids(tmp_path / "ids.txt", ids)),
                 "--out", str(out), "--options", json.dumps({"max_failure_fraction": 0.5, "short_side": 64})])
    assert code == 0
    manifest = read_failures(out.with_name("00000.failures.tsv"))
    assert list(manifest.columns) == ["clip_id", "reason", "detail"]
    assert dict(zip(manifest.clip_id, manifest.reason)) == expected
    assert all(manifest.detail.str.len() > 0)
    with FrameStore(out) as store:
        assert store.ids() == [f"good{i}" for i in range(5)]
        assert set(store.ids()) | set(manifest.clip_id) == set(ids)  # every id accounted for


def test_too_many_failures_exit_nonzero_with_manifest_and_no_store(tmp_path, mixed_inputs, capsys):
    folder, ids, expected = mixed_inputs
    out = tmp_path / "00000.h5"
    failures = tmp_path / "elsewhere" / "f.tsv"
    code = main(["--video-dir", str(folder), "--ids", str(write_ids(tmp_path / "ids.txt", ids)), "--out", str(out),
                 "--failures", str(failures), "--options", '{"max_failure_fraction": 0.1}'])
    assert code == 1
    message = capsys.readouterr().err
    assert "5 of 10 videos failed" in message and str(failures) in message
    assert not out.exists() and not list(tmp_path.glob("00000.h5.tmp-*"))
    assert set(read_failures(failures).clip_id) == set(expected)


def test_container_checks_name_the_problem(tmp_path, make_video):
    real = make_video(num_frames=60, width=96, height=64, seed=9).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(real[:-200])  # the moov index (written last) loses its tail
    with pytest.raises(VideoError, match="truncated: MP4 box 'moov'.*declares"):
        check_container_structure(cut)


def test_invalid_clip_id_is_a_failure_not_a_crash(tmp_path, make_video):
    folder = link_videos(tmp_path / "v", {"ok": make_video()})
    result = extract_shard(folder, ["ok", "../v/ok"], tmp_path / "s.h5", {"max_failure_fraction": 0.5},
                           progress=False)
    assert [(c, r) for c, r, _ in result.failures] == [("../v/ok", "invalid_id")]


# ---------------------------------------------------------------------------------------- atomicity
def test_store_without_complete_attribute_is_refused(tmp_path):
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("clips")
        handle.attrs["complete"] = False
    with pytest.raises(IncompleteStoreError, match="complete=True"):
        FrameStore(path).ids()
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)  # a truncated superblock
    with pytest.raises(IncompleteStoreError, match="cannot be opened as HDF5"):
        FrameStore(path).ids()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_extraction_leaves_no_complete_looking_store(tmp_path, make_video, sig):
    source = make_video(num_frames=24, width=64, height=64)
    folder = tmp_path / "videos"
    folder.mkdir()
    ids = [f"c{i:04d}" for i in range(400)]
    for clip_id in ids:
        os.symlink(source, folder / f"{clip_id}.mp4")
    out = tmp_path / "00000.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipvip", "frames", "--video-dir", str(folder), "--ids",
                             str(write_ids(tmp_path / "ids.txt", ids)), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp_store = out.with_name(f"00000.h5.tmp-{proc.pid}")
    deadline = time.time() + 30
    while not tmp_store.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # let it write some clips
    assert proc.poll() is None, "extraction finished before it could be killed; use more ids"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert not out.exists()
    assert not out.with_name("00000.failures.tsv").exists()
    if sig == signal.SIGTERM:
        assert not tmp_store.exists(), "SIGTERM should clean up the temp store"
    else:
        assert tmp_store.exists()
        with pytest.raises(IncompleteStoreError):
            FrameStore(tmp_store).ids()
        # A rerun cleans the leftover and publishes a complete store.
        result = extract_shard(folder, ids[:3], out, progress=False)
        assert result.store_path == out and not tmp_store.exists()
        assert FrameStore(out).ids() == ids[:3]


def test_sigterm_swallowed_inside_a_c_callback_still_never_publishes(tmp_path, make_video, monkeypatch):
    # A Python exception raised by the signal handler while h5py/decord is inside a C callback can be
    # printed as "Exception ignored" and lost; the recorded signal must still stop the shard unpublished.
    import clipvip.frames.extract as extract

    folder = link_videos(tmp_path / "v", {f"c{i}": make_video(seed=1) for i in range(4)})
    real_extract_clip, calls = extract._extract_clip, []

    def extract_clip_then_swallowed_sigterm(*args, **kwargs):
        calls.append(args[1])
        result = real_extract_clip(*args, **kwargs)
        if len(calls) == 2:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler runs here and its SystemExit is swallowed below
            except SystemExit:
                pass
        return result

    monkeypatch.setattr(extract, "_extract_clip", extract_clip_then_swallowed_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "s.h5"
    with pytest.raises(SystemExit) as exit_info:
        extract_shard(folder, [f"c{i}" for i in range(4)], out, progress=False)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert calls == ["c0", "c1"]  # stopped before the third clip
    assert not out.exists() and not list(tmp_path.glob("s.h5.tmp-*"))
    assert not (tmp_path / "s.failures.tsv").exists()
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_rewriting_a_shard_while_a_reader_has_it_open(tmp_path, make_video):
    folder = link_videos(tmp_path / "v", {"a": make_video(seed=1), "b": make_video(seed=2)})
    out = tmp_path / "s.h5"
    extract_shard(folder, ["a"], out, progress=False)
    reader = FrameStore(out)
    first = reader.uniform("a")
    extract_shard(folder, ["a", "b"], out, progress=False)  # writer never touches the open file
    np.testing.assert_array_equal(reader.uniform("a"), first)  # old handle still reads the old file
    assert FrameStore(out).ids() == ["a", "b"]


def _child_reads(store, queue):
    queue.put((os.getpid(), store.uniform("a").sum()))


def test_store_reopens_per_process_and_pickles_without_handle(tmp_path, make_video):
    folder = link_videos(tmp_path / "v", {"a": make_video(seed=3)})
    extract_shard(folder, ["a"], tmp_path / "s.h5", progress=False)
    store = FrameStore(tmp_path / "s.h5")
    expected = store.uniform("a").sum()  # opened in the parent before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(store, queue))
    child.start()
    child_pid, child_sum = queue.get(timeout=30)
    child.join(timeout=30)
    assert child_pid != os.getpid() and child_sum == expected
    clone = pickle.loads(pickle.dumps(store))
    assert clone._handle is None and clone.uniform("a").sum() == expected


# ---------------------------------------------------------------------------------------- split-ids
def test_split_ids_unions_sorts_dedups_and_removes_stale_lists(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text('{"clip_id": "v3", "text": "x"}\n{"clip_id": "v1", "text": ["y", "z"]}\n\n')
    b.write_text('{"clip_id": "v2", "text": "x"}\n{"clip_id": "v1", "text": "again"}\n{"clip_id": "v0", "text": "w"}\n')
    assert read_clip_ids([a, b]) == ["v0", "v1", "v2", "v3"]
    out = tmp_path / "ids"
    out.mkdir()
    (out / "00005.txt").write_text("stale\n")
    assert split_ids_main(["--ids-from", str(a), str(b), "--shard-size", "3", "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.txt", "00001.txt"]
    assert (out / "00000.txt").read_text() == "v0\nv1\nv2\n"
    assert (out / "00001.txt").read_text() == "v3\n"
    assert [shard_count(n, 3) for n in (0, 1, 3, 4, 7)] == [0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="shard_size"):
        shard_count(5, 0)


def test_split_ids_reports_bad_annotation_lines(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip_id": "v1", "text": "x"}\n{"text": "no id"}\n')
    assert split_ids_main(["--ids-from", str(bad), "--shard-size", "2", "--out-dir", str(tmp_path / "o")]) == 2  # bad input: one line, exit 2
    assert f"{bad}:2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- frames-index
def test_frames_index_merges_shards_and_failures(tmp_path, make_video):
    folder = link_videos(tmp_path / "v", {f"c{i}": make_video(num_frames=14, seed=i) for i in range(4)})
    shards = tmp_path / "frames"
    extract_shard(folder, ["c0", "c1", "gone"], shards / "00000.h5", {"max_failure_fraction": 0.5}, progress=False)
    extract_shard(folder, ["c2", "c3"], shards / "00001.h5", progress=False)
    index_path = shards / "index.json"
    assert index_main(["--shards", str(shards / "00000.h5"), str(shards / "00001.h5"), "--out", str(index_path)]) == 0
    index = json.loads(index_path.read_text())
    assert index["shards"] == ["00000.h5", "00001.h5"] and index["num_clips"] == 4
    assert index["failures"] == "failures.tsv" and index["num_failures"] == 1
    frames = FrameIndex(index_path)
    assert frames.ids() == ["c0", "c1", "c2", "c3"]
    assert frames.uniform("c3").shape == (12, 64, 96, 3)
    assert frames.meta("c2")["num_frames"] == 14
    failures = frames.failures()
    assert failures.to_dict("records") == [{"clip_id": "gone", "reason": "missing",
                                            "detail": failures.detail[0], "shard": "00000.h5"}]
    with pytest.raises(KeyError, match="failures"):
        frames.pool("gone")


def test_frames_index_refuses_incomplete_or_overlapping_shards(tmp_path, make_video, capsys):
    folder = link_videos(tmp_path / "v", {"c0": make_video()})
    extract_shard(folder, ["c0"], tmp_path / "00000.h5", progress=False)
    extract_shard(folder, ["c0"], tmp_path / "00001.h5", progress=False)
    assert index_main(["--shards", str(tmp_path / "00000.h5"), str(tmp_path / "00001.h5"),
                       "--out", str(tmp_path / "index.json")]) == 2
    assert "'c0' is in both" in capsys.readouterr().err
    with h5py.File(tmp_path / "00001.h5", "a") as handle:
        handle.attrs["complete"] = False
    assert index_main(["--shards", str(tmp_path / "00001.h5"), "--out", str(tmp_path / "index.json")]) == 2
    assert "complete=True" in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()
