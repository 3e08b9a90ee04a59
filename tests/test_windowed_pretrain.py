"""Long demo videos with timed subtitles, and CLIP-ViP post-pretraining on overlapped / aligned windows (issue 14).

Real MP4s (the demo renderer, x264), decoded by the frames stage into a fixed-rate pool, read back through
``WindowedPretrainDataset``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clipvip.data.frame_store import FrameStore
from clipvip.data.subtitles import read_subtitles
from clipvip.demo_data import LONG_DATASET, DemoOptions, long_specs, render_long, write_corpus

SMALL = {"seed": 3, "pretrain_clips": 2, "msrvtt_clips": {"train": 2}, "didemo_clips": {"train": 2},
         "long_clips": 3, "long_seconds": [12, 20], "workers": 1}


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    from clipvip.frames.extract import extract_shard

    root = tmp_path_factory.mktemp("long")
    done = write_corpus(root / "demo", SMALL)
    ids = [s.clip_id for s in long_specs(SMALL)]
    result = extract_shard(root / "demo" / "videos", ids, root / "frames.h5",
                           {"pool_fps": 2, "num_frames": 4, "short_side": 0})
    assert result.stored == len(ids) and not result.failures
    return root, done, ids


def test_long_corpus_has_timed_subtitles_about_its_events(long_corpus):
    root, done, ids = long_corpus
    assert done["clips"][LONG_DATASET] == {"train": 3}
    meta = {m["clip_id"]: m for m in map(json.loads, open(root / "demo/annotations/demo_long_meta.jsonl"))}
    durations = {c: m["duration"] for c, m in meta.items()}
    subs = read_subtitles(root / "demo/annotations/demo_long_train.jsonl", durations=durations)  # strict checks
    assert [s.clip_id for s in subs] == ids
    for s in subs:
        assert 12 <= durations[s.clip_id] <= 20 and s.timed
        events = meta[s.clip_id]["events"]
        assert len(events) >= 2 and events[-1]["end"] == pytest.approx(durations[s.clip_id])
        starts = [line.start for line in s.lines]
        assert starts == sorted(starts)
        # one spoken line per event, starting within its -1..+2 s lag of the event
        for event in events:
            assert any(event["start"] - 1.01 <= line.start <= event["start"] + 2.01 for line in s.lines)
    store = FrameStore(root / "frames.h5")
    for spec in long_specs(SMALL):
        m = store.meta(spec.clip_id)
        assert m["num_frames"] == sum(spec.frames)          # every rendered frame is in the MP4
        assert len(m["pool_times"]) == math.ceil(sum(spec.frames) / 8 * 2)  # 2 fps pool, not every frame


def _dataset(root, ids, mode, num_frames=6):
    from clipvip.data.datasets import WindowedPretrainDataset
    from clipvip.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    subs = {s.clip_id: s for s in read_subtitles(root / "demo/annotations/demo_long_train.jsonl")}
    records = [{"clip_id": c, "texts": [" ".join(line.text for line in subs[c].lines)]} for c in ids]
    return WindowedPretrainDataset(
        FrameStore(root / "frames.h5"), records, subs, {c: "a red square" for c in ids}, num_frames, 64,
        tokenize=lambda text: tok(text, add_special_tokens=False)["input_ids"], pair_sampling=mode, seed=5), subs


def test_overlapped_items_are_windows_of_the_video_and_spans_of_the_subtitles(long_corpus):
    root, _, ids = long_corpus
    ds, subs = _dataset(root, ids, "overlapped")
    store = FrameStore(root / "frames.h5")
    rendered = {s.clip_id: render_long(s, SMALL) for s in long_specs(SMALL)}
    windows = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index, clip_id in enumerate(ids):
            pair, meta = ds.window_pair(index)
            item = ds[index]
            start, end = pair.window
            windows.add((clip_id, start, end))
            assert 0 <= start < end <= math.floor(meta["duration"]) and end - start <= 32
            assert min(3, math.floor(meta["duration"])) <= end - start
            assert np.all((pair.frame_times >= start) & (pair.frame_times <= end))
            lines = subs[clip_id].lines[pair.line_start:pair.line_end]
            assert item["text"] == " ".join(line.text for line in lines)
            assert item["pixel_values"].shape == (6, 3, 64, 64) and item["frame_pixel_values"].shape == (1, 3, 64, 64)
            # each frame is the pool frame nearest in time; the pool frames are the video's frames
            times = np.asarray(store.meta(clip_id)["pool_times"])
            used = np.argmin(np.abs(times[None] - pair.frame_times[:, None]), axis=1)
            frame_idx = np.asarray(store.meta(clip_id)["pool_indices"])[used]
            expected = rendered[clip_id][frame_idx].transpose(0, 3, 1, 2).astype(float)
            assert np.abs(item["pixel_values"].numpy().astype(float) - expected).mean() < 6
    assert len(windows) > len(ids) * 2  # windows move between epochs
    # deterministic per (epoch, index): a resumed run reads the same pairs
    ds.set_epoch(2)
    again = ds[1]
    ds.set_epoch(2)
    assert again["text"] == ds[1]["text"] and bool((again["pixel_values"] == ds[1]["pixel_values"]).all())


def test_aligned_window_is_the_text_span(long_corpus):
    root, _, ids = long_corpus
    ds, subs = _dataset(root, ids, "aligned")
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(len(ids)):
            pair, meta = ds.window_pair(index)
            lo, hi = pair.span
            start, end = pair.window
            assert start == max(min(math.floor(lo), end), 0)
            assert end == min(math.ceil(hi), math.floor(meta["duration"]))


def test_windowed_dataset_refuses_clips_without_subtitles_and_unknown_modes(long_corpus):
    from clipvip.data.datasets import WindowedPretrainDataset

    root, _, ids = long_corpus
    ds, subs = _dataset(root, ids, "overlapped")
    records = [{"clip_id": c, "texts": ["x"]} for c in ids]
    with pytest.raises(ValueError, match=f"1 clips have no subtitles.*{ids[0]}"):
        WindowedPretrainDataset(FrameStore(root / "frames.h5"), records, {c: subs[c] for c in ids[1:]},
                                {c: "c" for c in ids}, 4, 64, tokenize=str.split)
    with pytest.raises(ValueError, match="pair_sampling must be overlapped or aligned"):
        WindowedPretrainDataset(FrameStore(root / "frames.h5"), records, subs, {c: "c" for c in ids}, 4, 64,
                                tokenize=str.split, pair_sampling="clip")


def test_long_seconds_option_is_checked():
    from clipvip.stage import OptionError

    with pytest.raises(OptionError, match="long_seconds"):
        DemoOptions.from_dict({"long_seconds": [30, 20]})


def test_clipvip_post_pretraining_on_overlapped_windows_through_the_cli(long_corpus):
    """``clipvip train --stage pretrain`` with ``pair_sampling: overlapped`` on the long videos (real DeepSpeed)."""
    import os
    import subprocess
    import sys

    from clipvip.cli import main as cli
    from clipvip.model.tiny import build_tiny_clip

    root, _, ids = long_corpus
    assert cli(["frames-index", "--shards", str(root / "frames.h5"), "--out", str(root / "index.json")]) == 0
    clip = build_tiny_clip(root / "clip", image_size=64, patch_size=32, hidden_size=32, layers=1, heads=2,
                           text_hidden=32, text_layers=1, projection_dim=32)
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps({"clip_id": c, "caption": "a red square", "model": "t"}) + "\n"
                                for c in ids))
    options = {"pair_sampling": "overlapped", "loss": "vsc_fc", "batch_size": 3, "num_frames": 4, "max_steps": 3,
               "num_workers": 1, "max_text_len": 32, "checkpoint_every": 10, "nprocs": 1, "warmup_ratio": 0.0}

    def run(name, stage="pretrain", annotations=root / "demo/annotations/demo_long_train.jsonl", **extra):
        cmd = [sys.executable, "-m", "clipvip", "train", "--stage", stage, "--init", str(clip),
               "--frames-index", str(root / "index.json"), "--annotations", str(annotations),
               "--out", str(root / name / "out"), "--checkpoint-dir", str(root / name / "ckpt"),
               "--options", json.dumps({**options, **extra})]
        if stage == "pretrain":
            cmd += ["--captions", str(captions)]
        return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=300)

    proc = run("overlapped")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (root / "overlapped/out/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == 3 and all(np.isfinite(r["loss"]) for r in steps)
    saved = json.loads((root / "overlapped/out/config.json").read_text())
    assert saved["options"]["pair_sampling"] == "overlapped"
    # the whole-clip record text of an Arrow table cannot give windows; fine-tuning takes whole clips
    (root / "fake.arrow").write_bytes(b"")
    bad = run("arrow", annotations=root / "fake.arrow")
    assert bad.returncode == 2 and "reads timed subtitles from the annotation JSONL" in bad.stderr
    bad = run("ft", stage="finetune")
    assert bad.returncode == 2 and "post-pretraining option" in bad.stderr
