"""Corpus scale: the Arrow clip-id index, the open-shard LRU, lazy annotation/caption tables, shard-aware sampling."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipvip.data.annotations import read_annotations, read_captions
from clipvip.data.corpus import (AnnotationTable, CaptionTable, ClipIdTable, build_annotation_table,
                                 build_caption_table)
from clipvip.data.datasets import FinetuneDataset, PretrainDataset
from clipvip.data.sampler import ResumableDistributedSampler
from clipvip.frames import FrameIndex, extract_shard, index_main

NUM_SHARDS, PER_SHARD = 5, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_video):
    """NUM_SHARDS real shards of PER_SHARD clips each (one clip fails in shard 0), indexed by frames-index."""
    root = tmp_path_factory.mktemp("corpus")
    videos = root / "videos"
    videos.mkdir()
    ids = [f"c{i:02d}" for i in range(NUM_SHARDS * PER_SHARD)]
    for i, clip_id in enumerate(ids):
        shutil.copy(make_video(num_frames=10 + i, seed=i), videos / f"{clip_id}.mp4")
    frames = root / "frames"
    for s in range(NUM_SHARDS):
        shard_ids = ids[s * PER_SHARD:(s + 1) * PER_SHARD] + (["gone"] if s == 0 else [])
        extract_shard(videos, shard_ids, frames / f"{s:05d}.h5", {"max_failure_fraction": 0.5, "num_frames": 4,
                                                                  "pool_size": 8}, progress=False)
    assert index_main(["--shards", *[str(frames / f"{s:05d}.h5") for s in range(NUM_SHARDS)],
                       "--out", str(frames / "index.json")]) == 0
    return {"root": root, "ids": ids, "index": frames / "index.json"}


def _legacy_index(corpus, tmp_path) -> Path:
    """Today's index.json form (every id listed in shard_clip_ids), pointing at the same shards."""
    index = json.loads(corpus["index"].read_text())
    ids = corpus["ids"]
    legacy = {k: v for k, v in index.items() if k not in ("ids", "index_uuid", "shard_num_clips")}
    legacy["shards"] = [str(corpus["index"].parent / p) for p in index["shards"]]
    legacy["failures"] = str(corpus["index"].parent / index["failures"])
    legacy["shard_clip_ids"] = [ids[s * PER_SHARD:(s + 1) * PER_SHARD] for s in range(NUM_SHARDS)]
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(legacy))
    return path


def test_index_json_holds_counts_and_the_ids_live_in_arrow(corpus):
    index = json.loads(corpus["index"].read_text())
    assert "shard_clip_ids" not in index and index["ids"] == "index.arrow"
    assert index["shard_num_clips"] == [PER_SHARD] * NUM_SHARDS and index["num_clips"] == len(corpus["ids"])
    table = ClipIdTable(corpus["index"].parent / "index.arrow")
    assert table.ids() == corpus["ids"] and table.uuid == index["index_uuid"]
    assert table.locate("c03") == (1, 1) and table.locate("gone") is None and table.locate("c") is None
    assert table.locate("zzz") is None and table.locate("") is None


def test_arrow_index_lookups_equal_the_dict_index(corpus, tmp_path):
    new, old = FrameIndex(corpus["index"]), FrameIndex(_legacy_index(corpus, tmp_path))
    assert new.ids() == old.ids() == corpus["ids"] and len(new) == len(old)
    for clip_id in corpus["ids"]:
        assert new.shard_of(clip_id) == old.shard_of(clip_id) == corpus["ids"].index(clip_id) // PER_SHARD
        np.testing.assert_array_equal(new.uniform(clip_id), old.uniform(clip_id))
        assert new.meta(clip_id) == old.meta(clip_id)
    assert "gone" not in new and "gone" not in old
    with pytest.raises(KeyError, match="failures"):
        new.pool("gone")
    assert new.failures().clip_id.tolist() == ["gone"]


def _h5_fds() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).endswith(".h5"))


def test_open_shards_stay_within_the_lru_and_reopen_transparently(corpus):
    reference = {c: FrameIndex(corpus["index"]).middle(c) for c in corpus["ids"]}
    index = FrameIndex(corpus["index"], max_open_shards=2)
    before = _h5_fds()
    for _ in range(2):  # second pass: every shard was closed by the LRU and is reopened
        for clip_id in corpus["ids"]:
            np.testing.assert_array_equal(index.middle(clip_id), reference[clip_id])
            assert index.open_shards() <= 2 and _h5_fds() - before <= 2
    assert index.open_shards() == 2
    index.close()
    assert index.open_shards() == 0 and _h5_fds() == before
    with pytest.raises(ValueError, match="max_open_shards"):
        FrameIndex(corpus["index"], max_open_shards=0)


def _child(index, clip_id, queue):
    queue.put((index.open_shards(), index.middle(clip_id).sum().item(), index.open_shards()))


def test_index_survives_fork_and_pickle_without_handles(corpus):
    index = FrameIndex(corpus["index"], max_open_shards=3)
    expected = int(index.middle("c05").sum())
    assert index.open_shards() == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(index, "c05", queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) == (0, expected, 1)  # the parent's handle is not the child's
    clone = pickle.loads(pickle.dumps(index))
    assert clone.open_shards() == 0 and int(clone.middle("c05").sum()) == expected
    assert len(pickle.dumps(index)) < 4096  # the id table travels as its path


# ------------------------------------------------------------------------------------------------ annotations
def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("with_duplicates", [False, True])
def test_lazy_annotations_equal_the_list_version(tmp_path, with_duplicates):
    rows = [{"clip_id": "b", "text": " two "}, {"clip_id": "a", "text": ["x", "y"], "start": 1.5, "sub": [1, 2]},
            {"clip_id": 7, "text": "numeric id"}]
    if with_duplicates:
        rows.append({"clip_id": "b", "text": ["three", "four"], "ignored": True})
    jsonl = _write_jsonl(tmp_path / "ann.jsonl", rows)
    build_annotation_table(jsonl, tmp_path / "ann.arrow")
    for mode in ("sample", "join"):
        table = read_annotations(tmp_path / "ann.arrow", text_mode=mode)
        assert isinstance(table, AnnotationTable)
        assert list(table) == read_annotations(jsonl, text_mode=mode)
        assert len(table) == len(read_annotations(jsonl)) and table[-1] == read_annotations(jsonl, mode)[-1]
        assert list(pickle.loads(pickle.dumps(table))) == list(table)
    with pytest.raises(IndexError):
        table[len(table)]


def test_annotation_table_joins_the_frame_index(corpus, tmp_path):
    ids = corpus["ids"]
    jsonl = _write_jsonl(tmp_path / "train.jsonl", [{"clip_id": c, "text": [f"{c} a", f"{c} b"]}
                                                    for c in ["absent", *ids[::-1], "gone"]])
    index = FrameIndex(corpus["index"])
    info = build_annotation_table(jsonl, tmp_path / "train.arrow", corpus["index"].parent / "index.arrow")
    assert info == {"num_clips": len(ids) + 2, "not_in_index": 2}
    table = read_annotations(tmp_path / "train.arrow")
    assert table.index_uuid == index.uuid
    assert table.shards().tolist() == [-1, *[ids.index(c) // PER_SHARD for c in ids[::-1]], -1]
    lazy = FinetuneDataset(index, table, num_frames=4, image_size=32, train=True, seed=3)
    eager = FinetuneDataset(index, read_annotations(jsonl), num_frames=4, image_size=32, train=True, seed=3)
    assert len(lazy) == len(eager) == len(ids) and lazy.missing == eager.missing == ["absent", "gone"]
    assert lazy.missing_reasons == eager.missing_reasons
    for i in range(len(lazy)):
        a, b = lazy[i], eager[i]
        assert a["clip_id"] == b["clip_id"] and a["text"] == b["text"]
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    assert lazy.item_shards().tolist() == eager.item_shards().tolist() == [ids.index(c) // PER_SHARD
                                                                           for c in ids[::-1]]


def test_caption_table_equals_read_captions(corpus, tmp_path):
    ids = corpus["ids"]
    a = _write_jsonl(tmp_path / "00000.jsonl", [{"clip_id": c, "caption": f" cap {c} "} for c in ids[:5]])
    b = _write_jsonl(tmp_path / "00001.jsonl", [{"clip_id": c, "caption": f"cap {c}" if c != ids[6] else " "}
                                                for c in ids[5:]])
    assert build_caption_table([a, b], tmp_path / "captions.arrow") == {"num_captions": len(ids) - 1, "empty": 1}
    table = read_captions(tmp_path / "captions.arrow")
    assert isinstance(table, CaptionTable) and dict(table) == read_captions([a, b])
    assert ids[6] not in table and table.get(ids[6]) is None and table[ids[0]] == f"cap {ids[0]}"
    with pytest.raises(ValueError, match="captioned in both"):
        build_caption_table([a, a], tmp_path / "dup.arrow")
    # the pre-training dataset over lazy tables equals the list/dict one
    anns = _write_jsonl(tmp_path / "subs.jsonl", [{"clip_id": c, "text": [f"s {c}"]} for c in ids])
    build_annotation_table(anns, tmp_path / "subs.arrow", corpus["index"].parent / "index.arrow")
    index = FrameIndex(corpus["index"])
    with pytest.warns(UserWarning, match="1 of"):
        lazy = PretrainDataset(index, read_annotations(tmp_path / "subs.arrow"), table, 4, 32,
                               caption_fallback="texts")
    with pytest.warns(UserWarning, match="1 of"):
        eager = PretrainDataset(index, read_annotations(anns), read_captions([a, b]), 4, 32,
                                caption_fallback="texts")
    assert lazy.uncaptioned == eager.uncaptioned == [ids[6]]
    assert [lazy[i]["caption"] for i in range(len(ids))] == [eager[i]["caption"] for i in range(len(ids))]


# ------------------------------------------------------------------------------------------------ sampler
def _epoch(n, shards, replicas, epoch=0, **kw):
    out = []
    for rank in range(replicas):
        s = ResumableDistributedSampler(n, num_replicas=replicas, rank=rank, seed=5, shards=shards, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def _switches(order, shards) -> int:
    return int(np.count_nonzero(np.diff(shards[np.asarray(order)])))


def _lru_misses(order, shards, size: int) -> int:
    """Shard opens of a reader with an LRU of ``size`` open shards (FrameIndex's policy)."""
    from collections import OrderedDict

    lru, misses = OrderedDict(), 0
    for shard in shards[np.asarray(order)].tolist():
        if shard in lru:
            lru.move_to_end(shard)
            continue
        misses += 1
        lru[shard] = True
        if len(lru) > size:
            lru.popitem(last=False)
    return misses


def test_shard_sampler_covers_every_index_once_and_groups_reads_by_shard():
    n, per_shard = 4000, 100
    shards = np.repeat(np.arange(n // per_shard), per_shard)[np.random.default_rng(0).permutation(n)]
    for replicas in (1, 4):
        ranks = _epoch(n, shards, replicas, shuffle_mode="shard", shard_buffer=2)
        flat = sorted(i for r in ranks for i in r)
        assert flat == list(range(n))
        glob = _epoch(n, shards, replicas, shuffle_mode="global")
        for local, g in zip(ranks, glob):
            # with an LRU as large as the window, every shard is opened once per epoch; globally ~every read
            assert _lru_misses(local, shards, 2) == n // per_shard
            assert _lru_misses(g, shards, 2) > 0.9 * len(g)
            # and consecutive reads switch shards ~half as often (2 shards interleaved, vs 40)
            assert _switches(local, shards) < 0.6 * _switches(g, shards)
            windows = [set(shards[local[k:k + 2 * per_shard // replicas]]) for k in
                       range(0, len(local), 2 * per_shard // replicas)]
            assert max(len(w) for w in windows) <= 2
    # seeded: same seed and epoch -> same order; another epoch -> another order
    assert _epoch(n, shards, 2, shuffle_mode="shard") == _epoch(n, shards, 2, shuffle_mode="shard")
    assert _epoch(n, shards, 2, epoch=1, shuffle_mode="shard") != _epoch(n, shards, 2, shuffle_mode="shard")


def test_global_mode_is_the_default_order():
    shards = np.arange(50) % 3
    assert _epoch(50, None, 3) == _epoch(50, shards, 3, shuffle_mode="global")
    with pytest.raises(ValueError, match="shards="):
        ResumableDistributedSampler(10, shuffle_mode="shard")
    with pytest.raises(ValueError, match="shuffle_mode"):
        ResumableDistributedSampler(10, shuffle_mode="local")


def test_shard_sampler_resumes_mid_epoch_and_keeps_groups_and_padding():
    n, g = 103, 4  # not a multiple of g nor of the ranks: wrap-around padding
    shards = np.arange(n) // 10
    full = _epoch(n, shards, 3, epoch=2, shuffle_mode="shard", group_size=g)
    assert {i for r in full for i in r} == set(range(n)) and all(len(r) == 35 for r in full)
    merged = [full[k % 3][k // 3] for k in range(105)]  # global order before rank striding
    for k in range(0, n - n % g, g):
        start = merged.index(k)
        assert merged[start:start + g] == list(range(k, k + g))
    sampler = ResumableDistributedSampler(n, num_replicas=3, rank=1, seed=5, shards=shards, shuffle_mode="shard",
                                          group_size=g)
    sampler.set_epoch(2)
    consumed = list(sampler)[:11]
    sampler.advance(11)
    state = sampler.state_dict()
    assert state["shuffle_mode"] == "shard" and state["position"] == 11
    resumed = ResumableDistributedSampler(n, num_replicas=3, rank=1, seed=5, shards=shards,
                                          shuffle_mode="shard", group_size=g)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert consumed + list(resumed) == full[1]
    with pytest.raises(ValueError, match="shuffle_mode"):
        ResumableDistributedSampler(n, num_replicas=3, rank=1, seed=5, group_size=g).load_state_dict(state)
