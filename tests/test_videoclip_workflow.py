"""VideoCLIP in the workflow (issues 14 + 15, phase 2): fixed-rate frame pool, `clipvip features`, training."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from clipvip.data.feature_store import FeatureIndex, FeatureStore, IncompleteFeatureStoreError
from clipvip.data.frame_store import FrameStore
from clipvip.frames.extract import FrameOptions, extract_shard, fixed_rate_pool
from clipvip.stage import OptionError

REPO = Path(__file__).resolve().parents[1]


def _copy(folder: Path, videos: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, src in videos.items():
        shutil.copy(src, folder / f"{clip_id}{src.suffix}")
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from clipvip.model.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", image_size=32, patch_size=16,
                           hidden_size=32, projection_dim=24)


# ------------------------------------------------------------------------------------------ fixed-rate pool
def test_fixed_rate_pool_grid():
    idx, times = fixed_rate_pool(40, 8.0, 2.0)                 # 5 s at 8 fps, 2 fps grid: 0.25, 0.75, ...
    assert idx.tolist() == [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]
    np.testing.assert_allclose(times, idx / 8.0)
    idx, _ = fixed_rate_pool(10, 2.0, 3.0)                     # pool faster than the video: distinct frames
    assert len(idx) == len(set(idx.tolist())) == 10
    with pytest.raises(OptionError, match="pool_fps"):
        FrameOptions.from_dict({"pool_fps": 0})


def test_fixed_rate_pool_store_timestamps_and_affordability(make_video, tmp_path, monkeypatch):
    import clipvip.video_io as video_io

    long = make_video(num_frames=600, width=64, height=48, fps=25, name="long24s", gop=250)  # 24 s
    short = make_video(num_frames=40, width=96, height=64, fps=8)
    videos = _copy(tmp_path / "videos", {"long": long, "short": short})
    ids = ["long", "short"]
    picked = {}
    real = video_io.decode_frames

    def spy(path, pick, threads=1):
        out = real(path, pick, threads=threads)
        picked[Path(path).stem] = (out.num_frames, len(out.indices), out.decoder)
        return out

    monkeypatch.setattr("clipvip.frames.extract.decode_frames", spy)
    result = extract_shard(videos, ids, tmp_path / "00000.h5", {"pool_fps": 2, "num_frames": 4, "short_side": 0})
    assert result.stored == 2 and not result.failures
    n, decoded, decoder = picked["long"]
    assert n == 600 and decoder == "decord"
    assert decoded <= 48 + 4 + 1 and decoded < n / 10          # 2 fps x 24 s (+ uniform, middle) << 600
    store = FrameStore(tmp_path / "00000.h5")
    assert store.settings["pool_fps"] == 2.0
    meta = store.meta("long")
    frames, indices = store.pool("long")
    times = np.asarray(meta["pool_times"])
    assert len(times) == len(indices) == len(frames) == 48
    np.testing.assert_allclose(times, indices / 25.0)
    assert np.all(np.diff(times) > 0) and times[0] < 0.5 and times[-1] > 23.5
    # grid positions (k + 0.5) / 2 s are each within one frame of a stored frame
    grid = (np.arange(48) + 0.5) / 2
    assert np.max(np.abs(grid - times)) <= 1 / 25 + 1e-9
    # the stored frames are the decoded frames at those indices (frame-number bar code)
    from tests.conftest import synthetic_frames

    expected = synthetic_frames(600, 48, 64)[indices[:5]]
    assert np.abs(frames[:5].astype(float) - expected.astype(float)).mean() < 4
    # the fixed-count pool is unchanged and has no times
    extract_shard(videos, ids, tmp_path / "00001.h5", {"num_frames": 4})
    assert FrameStore(tmp_path / "00001.h5").meta("short")["pool_times"] is None
    assert "pool_fps" not in FrameStore(tmp_path / "00001.h5").settings


# ------------------------------------------------------------------------------------------ features stage
def test_features_store_contract_and_bad_inputs(make_video, tmp_path, tiny_clip):
    from clipvip.features import FeatureOptions, extract_features_shard

    good = make_video(num_frames=40, width=96, height=64, fps=8)               # 5 s
    videos = _copy(tmp_path / "videos", {"a": good, "b": good})
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(200))
    ids = ["a", "b", "empty", "junk", "absent"]
    opts = {"extractor": "clip", "model": str(tiny_clip), "device": "cpu", "max_failure_fraction": 0.7}
    result = extract_features_shard(videos, ids, tmp_path / "f" / "00000.h5", opts)
    assert result.stored == 2
    reasons = {c: r for c, r, _ in result.failures}
    assert reasons["empty"] == "empty" and reasons["absent"] == "missing" and reasons["junk"] in (
        "corrupt", "truncated")
    from clipvip.data.manifest import read_failures

    manifest = read_failures(tmp_path / "f" / "00000.failures.tsv")
    assert sorted(manifest.clip_id) == ["absent", "empty", "junk"]
    store = FeatureStore(tmp_path / "f" / "00000.h5")
    feats = store.features("a")
    assert feats.shape == (5, 24) and feats.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=3e-3)
    assert store.meta("a")["source"] == "video" and store.meta("a")["seconds"] == 5
    # too many failures: manifest written, no store
    strict = dict(opts, max_failure_fraction=0.1)
    result = extract_features_shard(videos, ids, tmp_path / "g" / "00000.h5", strict)
    assert result.store_path is None and not (tmp_path / "g" / "00000.h5").exists()
    assert (tmp_path / "g" / "00000.failures.tsv").exists()
    assert not list((tmp_path / "g").glob("*.tmp-*"))
    with pytest.raises(OptionError, match="model"):
        FeatureOptions.from_dict({"extractor": "clip"})
    with pytest.raises(OptionError, match="weights"):
        FeatureOptions.from_dict({"extractor": "s3d"})
    with pytest.raises(OptionError, match="extractor"):
        FeatureOptions.from_dict({"extractor": "nope", "model": "x"})


def test_features_kill_mid_write_leaves_no_store(make_video, tmp_path, tiny_clip):
    good = make_video(num_frames=40, width=96, height=64, fps=8)
    # Enough clips that the writer is still busy when the signal comes (40 took < 0.3 s on an idle machine).
    videos = _copy(tmp_path / "videos", {f"v{i:03d}": good for i in range(200)})
    (tmp_path / "ids.txt").write_text("".join(f"v{i:03d}\n" for i in range(200)))
    out = tmp_path / "f" / "00000.h5"
    opts = json.dumps({"extractor": "clip", "model": str(tiny_clip), "device": "cpu"})
    proc = subprocess.Popen([sys.executable, "-m", "clipvip", "features", "--video-dir", str(videos), "--ids",
                             str(tmp_path / "ids.txt"), "--out", str(out), "--options", opts],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.parent.glob("*.tmp-*")):
        time.sleep(0.05)
    assert list(out.parent.glob("*.tmp-*")), proc.communicate()
    time.sleep(0.1)
    assert proc.poll() is None, "the extractor finished before it could be stopped mid-write"
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert not out.exists() and not list(out.parent.glob("*.tmp-*"))
    # a half-written file is refused by the reader
    with h5py.File(tmp_path / "half.h5", "w") as fh:
        fh.attrs["complete"] = False
    with pytest.raises(IncompleteFeatureStoreError):
        FeatureStore(tmp_path / "half.h5").ids()


def test_clipvip_features_end_to_end_from_pool_and_from_video(make_video, tmp_path, tiny_clip):
    vid = make_video(num_frames=48, width=96, height=64, fps=8, seed=3)       # 6 s
    videos = _copy(tmp_path / "videos", {"x": vid, "y": make_video(num_frames=40, width=96, height=64, fps=8)})
    ids = tmp_path / "ids.txt"
    ids.write_text("x\ny\n")
    frames = tmp_path / "frames" / "00000.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "clipvip"]
    subprocess.run(run + ["frames", "--video-dir", str(videos), "--ids", str(ids), "--out", str(frames),
                          "--options", json.dumps({"pool_fps": 1, "num_frames": 4, "short_side": 0})],
                   check=True, env=env)
    opts = json.dumps({"extractor": "clip", "model": str(tiny_clip), "device": "cpu"})
    for name, extra in (("pool", ["--frames", str(frames)]), ("video", [])):
        proc = subprocess.run(run + ["features", "--video-dir", str(videos), "--ids", str(ids), "--out",
                                     str(tmp_path / name / "00000.h5"), "--options", opts, *extra],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
    pool, video = FeatureIndex(tmp_path / "pool"), FeatureIndex(tmp_path / "video")
    assert pool.ids() == video.ids() == ["x", "y"] and pool.dim == 24
    assert pool.meta("x")["source"] == "frames" and video.meta("x")["source"] == "video"
    assert pool.features("x").shape == video.features("x").shape == (6, 24)
    # same frames (a 1-fps pool holds each second's middle frame, as the decoder picks) up to JPEG: nearly equal features
    a, b = pool.features("x").astype(np.float32), video.features("x").astype(np.float32)
    assert np.min(np.sum(a * b, axis=1)) > 0.98
    # a bad option is one line, exit 2
    proc = subprocess.run(run + ["features", "--video-dir", str(videos), "--ids", str(ids), "--out",
                                 str(tmp_path / "z.h5"), "--options", '{"extractor": "clip"}'],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "model" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ VideoCLIP training
WORDS = ["cut", "the", "onion", "stir", "pan", "add", "salt", "pour", "water", "mix", "bowl", "red", "circle",
         "moves", "left", "square", "right", "fast", "slow", "now"]


def write_feature_shard(path: Path, clips: dict, dim: int) -> Path:
    """A feature shard in the `clipvip features` format (synthetic features: training tests need no video)."""
    from clipvip.data.feature_store import FEATURE_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.attrs.update({"format": FEATURE_FORMAT, "dim": dim, "extractor": "synthetic", "complete": True})
        group = fh.create_group("clips")
        for clip_id, feats in clips.items():
            ds = group.create_dataset(clip_id, data=feats.astype(np.float16))
            ds.attrs.update({"duration": float(len(feats)), "seconds": len(feats), "source": "synthetic"})
    return path


def write_timed_feature_corpus(root: Path, num_videos: int, seconds=(20, 40), seed: int = 0,
                               name: str = "vid{}") -> dict:
    """Random 16-d per-second features (one shard + index) and timed subtitles of random WORDS lines
    (1.5-4 s, gaps up to 1 s) under ``root``: ``{"features": index.json, "subs": subs.jsonl}``."""
    from clipvip.data.feature_store import write_index

    rng = np.random.default_rng(seed)
    clips, subs = {}, []
    for v in range(num_videos):
        length = int(rng.integers(*seconds))
        clips[name.format(v)] = rng.standard_normal((length, 16))
        lines, t = [], 0.0
        while t < length - 2:
            end = min(length, t + float(rng.uniform(1.5, 4)))
            lines.append({"start": round(t, 2), "end": round(end, 2),
                          "text": " ".join(rng.choice(WORDS, int(rng.integers(2, 6))))})
            t = end + float(rng.uniform(0, 1))
        subs.append({"clip_id": name.format(v), "subtitles": lines})
    shard = write_feature_shard(root / "features" / "00000.h5", clips, 16)
    write_index([shard], root / "features" / "index.json")
    (root / "subs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in subs))
    return {"features": root / "features" / "index.json", "subs": root / "subs.jsonl"}


@pytest.fixture(scope="module")
def videoclip_data(tmp_path_factory):
    from clipvip.model.videoclip import build_tiny_bert

    root = tmp_path_factory.mktemp("vclip")
    write_timed_feature_corpus(root, 8, seconds=(20, 40), seed=0, name="vid{}")
    bert = build_tiny_bert(root / "bert", corpus=[" ".join(WORDS)] * 4)
    # No dropout: a resumed run's dropout masks come from a fresh torch RNG (not checkpointed), which would make
    # "resume equals uninterrupted" untestable; the data stream itself is a pure function of its position.
    config = json.loads((bert / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bert / "config.json").write_text(json.dumps(config))
    return {"features": root / "features" / "index.json", "subs": root / "subs.jsonl", "bert": bert}


VC_BASE = {"method": "videoclip", "max_steps": 2, "batch_size": 8, "clips_per_video": 4, "num_workers": 0,
           "warmup_steps": 1, "checkpoint_every": 1, "zero_stage": 0, "num_video_layers": 1, "lr": 1e-3}


def vc_train(data, run: Path, options: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "clipvip", "train", "--stage", "pretrain", "--frames-index", str(data["features"]),
           "--features-index", str(data["features"]), "--annotations", str(data["subs"]), "--init",
           str(data["bert"]), "--out", str(run / "out"), "--checkpoint-dir", str(run / "ckpt"),
           "--options", json.dumps(options)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def vc_losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "out" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in lines if "event" not in r]


def test_videoclip_options_defaults_and_refusals():
    from clipvip.trainer.options import TrainOptions

    opts = TrainOptions.from_dict({"method": "videoclip"}, "pretrain")
    assert (opts.loss, opts.lr, opts.betas, opts.grad_clip, opts.batch_size, opts.warmup_steps) == (
        "videoclip", 5e-5, [0.9, 0.98], 2.0, 512, 1000)
    assert opts.group_size == opts.clips_per_video == 16 and opts.pair_sampling == "overlapped"
    assert TrainOptions.from_dict({}, "pretrain").method == "clipvip"
    with pytest.raises(OptionError, match="loss"):
        TrainOptions.from_dict({"method": "videoclip", "loss": "vs"}, "pretrain")
    # retrieval batching: the official k = 32 videos x 16 clips fill the official 512-pair batch; a batch that is
    # not whole clusters is refused
    assert TrainOptions.from_dict({"method": "videoclip", "batching": "retrieval"}, "pretrain").batching == "retrieval"
    with pytest.raises(OptionError, match="batch_size"):
        TrainOptions.from_dict({"method": "videoclip", "batching": "retrieval", "batch_size": 100}, "pretrain")


def test_videoclip_two_step_training_export_and_resume(videoclip_data, tmp_path):
    from clipvip.model.videoclip import VideoCLIPModel

    run = tmp_path / "run"
    proc = vc_train(videoclip_data, run, VC_BASE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = vc_losses(run)
    assert len(losses) == 2 and all(np.isfinite(losses))
    ds = json.loads((run / "out" / "deepspeed_config.json").read_text())
    assert ds["optimizer"]["type"] == "Adam" and ds["scheduler"]["type"] == "WarmupDecayLR"
    from clipvip.videoclip_eval import evaluate_videoclip_folder

    anns = [{"clip_id": f"vid{v}", "texts": ["cut the onion"]} for v in range(8)]
    result = evaluate_videoclip_folder(run / "out" / "model", videoclip_data["features"], anns, device="cpu")
    assert result["num_videos"] == 8 and 0 <= result["t2v"]["R1"] <= 100
    derived = json.loads((run / "out" / "config.json").read_text())["derived"]
    assert 2.0 in (ds["gradient_clipping"], derived["manual_grad_clip"])  # ZeRO-0 fp32: the manual clip
    model = VideoCLIPModel.from_pretrained(run / "out" / "model")
    assert model.feature_dim == 16 and model.num_video_layers == 1
    from clipvip.videoclip_eval import is_videoclip_folder

    assert is_videoclip_folder(run / "out" / "model")
    # resume: a SIGTERM'd run (checkpoint at the next step, exit 75) rerun with the same options equals an
    # uninterrupted run (the pairs are a pure function of [seed, epoch, video, draw] and the sampler position)
    opts = dict(VC_BASE, max_steps=40, checkpoint_every=5, log_every=1)
    full = tmp_path / "full"
    assert vc_train(videoclip_data, full, opts).returncode == 0
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "clipvip", "train", "--stage", "pretrain", "--frames-index",
           str(videoclip_data["features"]), "--features-index", str(videoclip_data["features"]),
           "--annotations", str(videoclip_data["subs"]), "--init", str(videoclip_data["bert"]), "--out", str(cut / "out"), "--checkpoint-dir", str(cut / "ckpt"),
           "--options", json.dumps(opts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = cut / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    again = vc_train(videoclip_data, cut, opts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    np.testing.assert_allclose(vc_losses(cut), vc_losses(full), rtol=0, atol=1e-5)


def test_videoclip_two_ranks_equal_one_rank(videoclip_data, tmp_path):
    """gloo, 2 ranks x 4 pairs vs 1 rank x 8: the loss gathers across ranks, so the losses agree."""
    opts = dict(VC_BASE, max_steps=3)
    one, two = tmp_path / "one", tmp_path / "two"
    assert vc_train(videoclip_data, one, opts).returncode == 0
    proc = vc_train(videoclip_data, two, dict(opts, launcher="local", nprocs=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    np.testing.assert_allclose(vc_losses(two), vc_losses(one), rtol=0, atol=1e-4)


def test_evaluate_videoclip_first_32_seconds_and_result_shape(videoclip_data):
    from transformers import AutoTokenizer

    from clipvip.model.videoclip import VideoCLIPModel
    from clipvip.videoclip_eval import evaluate_videoclip

    features = FeatureIndex(videoclip_data["features"])
    model = VideoCLIPModel.from_pretrained(videoclip_data["bert"], feature_dim=16, num_video_layers=1)
    tok = AutoTokenizer.from_pretrained(str(videoclip_data["bert"]))
    anns = [{"clip_id": f"vid{v}", "texts": [f"cut the onion {v}"]} for v in range(8)] + [
        {"clip_id": "absent", "texts": ["x"]}]
    result = evaluate_videoclip(model, tok, features, anns, batch_size=3)
    assert {"t2v", "v2t", "t2v_dsl", "v2t_dsl"} <= set(result) and result["missing_ids"] == ["absent"]
    assert set(result["t2v"]) >= {"R1", "R5", "R10", "MdR", "MnR"} and result["num_videos"] == 8


# ------------------------------------------------------------------------------------------ workflow rules
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
OVERLAY = REPO / "presets" / "demo_videoclip.yaml"


def _demo_with_overlay(**videoclip) -> dict:
    """config.yaml merged with presets/demo_videoclip.yaml (as --configfile does), videoclip keys replaced."""
    import yaml
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load(OVERLAY.read_text()))
    config["videoclip"].update(videoclip)
    return config


def test_videoclip_section_defaults_options_and_refusals():
    from clipvip.config import (ConfigError, validate_config, videoclip_datasets, videoclip_evaluate_options,
                                videoclip_finetune_options, videoclip_pretrain_options)

    import yaml

    off = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), SCHEMA)
    assert off["videoclip"]["enabled"] is False and off["features"]["datasets"] == []  # off by default
    assert videoclip_datasets(off) == []
    config = validate_config(_demo_with_overlay(), SCHEMA)
    vc = config["videoclip"]
    assert vc["pretrain"]["dataset"] == "demo_pretrain"                       # default: pretrain.dataset
    assert vc["finetune"]["datasets"] == ["demo_msrvtt", "demo_didemo"]       # default: finetune.datasets
    assert vc["init"] == "results/pretrained/bert"
    assert config["features"]["datasets"] == ["demo_pretrain", "demo_msrvtt", "demo_didemo"]
    pre = videoclip_pretrain_options(config)
    assert pre["method"] == "videoclip" and pre["max_steps"] == config["pretrain"]["options"]["max_steps"]
    assert pre["batch_size"] == config["pretrain"]["options"]["batch_size"]   # the CLIP-ViP demo's budget
    msr, dd = videoclip_finetune_options(config, "demo_msrvtt"), videoclip_finetune_options(config, "demo_didemo")
    assert (msr["pair_sampling"], msr["clips_per_video"], msr["max_steps"], dd["max_steps"]) == ("clip", 1, 300, 200)
    assert dd["max_steps"] == config["finetune"]["per_dataset"]["demo_didemo"]["max_steps"]
    assert videoclip_evaluate_options(config, "demo_didemo")["text_mode"] == "join"
    # typos and bad values stop the config check, naming the key
    cases = [
        ({"enable": True}, r"config error at videoclip: Additional properties are not allowed \('enable'"),
        ({"pretrain": {"option": {}}}, r"config error at videoclip\.pretrain: Additional properties .*'option'"),
        ({"finetune": {"options": {"max_step": 5}}},
         r"config error at videoclip\.finetune\.options\.max_step: unknown option .*did you mean max_steps\?"),
        ({"pretrain": {"options": {"method": "clipvip"}}},
         r"config error at videoclip\.pretrain\.options\.method: 'clipvip'"),
        ({"pretrain": {"options": {"lr": "fast"}}}, r"config error at videoclip\.pretrain\.options\.lr: 'fast'"),
        ({"finetune": {"datasets": ["nope"]}}, r"config error at videoclip\.finetune\.datasets\.0: 'nope' is not"),
        ({"finetune": {"per_dataset": {"demo_pretrain": {}}}},
         r"config error at videoclip\.finetune\.per_dataset\.demo_pretrain: not listed"),
        ({"tiny_bert": {"hidden": 8}}, r"config error at videoclip\.tiny_bert\.hidden: unknown option"),
        ({"evaluate": {"options": {"batchsize": 8}}}, r"config error at videoclip\.evaluate\.options\.batchsize"),
        ({"init": "/no/such/bert"}, r"config error at videoclip\.init: '/no/such/bert' looks like a folder"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(_demo_with_overlay(**section), SCHEMA)


def test_tiny_bert_from_the_demo_corpus(tmp_path):
    from transformers import AutoTokenizer

    from clipvip.model.videoclip import VideoCLIPModel
    from clipvip.stage import UserError
    from clipvip.tiny_models import TinyBertOptions, build_demo_bert, corpus_texts

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"clip_id": "a", "text": "um the zorbly square goes left"}\n\n'
                     '{"clip_id": "b", "text": ["a blue circle moves up.", "then it moves right."]}\n')
    timed = tmp_path / "timed.jsonl"
    timed.write_text(json.dumps({"clip_id": "c", "subtitles": [{"start": 0, "end": 1, "text": "whisk the eggs"}]}))
    texts = corpus_texts([plain, timed])
    assert texts == ["um the zorbly square goes left", "a blue circle moves up.", "then it moves right.",
                     "whisk the eggs"]
    out = build_demo_bert(tmp_path / "bert", texts, {"hidden_size": 16, "layers": 2, "intermediate_size": 32})
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.unk_token_id not in tok("the zorbly circle moves up. whisk")["input_ids"]  # vocabulary of the corpus
    model = VideoCLIPModel.from_pretrained(out, feature_dim=24, num_video_layers=1)
    assert model.feature_dim == 24 and model.bert_config.hidden_size == 16
    assert json.loads((out / "tiny_bert.json").read_text())["corpus_texts"] == 4
    assert not list(tmp_path.glob(".bert.tmp-*"))
    with pytest.raises(UserError, match="no text"):
        corpus_texts([])
    with pytest.raises(OptionError, match="heads"):
        TinyBertOptions.from_dict({"hidden_size": 30, "heads": 4})


def test_videoclip_overlay_dry_run_lists_the_rules(tmp_path):
    import re

    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", "--nolock", "--configfile", str(REPO / "config.yaml"), str(OVERLAY),
                           "--config", f"results={tmp_path}/r"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$",
                                                              proc.stdout.split("Job stats:", 1)[1], re.M)}
    assert jobs["tiny_bert"] == 1 and jobs["videoclip_pretrain"] == 1 and jobs["videoclip_finetune"] == 2
    assert jobs["videoclip_evaluate"] == 4 and jobs["features_index"] == 3 and jobs["tables"] == 1
    r = f"{tmp_path}/r"
    for stage in ("zeroshot", "finetuned"):
        for ds in ("demo_msrvtt", "demo_didemo"):
            assert f"{r}/eval/videoclip-{stage}/{ds}/test.json" in proc.stdout
    assert f"--init {r}/pretrained/bert" in proc.stdout                      # pretrain from the tiny BERT
    assert f"--init {r}/runs/videoclip/pretrain/model" in proc.stdout        # fine-tune from the post-pretrained
    assert f"--frames-index {r}/features/demo_msrvtt/index.json" in proc.stdout
    # the tables job reads the VideoCLIP evaluations beside CLIP-ViP's
    tables = proc.stdout.split("rule tables:", 1)[1].split("rule ", 1)[0]
    assert f"{r}/eval/videoclip-finetuned/demo_didemo/test.json" in tables
    assert f"{r}/eval/finetuned-vip-vsc_fc/demo_didemo/test.json" in tables
    assert not (tmp_path / "r").exists()


def test_videoclip_zero_shot_protocol_evaluates_init_without_training(tmp_path):
    """``pretrain.enabled: false`` + ``finetune.enabled: false`` (the official zero-shot protocols on a converted
    MMPT checkpoint): only zero-shot rows, of ``init`` itself; no VideoCLIP training job."""
    import re

    import yaml

    overlay = tmp_path / "zs.yaml"
    overlay.write_text(yaml.safe_dump({"videoclip": {"pretrain": {"enabled": False},
                                                     "finetune": {"enabled": False}}}))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "-n", "--nolock", "--configfile", str(REPO / "config.yaml"), str(OVERLAY),
                           str(overlay), "--config", f"results={tmp_path}/r"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$",
                                                              proc.stdout.split("Job stats:", 1)[1], re.M)}
    assert jobs["videoclip_evaluate"] == 2 and "videoclip_pretrain" not in jobs and "videoclip_finetune" not in jobs
    r = f"{tmp_path}/r"
    evaluations = [block for block in proc.stdout.split("rule videoclip_evaluate:")[1:]]
    assert len(evaluations) == 2
    for block in evaluations:
        assert "/eval/videoclip-zeroshot/" in block and f"--model {r}/pretrained/bert" in block
        assert '"max_text_len": 63' in block      # the official text length unless the options say otherwise
