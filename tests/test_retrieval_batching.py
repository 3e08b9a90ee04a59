"""``batching: retrieval`` in the trainer: VideoCLIP's retrieval-augmented batches (RetriTask / VectorRetriever).

In-process (no DeepSpeed): the real task, ``build_retrieval_batches`` and ``cluster_loader`` of the loop over a
synthetic feature store, checked against ``sample_clusters`` called directly on embeddings computed here by
an independent path; the rebuild cadence; the state round trip. Subprocesses (``python -m clipvip train``, as
the workflow starts it): the cluster list in the checkpoint, a stopped-and-resumed run equal to an
uninterrupted one, 2 gloo ranks equal to 1 rank with the same global batch (same list, disjoint shares),
and ``method: clipvip`` post-pretraining on the demo frame stores (``tests/test_train.py``'s fixture).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipvip.data.retrieval_batches import epoch_order, sample_clusters, share_rows
from tests.test_train import _lines, data, train  # noqa: F401  (data: the demo frame stores + tiny CLIP)
from tests.test_videoclip_workflow import WORDS, write_timed_feature_corpus

SEED = 42
# 24 videos, clusters of 2 videos x 2 pairs: 12 clusters; a global batch of 8 pairs = 2 clusters -> 6 steps per
# epoch; 18 steps = 3 epochs, clusters rebuilt at epochs 0 and 2 (flat index: 24 < 39 x nlist).
RETRI = {"method": "videoclip", "batching": "retrieval", "videos_per_cluster": 2, "clips_per_video": 2,
         "batch_size": 8, "max_steps": 18, "retrieval_every": 2, "nlist": 4, "num_workers": 0, "warmup_steps": 1,
         "checkpoint_every": 2, "keep_checkpoints": 20, "zero_stage": 0, "num_video_layers": 1, "lr": 1e-3,
         "seed": SEED}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write_videos(root: Path, num_videos: int) -> dict:
    return write_timed_feature_corpus(root, num_videos, seconds=(12, 24), seed=num_videos, name="vid{:03d}")


@pytest.fixture(scope="module")
def vc(tmp_path_factory):
    from clipvip.model.videoclip import build_tiny_bert

    root = tmp_path_factory.mktemp("retri")
    bert = build_tiny_bert(root / "bert", layers=1, corpus=[" ".join(WORDS)] * 4)
    config = json.loads((bert / "config.json").read_text())  # no dropout: resume must be bit-identical
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bert / "config.json").write_text(json.dumps(config))
    return {"bert": bert, "small": _write_videos(root / "small", 24), "big": _write_videos(root / "big", 80)}


# ------------------------------------------------------------------------------------------------ in process
def _trainer(vc, videos: str, options: dict):
    """The trainer attributes the VideoCLIP task and ``build_retrieval_batches`` use, without DeepSpeed."""
    from clipvip.trainer.options import TrainOptions
    from clipvip.trainer.videoclip_task import VideoCLIPTask

    paths = vc[videos]
    t = SimpleNamespace(opts=TrainOptions.from_dict(options, "pretrain"), device=torch.device("cpu"),
                        args=SimpleNamespace(frames_index=str(paths["features"]), features_index=str(paths["features"]),
                                             annotations=str(paths["subs"]), init=str(vc["bert"]),
                                             val_annotations=None, val_frames_index=None),
                        info=SimpleNamespace(world_size=1, rank=0),
                        plan=SimpleNamespace(workers=0, eval_workers=0, pin_memory=False, persistent_workers=False,
                                             prefetch_factor=None))
    t.task = VideoCLIPTask()
    torch.manual_seed(t.opts.seed)  # as Trainer.build_model: the video MLP's random init
    t.task.build_model(t)
    t.dataset, t.collate, _ = t.task.build_data(t)
    t.engine = SimpleNamespace(module=t.model)
    return t


def _reference_embeddings(model, features, subtitles, tokenizer, opts, epoch: int) -> np.ndarray:
    """Per video: mean over its draws of (pooled video + pooled text) / 2 of *aligned* pairs, one video at a time
    (not the trainer's batched loader / mix_embeddings path)."""
    from clipvip.trainer.videoclip_task import VideoCLIPDataset

    ds = VideoCLIPDataset(features, subtitles, tokenizer, opts, seed=opts.seed, mode="aligned")
    ds.set_epoch(epoch)
    c, rows = opts.clips_per_video, []
    model.eval()
    with torch.no_grad():
        for v in range(len(ds.videos)):
            b = ds.collate([ds[v * c + d] for d in range(c)])
            pair = (model.encode_video(b["features"], b["video_mask"].bool())
                    + model.encode_text(b["input_ids"], b["attention_mask"])) / 2
            rows.append(pair.mean(0).numpy())
    return np.stack(rows).astype(np.float32)


def test_batches_are_whole_faiss_clusters_ivf(vc):
    """(a) with the IVF index (80 videos >= 39 x nlist 2): every batch the loader yields is exactly one cluster
    of ``sample_clusters`` on independently computed embeddings, each video with its 2 draws."""
    from clipvip.trainer.loop import build_retrieval_batches, cluster_loader

    opts = dict(RETRI, batch_size=6, videos_per_cluster=3, nlist=2)  # 1 cluster of 3 videos x 2 pairs per step
    t = _trainer(vc, "big", opts)
    batches, rank_samples = build_retrieval_batches(t)
    assert batches.num_batches == 80 // 3 and rank_samples == batches.num_batches * 6
    loader = cluster_loader(t.dataset, batches, t.plan, t.collate)
    t.model.train()
    stats = batches.set_epoch(0)
    assert t.model.training  # the embedding pass ran in eval mode and restored the mode
    assert stats["index"] == "ivf" and stats["num_clusters"] == 26 and stats["num_videos"] == 80
    ref = _reference_embeddings(t.model, t.features, t.dataset.subtitles, t.tokenizer, t.opts, epoch=0)
    expected = sample_clusters(ref, 3, seed=SEED, epoch=0, nlist=2)
    assert batches.clusters == expected
    seen = [batch["clip_ids"] for batch in loader]
    videos = t.dataset.videos
    assert seen == [[videos[v] for v in cluster for _ in range(2)] for cluster in expected]
    assert len({v for b in seen for v in b}) > 3 * 8   # not one cluster repeated


def test_rebuild_every_n_epochs_and_state_round_trip(vc, tmp_path):
    """(d) the embedding pass runs at epochs 0, 2, 4 with retrieval_every 2; epochs between reuse the list in
    another order. A state saved mid-epoch resumes the same remaining batches without embedding again."""
    from clipvip.trainer.loop import build_retrieval_batches

    t = _trainer(vc, "small", RETRI)
    batches, _ = build_retrieval_batches(t)
    calls = []
    real = batches.embed
    batches.embed = lambda rows, epoch: calls.append(epoch) or real(rows, epoch)
    lists = {}
    for epoch in range(5):
        stats = batches.set_epoch(epoch)
        assert (stats is not None) == (epoch % 2 == 0)
        lists[epoch] = batches.batches.clusters
    assert calls == [0, 2, 4]
    assert lists[1] != lists[0] and sorted(lists[1]) == sorted(lists[0])   # same clusters, another order
    assert lists[1] == epoch_order(lists[0], SEED, 1, 0)

    batches.set_epoch(5)
    full = list(batches)
    batches.advance(2)
    torch.save(batches.state_dict(), tmp_path / "state.pt")
    again, _ = build_retrieval_batches(t)
    again.embed = lambda rows, epoch: pytest.fail("restored batches must not embed again")
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert again.set_epoch(5) is None and list(again) == full[2:]
    assert again.clusters == batches.clusters and again.built_epoch == 4

    other, _ = build_retrieval_batches(_trainer(vc, "small", dict(RETRI, videos_per_cluster=4)))
    with pytest.raises(ValueError, match="videos_per_cluster=2, this run 4"):
        other.load_state_dict(batches.state_dict())
    with pytest.raises(ValueError, match="random batching"):
        other.load_state_dict({"epoch": 0, "position": 0, "seed": SEED})


def test_share_rows_cover_every_video_once_in_order():
    for n, world in ((24, 2), (25, 4), (3, 4)):
        blocks = [share_rows(n, world, r) for r in range(world)]
        assert len({len(b) for b in blocks}) == 1                       # same number of forwards per rank
        assert np.concatenate(blocks)[:n].tolist() == list(range(n))    # gathered in rank order = 0..N-1


def test_options_refuse_what_retrieval_batching_cannot_do():
    from clipvip.stage import OptionError
    from clipvip.trainer.options import TrainOptions

    opts = TrainOptions.from_dict({"method": "videoclip", "batching": "retrieval"}, "pretrain")
    assert opts.batch_size == 512 and opts.videos_per_cluster * opts.clips_per_video == 512   # official 32 x 16
    assert TrainOptions.from_dict({"batching": "retrieval"}, "pretrain").batch_size == 1024   # clipvip: 32 x 1
    for bad, key, words in [
        ({"method": "videoclip", "batching": "retrieval", "batch_size": 96}, "batch_size", "videos_per_cluster 32 x 16"),
        ({"batching": "retrieval", "group_size": 2}, "group_size", "whole clusters"),
        ({"batching": "retrieval", "shuffle_mode": "shard"}, "shuffle_mode", "clusters decide the order"),
    ]:
        with pytest.raises(OptionError, match=key) as err:
            TrainOptions.from_dict(bad, "pretrain")
        assert words in str(err.value)
    with pytest.raises(OptionError, match="task recognition"):
        TrainOptions.from_dict({"task": "recognition", "batching": "retrieval"}, "finetune")


# ------------------------------------------------------------------------------------------------ the trainer
def vc_train(vc, run: Path, options: dict, expect: int = 0) -> subprocess.CompletedProcess:
    paths = vc["small"]
    cmd = [sys.executable, "-m", "clipvip", "train", "--stage", "pretrain", "--frames-index", str(paths["features"]),
           "--features-index", str(paths["features"]), "--annotations", str(paths["subs"]), "--init", str(vc["bert"]),
           "--out", str(run / "out"), "--checkpoint-dir", str(run / "ckpt"), "--options", json.dumps(options)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=400)
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc


def _steps(run: Path) -> list[dict]:
    return [r for r in _lines(run / "out" / "metrics.jsonl") if "event" not in r]


def _client(run: Path, step: int) -> dict:
    return torch.load(run / "ckpt" / f"global_step{step}" / "mp_rank_00_model_states.pt", weights_only=False)


def _ckpt_clusters(run: Path, step: int) -> tuple[int, list[list[int]]]:
    from clipvip.data.retrieval_batches import _unpack

    state = _client(run, step)["sampler"]
    return state["built_epoch"], _unpack(state["clusters"])


@pytest.fixture(scope="module")
def full_run(vc, tmp_path_factory):
    run = tmp_path_factory.mktemp("full")
    vc_train(vc, run, RETRI)
    return run


@pytest.mark.slow
def test_trainer_builds_faiss_clusters_every_n_epochs_and_logs_them(vc, full_run):
    """(a) + (d) through ``clipvip train``: the checkpointed epoch-0 list is ``sample_clusters`` of the init
    model's embeddings; cluster builds at epochs 0 and 2 only, logged with their statistics."""
    events = [r for r in _lines(full_run / "out" / "metrics.jsonl") if r.get("event") == "clusters"]
    assert [(e["epoch"], e["step"]) for e in events] == [(0, 1), (2, 13)]
    assert all(e["num_clusters"] == 12 and e["mean_size"] == 2.0 and e["index"] == "flat" and e["seconds"] >= 0
               for e in events)
    assert [r["step"] for r in _steps(full_run)] == list(range(1, 19))
    derived = json.loads((full_run / "out" / "config.json").read_text())["derived"]["retrieval_batching"]
    assert derived["clusters_per_epoch"] == 12 and derived["clusters_per_batch"] == 2 and derived["index"] == "flat"

    t = _trainer(vc, "small", RETRI)
    ref = _reference_embeddings(t.model, t.features, t.dataset.subtitles, t.tokenizer, t.opts, epoch=0)
    assert _ckpt_clusters(full_run, 2) == (0, sample_clusters(ref, 2, seed=SEED, epoch=0, nlist=4))
    assert _ckpt_clusters(full_run, 10)[0] == 0 and _ckpt_clusters(full_run, 14)[0] == 2
    # epoch 2's list comes from the trained weights: not epoch 0's
    assert _ckpt_clusters(full_run, 14)[1] != _ckpt_clusters(full_run, 2)[1]


@pytest.mark.slow
def test_stopped_mid_epoch_then_resumed_equals_uninterrupted(vc, full_run, tmp_path):
    """(b) the run stops at step 15 (mid-epoch 2, clusters built from trained weights) without saving; the rerun
    resumes from step 14 with the checkpointed list (no new embedding pass) and ends as the uninterrupted run."""
    run = tmp_path / "stopped"
    proc = vc_train(vc, run, dict(RETRI, debug_nan_at_step=15), expect=3)
    assert "non-finite loss at step 15" in proc.stderr
    again = vc_train(vc, run, RETRI)
    out = again.stdout + again.stderr
    assert "resumed from" in out and "at step 14" in out and "clusters of" not in out
    assert [r["step"] for r in _steps(run)] == list(range(1, 19))   # lines after step 14 replaced, none twice
    assert [r["loss"] for r in _steps(run)] == pytest.approx([r["loss"] for r in _steps(full_run)], abs=1e-6)
    events = [r["epoch"] for r in _lines(run / "out" / "metrics.jsonl") if r.get("event") == "clusters"]
    assert events == [0, 2]
    assert _ckpt_clusters(run, 16) == _ckpt_clusters(full_run, 16)
    from clipvip.model.videoclip import VideoCLIPModel

    a = VideoCLIPModel.from_pretrained(full_run / "out" / "model").state_dict()
    b = VideoCLIPModel.from_pretrained(run / "out" / "model").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_two_ranks_share_one_cluster_list_disjointly(vc, full_run, tmp_path):
    """(c) 2 gloo ranks, 1 cluster each per step, vs 1 rank with both clusters: the loss gathers the ranks' rows
    in rank order, so equal losses mean rank r trained on clusters r, r + 2, ... of the same list (sharded
    embedding pass + all-gather + rank 0's broadcast), and the ranks' shares were disjoint."""
    run = tmp_path / "two"
    vc_train(vc, run, dict(RETRI, launcher="local", nprocs=2))
    np.testing.assert_allclose([r["loss"] for r in _steps(run)], [r["loss"] for r in _steps(full_run)],
                               rtol=0, atol=1e-4)
    assert _ckpt_clusters(run, 2) == _ckpt_clusters(full_run, 2)
    assert _ckpt_clusters(run, 14) == _ckpt_clusters(full_run, 14)
    derived = json.loads((run / "out" / "config.json").read_text())["derived"]
    assert derived["world_size"] == 2 and derived["retrieval_batching"]["clusters_per_batch"] == 1


@pytest.mark.slow
def test_clipvip_post_pretraining_with_retrieval_batches(data, tmp_path):  # noqa: F811
    """``method: clipvip``: the embedding pass is the store's uniform frames + the first text; batches are whole
    clusters of clips (one item per video); the list is ``sample_clusters`` of the init model's embeddings."""
    from clipvip.data import FrameIndex, video_transform
    from clipvip.data.annotations import read_annotations
    from clipvip.data.text import load_tokenizer, tokenize
    from clipvip.model import CLIPViPModel

    opts = {"batching": "retrieval", "videos_per_cluster": 2, "batch_size": 4, "num_frames": 4, "max_steps": 4,
            "lr": 1e-4, "num_workers": 0, "max_text_len": 16, "nprocs": 1, "zero_stage": 2, "checkpoint_every": 1,
            "keep_checkpoints": 10, "temporal_init_std": 0.02, "seed": SEED}
    train(data, tmp_path, opts, stage="pretrain")
    run = tmp_path
    events = [r for r in _lines(run / "out" / "metrics.jsonl") if r.get("event") == "clusters"]
    assert [e["epoch"] for e in events] == [0, 1] and events[0]["num_clusters"] == 4   # 8 clips / 2
    assert len(_steps(run)) == 4

    torch.manual_seed(SEED)
    model = CLIPViPModel.from_pretrained(str(data["clip"]), video_encoder="vip", temporal_init_std=0.02)
    model = (model[0] if isinstance(model, tuple) else model).eval()
    tok = load_tokenizer(data["clip"])
    index = FrameIndex(data["pretrain_index"])
    records = [r for r in read_annotations(data["pretrain"]) if r["clip_id"] in set(index.ids())]
    with torch.no_grad():
        video = model.encode_video(torch.stack([video_transform(index.uniform(r["clip_id"], 4), 32) for r in records]))
        enc = tokenize(tok, [r["texts"][0] for r in records], 16)
        text = model.encode_text(enc["input_ids"], enc["attention_mask"])
    ref = ((video + text) / 2).numpy()
    assert _ckpt_clusters(run, 2) == (0, sample_clusters(ref, 2, seed=SEED, epoch=0, nlist=512))


@pytest.mark.slow
def test_retrieval_batching_with_loader_workers_exits(data, tmp_path):  # noqa: F811
    """With DataLoader workers (which ignore SIGTERM, so a scancel reaches the main process first) the run must
    stop its workers itself: a worker left to interpreter exit would be joined forever (seen on the demo)."""
    opts = {"batching": "retrieval", "videos_per_cluster": 2, "batch_size": 4, "num_frames": 4, "max_steps": 6,
            "lr": 1e-4, "num_workers": 1, "max_text_len": 16, "nprocs": 1, "zero_stage": 2, "checkpoint_every": 10,
            "seed": SEED}
    started = time.perf_counter()
    train(data, tmp_path, opts, stage="pretrain")  # subprocess.run(..., timeout=300): a hang fails here
    assert len(_steps(tmp_path)) == 6
    assert time.perf_counter() - started < 240
