"""VideoCLIP pieces: subtitles, overlapped sampling, retrieval-augmented batches, model, loss, MMPT checkpoint
loader and per-second feature extractors (issues 14 + 15, library level)."""
from __future__ import annotations

import json
import math
import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipvip.data.overlapped import OverlappedSampler, grow_window, video_seconds
from clipvip.data.retrieval_batches import (ClusterBatchSampler, broadcast_clusters, build_index, index_kind,
                                            mix_embeddings, sample_clusters, search_own_lists,
                                            sequential_clusters)
from clipvip.data.subtitles import SubtitleLine, Subtitles, read_subtitles
import clipvip.videoclip_loss  # noqa: F401  (registers the "videoclip" loss; light: no transformers)
from clipvip.registry import FEATURE_EXTRACTORS, LOSSES
from clipvip.stage import UserError


# ================================================================================================ subtitles
def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_subtitles_parse_timed_untimed_and_sort(tmp_path):
    path = _write(tmp_path / "subs.jsonl", [
        {"clip_id": "a", "subtitles": [{"start": 5.0, "end": 6.0, "text": " second "},
                                       {"start": 1, "end": 2.5, "text": "first"}]},
        "",
        {"clip_id": "b", "text": "whole clip"},
        {"clip_id": "c", "text": ["two", "captions"]},
    ])
    subs = read_subtitles(path, durations={"b": 9.5})
    assert [s.clip_id for s in subs] == ["a", "b", "c"]
    assert subs[0].timed and [ln.text for ln in subs[0].lines] == ["first", "second"]  # sorted by time
    assert subs[0].lines[0] == SubtitleLine(1.0, 2.5, "first")
    assert not subs[1].timed and subs[1].lines == [SubtitleLine(0.0, 9.5, "whole clip")]
    assert subs[2].lines[0].start is None and subs[2].lines[0].text == "two captions"
    assert subs[2].resolved(4.0) == [SubtitleLine(0.0, 4.0, "two captions")]


@pytest.mark.parametrize("entry, field, words", [
    ({"start": 3.0, "end": 2.0, "text": "x"}, "subtitles[1].end", "before start"),
    ({"start": -1.0, "end": 2.0, "text": "x"}, "subtitles[1].start", "negative"),
    ({"start": 1.0, "end": 99.0, "text": "x"}, "subtitles[1].end", "past the video's duration"),
    ({"start": 1.0, "end": 2.0, "text": "   "}, "subtitles[1].text", "empty"),
    ({"start": "1", "end": 2.0, "text": "x"}, "subtitles[1].start", "expected a number"),
    ({"start": True, "end": 2.0, "text": "x"}, "subtitles[1].start", "expected a number"),
    ({"start": 1.0, "end": 2.0, "text": 7}, "subtitles[1].text", "expected a string"),
    ({"start": 1.0, "text": "x"}, "subtitles[1].end", "missing"),
    ({"start": float("nan"), "end": 2.0, "text": "x"}, "subtitles[1].start", "not finite"),
    ("oops", "subtitles[1]", "expected an object"),
])
def test_subtitles_bad_entry_names_file_line_and_field(tmp_path, entry, field, words):
    good = {"clip_id": "ok", "subtitles": [{"start": 0.0, "end": 1.0, "text": "fine"}]}
    bad = {"clip_id": "v", "subtitles": [{"start": 0.0, "end": 1.0, "text": "fine"}, entry]}
    path = _write(tmp_path / "s.jsonl", [good, bad])
    with pytest.raises(UserError) as err:
        read_subtitles(path, durations={"v": 10.0})
    message = str(err.value)
    assert f"{path}:2: {field}:" in message and words in message


@pytest.mark.parametrize("line, field", [
    ('{"clip_id": "v", "subtitles": []}', "subtitles"),
    ('{"clip_id": "", "text": "x"}', "clip_id"),
    ('{"clip_id": 3, "text": "x"}', "clip_id"),
    ('{"clip_id": "v"}', "subtitles"),
    ('{"clip_id": "v", "text": ""}', "text"),
    ('{"clip_id": "v", "text": "x", "subtitles": []}', "(line)"),
    ('[1, 2]', "(line)"),
    ('{"clip_id": "v", ', "(line)"),
])
def test_subtitles_bad_record(tmp_path, line, field):
    path = tmp_path / "s.jsonl"
    path.write_text('{"clip_id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=rf"s\.jsonl:2: {re.escape(field)}:"):
        read_subtitles(path)


def test_subtitles_report_every_bad_line_and_duplicates(tmp_path):
    path = _write(tmp_path / "s.jsonl", [
        {"clip_id": "a", "subtitles": [{"start": 2.0, "end": 1.0, "text": "x"}]},
        {"clip_id": "b", "subtitles": [{"start": 0.0, "end": 1.0, "text": ""}]},
        {"clip_id": "c", "text": "fine"},
        {"clip_id": "c", "text": "again"},
    ])
    with pytest.raises(UserError) as err:
        read_subtitles(path)
    message = str(err.value)
    assert "3 bad subtitle line(s)" in message
    assert ":1: subtitles[0].end" in message and ":2: subtitles[0].text" in message
    assert ":4: clip_id: 'c' already given on line 3" in message



# ================================================================================================ sampling
def _tok(text: str) -> list[int]:
    return [len(w) for w in text.split()]  # one token per word, deterministic


def _random_subs(rng, clip_id="v"):
    n = int(rng.integers(1, 40))
    t, lines = float(rng.uniform(0, 5)), []
    for _ in range(n):
        start = t + float(rng.uniform(0, 4))
        end = start + float(rng.uniform(0, 12))
        words = " ".join("w" * int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 15))))
        lines.append(SubtitleLine(round(start, 2), round(end, 2), words))
        t = start
    duration = max(ln.end for ln in lines) + float(rng.uniform(0, 20))
    return Subtitles(clip_id, sorted(lines, key=lambda ln: (ln.start, ln.end))), duration


def test_overlapped_sampler_properties_over_many_draws():
    rng = np.random.default_rng(0)
    sampler = OverlappedSampler(_tok, num_frames=8, fps=2.0, seed=3)
    budgets, durations = set(), set()
    for index in range(1500):
        subs, duration = _random_subs(rng)
        pair = sampler.sample(subs, duration, epoch=1, index=index)
        tokens = [_tok(ln.text) for ln in subs.lines]
        n, seconds = len(subs.lines), video_seconds(duration)
        first, stop = pair.line_start, pair.line_end
        span_tokens = [t for k in range(first, stop) for t in tokens[k]]
        starts, ends = [ln.start for ln in subs.lines], [ln.end for ln in subs.lines]
        # token budget and truncation
        assert 8 <= pair.budget <= 64
        budgets.add(pair.budget)
        assert pair.token_ids == span_tokens[:61]
        assert pair.text == " ".join(ln.text for ln in subs.lines[first:stop])

        def stopped(a, b):
            return sum(len(tokens[k]) for k in range(a, b)) >= pair.budget or ends[b - 1] - starts[a] >= 256

        assert (first == 0 and stop == n) or stopped(first, stop)
        if stop - first > 1:  # one line less (at the end that grew last) had not yet reached a stop condition
            assert not stopped(first + 1, stop) or not stopped(first, stop - 1)
        # clip duration, centre and window
        assert 3 <= pair.duration <= 32
        durations.add(pair.duration)
        ws, we = pair.window
        assert 0 <= ws < we <= seconds
        assert we - ws == min(pair.duration, seconds)
        low, high = math.floor(pair.span[0]), math.ceil(pair.span[1])
        # the official window [c, c) grows end + 1 or start - 1, so c is inside or at its end: ws <= c <= we
        assert pair.centre is not None and ws <= pair.centre <= we
        assert max(0, min(seconds - 1, low)) <= pair.centre <= max(0, min(seconds - 1, high))
        assert ws <= high and we >= min(low, seconds - 1)  # the window meets the span (closed intervals)
        # frames inside the window, sorted
        assert pair.frame_times.shape == (8,)
        assert np.all(np.diff(pair.frame_times) >= 0)
        assert np.all((pair.frame_times >= ws) & (pair.frame_times <= we))
        assert np.array_equal(pair.feature_rows(32), np.arange(ws, min(we, ws + 32)))
    assert min(budgets) == 8 and max(budgets) == 64           # randint(8, 64) is inclusive
    assert min(durations) == 3 and max(durations) == 32


def test_overlapped_sampler_is_seeded_and_modes():
    rng = np.random.default_rng(1)
    subs, duration = _random_subs(rng)
    while len(subs.lines) < 10:
        subs, duration = _random_subs(rng)
    a = OverlappedSampler(_tok, seed=5)
    b = OverlappedSampler(_tok, seed=5)
    for draw in range(5):
        pa, pb = a.sample(subs, duration, 2, 7, draw), b.sample(subs, duration, 2, 7, draw)
        assert (pa.line_start, pa.line_end, pa.window, pa.token_ids) == (pb.line_start, pb.line_end, pb.window,
                                                                          pb.token_ids)
        assert np.array_equal(pa.frame_times, pb.frame_times)
    draws = {(p.line_start, p.line_end, p.window) for p in (a.sample(subs, duration, 2, 7, d) for d in range(20))}
    assert len(draws) > 5
    seconds = video_seconds(duration)
    for draw in range(50):
        p = a.sample(subs, duration, 0, 0, draw, mode="aligned")
        assert p.window == (max(min(math.floor(p.span[0]), seconds), 0), min(math.ceil(p.span[1]), seconds)) \
            or p.window[1] - p.window[0] == 1
        assert np.all((p.frame_times >= p.window[0]) & (p.frame_times <= p.window[1]))
    clip = a.sample(subs, duration, 0, 0, mode="clip")
    assert clip.window == (0, seconds) and (clip.line_start, clip.line_end) == (0, len(subs.lines))
    untimed = Subtitles("u", [SubtitleLine(None, None, "one two three")], timed=False)
    p = a.sample(untimed, 2.5, 0, 0)
    assert p.window == (0, 2) and p.token_ids == [3, 3, 5] and p.duration >= 3   # the video's length caps it


def test_grow_window_forced_at_ends():
    rng = np.random.default_rng(0)
    assert grow_window(10, 4, 0, rng) == (0, 4)        # start at 0: only the end grows
    assert grow_window(10, 4, 9, rng) == (6, 10)       # [9, 9) -> start moves down, end up to 10 once
    assert grow_window(5, 32, 2, rng) == (0, 5)        # capped by the video


def test_overlapped_sampler_with_a_bert_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from clipvip.model.videoclip import build_tiny_bert

    build_tiny_bert(tmp_path / "bert", layers=1)
    tok = AutoTokenizer.from_pretrained(tmp_path / "bert")
    sampler = OverlappedSampler(lambda s: tok(s, add_special_tokens=False)["input_ids"], seed=0)
    subs = Subtitles("v", [SubtitleLine(float(i), i + 1.5, "a red square moves left then up") for i in range(30)])
    pair = sampler.sample(subs, 40.0)
    assert pair.token_ids and tok.unk_token_id not in pair.token_ids and len(pair.token_ids) <= 61


# ================================================================================================ retrieval
def _clustered(num_groups=40, per_group=30, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_groups, dim)) * 4
    labels = np.repeat(np.arange(num_groups), per_group)
    x = centres[labels] + rng.standard_normal((len(labels), dim)) * 0.3
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def _mean_sim(x, groups):
    return float(np.mean([np.mean(x[g] @ x[g].T) for g in groups]))


def test_clusters_group_similar_videos_better_than_random():
    x, labels = _clustered()
    k = 8
    clusters = sample_clusters(x, videos_per_cluster=k, seed=1, epoch=0)
    assert len(clusters) == len(x) // k
    assert all(1 <= len(c) <= k and len(set(c)) == len(c) for c in clusters)
    rng = np.random.default_rng(0)
    random_groups = [rng.choice(len(x), k, replace=False) for _ in range(len(clusters))]
    assert _mean_sim(x, clusters) > _mean_sim(x, random_groups) + 5.0
    purity = np.mean([np.mean(labels[c] == np.bincount(labels[c]).argmax()) for c in clusters])
    assert purity > 0.9
    # seeded: same seed/epoch -> same list; another epoch -> another list
    assert sample_clusters(x, k, seed=1, epoch=0) == clusters
    assert sample_clusters(x, k, seed=1, epoch=1) != clusters


def test_ivf_rule_and_ivf_path():
    assert index_kind(39 * 512 - 1) == "flat" and index_kind(39 * 512) == "ivf"
    x, labels = _clustered(num_groups=16, per_group=50, dim=16)   # 800 >= 39 * 16
    assert index_kind(len(x), nlist=16) == "ivf"
    index = build_index(x, nlist=16)
    assert type(index).__name__ == "IndexIVFFlat" and index.nprobe == 1 and index.ntotal == len(x)
    assert type(build_index(x[:100], nlist=16)).__name__ == "IndexFlatL2"
    queries = np.arange(0, len(x), 7)
    ours = search_own_lists(index, x, queries, 16)        # what sample_clusters uses for IVF, nprobe 1
    _, ref = index.search(x[queries], 16)
    assert np.mean([set(a) == set(b) for a, b in zip(ours, ref)]) > 0.99
    clusters = sample_clusters(x, 8, nlist=16, seed=0)
    purity = np.mean([np.mean(labels[c] == np.bincount(labels[c]).argmax()) for c in clusters])
    assert purity > 0.9


def test_mix_embeddings_is_mean_of_video_and_text():
    v = torch.arange(12.0).view(6, 2)
    t = torch.ones(6, 2)
    out = mix_embeddings(v, t, clips_per_video=3)
    expected = ((v + t) / 2).view(2, 3, 2).mean(1).numpy()
    assert out.dtype == np.float32 and np.allclose(out, expected)
    with pytest.raises(ValueError):
        mix_embeddings(v, t, clips_per_video=4)


def test_batches_are_whole_clusters_and_ranks_share_disjointly():
    x, _ = _clustered(num_groups=20, per_group=20)
    k, world = 8, 2
    lists = [sample_clusters(x, k, seed=4, epoch=2) for _rank in range(world)]  # each rank derives it
    assert lists[0] == lists[1]
    clusters = lists[0]
    samplers = [ClusterBatchSampler(num_replicas=world, rank=r, clusters_per_batch=2, clips_per_video=3)
                for r in range(world)]
    seen = []
    for s in samplers:
        s.set_clusters(clusters, epoch=2)
        batches = list(s)
        assert len(batches) == s.num_batches == len(clusters) // (world * 2)
        for b, batch in enumerate(batches):
            share = s._share()[b * 2:(b + 1) * 2]
            assert batch == [(v, d) for c in share for v in c for d in range(3)]   # whole clusters x draws
        seen.append([tuple(c) for c in s._share()])
    positions = [set(range(r, len(seen[r]) * world, world)) for r in range(world)]
    assert not positions[0] & positions[1]
    usable = (len(clusters) // (world * 2)) * world * 2
    assert sorted(seen[0] + seen[1]) == sorted(tuple(c) for c in clusters[:usable])


def test_cluster_batch_sampler_resume():
    clusters = sequential_clusters(100, 4)
    assert clusters[1] == [4, 5, 6, 7] and len(clusters) == 25
    s = ClusterBatchSampler(num_replicas=2, rank=1, clusters_per_batch=1, clips_per_video=2)
    s.set_clusters(clusters, epoch=5)
    full = list(s)
    s.advance(3)
    state = json.loads(json.dumps(s.state_dict()))   # survives a JSON / torch.save round trip
    resumed = ClusterBatchSampler(num_replicas=2, rank=1, clusters_per_batch=1, clips_per_video=2)
    resumed.load_state_dict(state)
    assert resumed.has_epoch(5) and not resumed.has_epoch(6)
    assert list(resumed) == full[3:] and len(resumed) == len(full) - 3
    with pytest.raises(ValueError):
        ClusterBatchSampler(num_replicas=4, rank=0).load_state_dict(state)


def test_broadcast_clusters_without_distributed():
    assert broadcast_clusters([[1, 2]]) == [[1, 2]]


# ================================================================================================ model
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from clipvip.model.videoclip import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", hidden_size=32, layers=3, heads=2)


@pytest.fixture(scope="module")
def model(tiny_bert):
    from clipvip.model.videoclip import VideoCLIPModel

    torch.manual_seed(0)
    return VideoCLIPModel.from_pretrained(tiny_bert, feature_dim=16, num_video_layers=2, max_video_len=8).eval()


def test_model_from_bert_towers_and_shapes(model, tiny_bert):
    from transformers import BertModel

    bert = BertModel.from_pretrained(tiny_bert)
    assert len(model.text_bert.encoder.layer) == 3 and len(model.video_bert.encoder.layer) == 2
    for key, value in bert.state_dict().items():
        if key.startswith("pooler."):
            continue
        assert torch.equal(model.text_bert.state_dict()[key], value)
        if not key.startswith("encoder.layer.2."):
            assert torch.equal(model.video_bert.state_dict()[key], value)
    assert (model.cls_token_id, model.sep_token_id, model.pad_token_id) == (2, 3, 0)   # from the tokenizer
    inputs = model.video_inputs(torch.randn(2, 5, 16))
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 9]   # [SEP] at max_video_len + 1
    with torch.no_grad():
        v = model.encode_video(torch.randn(4, 6, 16), torch.ones(4, 6, dtype=torch.bool))
        ids, mask = model.text_ids([[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]])
        t = model.encode_text(ids, mask)
    assert v.shape == (4, 32) and t.shape == (4, 32)
    assert ids[1].tolist() == [2, 8, 3, 0, 0, 0] and mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="max_video_len"):
        model.encode_video(torch.randn(1, 9, 16))


def test_padding_does_not_change_pooled_outputs(model):
    torch.manual_seed(1)
    feats = torch.randn(1, 3, 16)
    with torch.no_grad():
        alone = model.encode_video(feats)
        padded = torch.cat([feats, torch.randn(1, 4, 16) * 50], dim=1)    # garbage in the padding
        mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
        batch = model.encode_video(torch.cat([padded, torch.randn(1, 7, 16)]), torch.cat([mask, torch.ones_like(mask)]))
        torch.testing.assert_close(batch[0:1], alone, atol=1e-5, rtol=1e-5)
        ids, am = model.text_ids([[5, 6, 7]])
        ids_pad = torch.cat([ids, torch.full((1, 6), 17)], dim=1)        # non-pad garbage, masked out
        am_pad = torch.cat([am, torch.zeros(1, 6, dtype=am.dtype)], dim=1)
        torch.testing.assert_close(model.encode_text(ids_pad, am_pad), model.encode_text(ids, am), atol=1e-5,
                                   rtol=1e-5)


def test_pooling_is_mean_over_all_but_cls(model):
    with torch.no_grad():
        feats, mask = torch.randn(2, 4, 16), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
        hidden, attention = model.video_hidden(feats, mask)
        pooled = model.encode_video(feats, mask)
        torch.testing.assert_close(pooled[1], hidden[1, [1, 2, 5]].mean(0))   # v1, v2, [SEP]
        ids, am = model.text_ids([[5, 6, 7], [8]])
        h = model.text_bert(input_ids=ids, attention_mask=am).last_hidden_state
        torch.testing.assert_close(model.encode_text(ids, am)[1], h[1, [1, 2]].mean(0))   # text + [SEP]


def test_save_and_load_round_trip(model, tmp_path):
    from clipvip.model.videoclip import VideoCLIPModel

    model.save_pretrained(tmp_path / "vc")
    again = VideoCLIPModel.from_pretrained(tmp_path / "vc").eval()
    feats = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_video(feats), model.encode_video(feats))
    assert again.max_video_len == 8 and again.num_video_layers == 2


# ================================================================================================ loss
def _ce_row(row: torch.Tensor, target: int) -> torch.Tensor:
    return -(row[target] - torch.logsumexp(row, dim=0))


def test_videoclip_loss_closed_form():
    v = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, -2.0, 1.0], [2.0, 0.0, 0.5]], dtype=torch.float64)
    n = 3
    v2t = sum(_ce_row(torch.stack([v[i] @ t[j] for j in range(n)]), i) for i in range(n)) / n
    t2v = sum(_ce_row(torch.stack([t[i] @ v[j] for j in range(n)]), i) for i in range(n)) / n
    total, terms = LOSSES["videoclip"]({"V": v, "S": t}, None)
    torch.testing.assert_close(total, v2t + t2v)
    assert list(terms) == ["L(V,S)"]
    # tau = 1 and no normalisation: scaling the features changes the loss; logit_scale is ignored
    assert not torch.isclose(LOSSES["videoclip"]({"V": 2 * v, "S": t}, None)[0], total)
    torch.testing.assert_close(LOSSES["videoclip"]({"V": v, "T": t}, torch.tensor(5.0))[0], total)
    # first row by hand: logits [v0·t0, v0·t1, v0·t2] = [1, 2, 3]
    assert math.isclose(float(_ce_row(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0)),
                        math.log(math.e + math.e ** 2 + math.e ** 3) - 1.0, rel_tol=1e-12)


LOCAL_ROWS = (3, 2)


def _loss_inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(sum(LOCAL_ROWS), 6, generator=g), torch.randn(sum(LOCAL_ROWS), 6, generator=g)


def _rank_main(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        v, t = _loss_inputs()
        start = sum(LOCAL_ROWS[:rank])
        lv = v[start:start + LOCAL_ROWS[rank]].clone().requires_grad_(True)
        lt = t[start:start + LOCAL_ROWS[rank]].clone().requires_grad_(True)
        total, _ = LOSSES["videoclip"]({"V": lv, "S": lt}, None)
        total.backward()
        clusters = broadcast_clusters([[rank, 7], [8, 9]] if rank == 0 else None)
        torch.save({"total": total.detach(), "gv": lv.grad, "gt": lt.grad, "clusters": clusters},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_loss_equals_single_process_and_broadcast(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    world = len(LOCAL_ROWS)
    torch.multiprocessing.spawn(_rank_main, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    v, t = (x.clone().requires_grad_(True) for x in _loss_inputs())
    total, _ = LOSSES["videoclip"]({"V": v, "S": t}, None)
    total.backward()
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(out["total"], total.detach(), rtol=1e-6, atol=1e-6)
        start = sum(LOCAL_ROWS[:rank])
        rows = slice(start, start + LOCAL_ROWS[rank])
        # gather backward sums the ranks' identical losses: world x the slice (DDP averaging -> exactly it)
        torch.testing.assert_close(out["gv"], world * v.grad[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["gt"], world * t.grad[rows], rtol=1e-5, atol=1e-6)
        assert out["clusters"] == [[0, 7], [8, 9]]   # rank 0's list on every rank


# ================================================================================================ MMPT checkpoint
def _mmpt_state(seed=0, vocab=50, hidden=32, text_layers=3, video_layers=2, d_in=16, positions=64):
    """A random state dict in the released ``checkpoint_best.pt`` layout (transformers-3.4 BERT names)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=positions)
    text = BertModel(BertConfig(num_hidden_layers=text_layers, **cfg))
    video = BertModel(BertConfig(num_hidden_layers=video_layers, **cfg))
    state = {}
    for module, prefix in ((text, "mmmodel.text_encoder."), (video, "mmmodel.video_encoder.bert.")):
        for key, value in module.state_dict().items():
            state[prefix + key] = torch.randn_like(value) * 0.05 if value.is_floating_point() else value
        state[prefix + "embeddings.position_ids"] = torch.arange(positions)[None]   # old transformers' buffer
    for name, shape in (("linear1.weight", (hidden, d_in)), ("linear1.bias", (hidden,)),
                        ("LayerNorm.weight", (hidden,)), ("LayerNorm.bias", (hidden,)),
                        ("linear2.weight", (hidden, hidden)), ("linear2.bias", (hidden,))):
        state["mmmodel.video_encoder.videomlp." + name] = torch.randn(shape) * 0.2 + (1.0 if "LayerNorm.w" in name else 0)
    return state, cfg


def _official_forward(state, cfg, video_layers, text_layers, feats, vmask, caps, cmask, max_video_len=32):
    """MMFusionSeparate's forward written from the official code, on BertModels loaded from the raw weights."""
    from transformers import BertConfig, BertModel

    def sub(prefix):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "position_ids" not in k}

    vbert = BertModel(BertConfig(num_hidden_layers=video_layers, **cfg)).eval()
    vbert.load_state_dict(sub("mmmodel.video_encoder.bert."))
    tbert = BertModel(BertConfig(num_hidden_layers=text_layers, **cfg)).eval()
    tbert.load_state_dict(sub("mmmodel.text_encoder."))
    mlp = sub("mmmodel.video_encoder.videomlp.")
    h = F.linear(feats, mlp["linear1.weight"], mlp["linear1.bias"])
    h = F.layer_norm(F.gelu(h), (h.shape[-1],), mlp["LayerNorm.weight"], mlp["LayerNorm.bias"], eps=1e-5)
    video_tokens = F.linear(h, mlp["linear2.weight"], mlp["linear2.bias"])
    # MMBertEmbeddings: [CLS] video [SEP] from caps[:, :2]; positions 0..T then max_video_len + 1
    word = vbert.embeddings.word_embeddings(caps[:, :2])
    embeds = torch.cat([word[:, :1], video_tokens, word[:, 1:]], dim=1)
    t = feats.shape[1]
    pos = torch.cat([torch.arange(t + 1), torch.arange(max_video_len + 1, max_video_len + 2)])[None].expand(len(caps), -1)
    attn = torch.cat([cmask[:, :1], vmask, cmask[:, 1:2]], dim=1).long()
    out = vbert(inputs_embeds=embeds, attention_mask=attn, position_ids=pos,
                token_type_ids=torch.zeros_like(attn)).last_hidden_state
    w = torch.cat([torch.zeros(len(caps), 1), vmask.float(), torch.ones(len(caps), 1)], dim=1)
    pooled_video = torch.bmm(out.transpose(2, 1), (w / w.sum(1, keepdim=True)).unsqueeze(2)).squeeze(-1)
    ids = torch.cat([caps[:, :1], caps[:, 2:]], dim=1)
    am = torch.cat([cmask[:, :1], cmask[:, 2:]], dim=1).long()
    tout = tbert(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    wt = torch.cat([torch.zeros(len(caps), 1), cmask[:, 2:].float()], dim=1)
    pooled_text = torch.bmm(tout.transpose(2, 1), (wt / wt.sum(1, keepdim=True)).unsqueeze(2)).squeeze(-1)
    return pooled_video, pooled_text


def test_mmpt_checkpoint_loader_matches_official_forward(tmp_path):
    from clipvip.model.videoclip import load_mmpt_checkpoint

    state, cfg = _mmpt_state()
    path = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()},
                "optimizer_history": []}, path)
    state = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}   # fp16 as stored
    model = load_mmpt_checkpoint(path, num_attention_heads=2, cls_token_id=2, sep_token_id=3).eval()
    assert model.num_video_layers == 2 and len(model.text_bert.encoder.layer) == 3 and model.feature_dim == 16
    torch.manual_seed(5)
    feats = torch.randn(2, 6, 16)
    vmask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    # caps in MMPT's text layout: [CLS] [SEP] text [SEP] [PAD]...
    caps = torch.tensor([[2, 3, 10, 11, 12, 3, 0], [2, 3, 20, 3, 0, 0, 0]])
    cmask = caps != 0
    with torch.no_grad():
        ref_v, ref_t = _official_forward(state, cfg, 2, 3, feats, vmask, caps, cmask)
        ours_v = model.encode_video(feats, vmask)
        ids = torch.cat([caps[:, :1], caps[:, 2:]], dim=1)
        ours_t = model.encode_text(ids, (ids != 0).long())
    torch.testing.assert_close(ours_v, ref_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_t, ref_t, atol=1e-5, rtol=1e-5)


def test_convert_videoclip_cli_writes_a_loadable_folder(tmp_path):
    """``clipvip convert-videoclip``: the released layout -> a folder ``VideoCLIPModel.from_pretrained`` and the
    tokenizer load, with the same encodings as the in-memory loader; a bad path is one line, exit 2."""
    from transformers import AutoTokenizer

    from clipvip.cli import main as cli
    from clipvip.model.videoclip import VideoCLIPModel, build_tiny_bert, load_mmpt_checkpoint

    bert = build_tiny_bert(tmp_path / "bert", hidden_size=32, layers=1, heads=2, vocab_size=120)
    tok = AutoTokenizer.from_pretrained(bert)
    state, _ = _mmpt_state(vocab=len(tok))
    torch.save({"model": state}, tmp_path / "checkpoint_best.pt")
    out = tmp_path / "converted"
    assert cli(["convert-videoclip", "--checkpoint", str(tmp_path / "checkpoint_best.pt"), "--tokenizer", str(bert),
                "--out", str(out)]) == 0
    loaded = VideoCLIPModel.from_pretrained(out).eval()
    ref = load_mmpt_checkpoint({"model": state}, num_attention_heads=2, cls_token_id=tok.cls_token_id,
                               sep_token_id=tok.sep_token_id).eval()
    feats, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    ids = tok(["a red square moves left", "open the door"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(feats, mask), ref.encode_video(feats, mask))
        torch.testing.assert_close(loaded.encode_text(ids.input_ids, ids.attention_mask),
                                   ref.encode_text(ids.input_ids, ids.attention_mask))
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()
    assert cli(["convert-videoclip", "--checkpoint", str(tmp_path / "nope.pt"), "--tokenizer", str(bert),
                "--out", str(tmp_path / "x")]) == 2


def test_mmpt_checkpoint_loader_refuses_missing_and_unexpected_keys():
    from clipvip.model.videoclip import load_mmpt_checkpoint

    state, _ = _mmpt_state()
    missing = dict(state)
    del missing["mmmodel.video_encoder.bert.encoder.layer.0.attention.self.query.weight"]
    with pytest.raises(UserError, match=r"missing .*video_bert\.encoder\.layer\.0\.attention\.self\.query\.weight"):
        load_mmpt_checkpoint({"model": missing}, num_attention_heads=2)
    extra = dict(state, **{"mmmodel.mm_head.weight": torch.zeros(2)})
    with pytest.raises(UserError, match=r"unexpected keys .*mmmodel\.mm_head\.weight"):
        load_mmpt_checkpoint({"model": extra}, num_attention_heads=2)
    inner = dict(state, **{"mmmodel.text_encoder.encoder.layer.0.extra.weight": torch.zeros(2)})
    with pytest.raises(UserError, match=r"unexpected text_bert\.encoder\.layer\.0\.extra\.weight"):
        load_mmpt_checkpoint({"model": inner}, num_attention_heads=2)


# ================================================================================================ extractors
def test_feature_extractor_registry():
    assert {"clip", "s3d"} <= set(FEATURE_EXTRACTORS.names())
    assert FEATURE_EXTRACTORS["s3d"].wants_gpu and FEATURE_EXTRACTORS["clip"].wants_gpu


def test_s3d_thirty_frames_per_feature_and_weights(tmp_path):
    from clipvip.features_extractors import S3DG

    torch.set_num_threads(min(2, torch.get_num_threads()))
    ex = FEATURE_EXTRACTORS["s3d"](size=32, batch_size=3)
    assert ex.random_weights and ex.fps == 30.0
    rng = np.random.default_rng(0)
    one = ex.extract(rng.integers(0, 256, (30, 36, 40, 3), dtype=np.uint8))
    assert one.shape == (1, 512) and one.dtype == np.float16
    three = ex.extract(rng.integers(0, 256, (95, 36, 40, 3), dtype=np.uint8))   # trailing 5 frames dropped
    assert three.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(three.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert ex.extract(np.zeros((29, 32, 32, 3), dtype=np.uint8)).shape == (0, 512)
    # the official s3d_howto100m.pth layout: the video net's names + text_module.* (ignored)
    state = {**S3DG().state_dict(), "text_module.word_embd.weight": torch.zeros(3, 2)}
    torch.save(state, tmp_path / "s3d_howto100m.pth")
    loaded = FEATURE_EXTRACTORS["s3d"](weights=tmp_path / "s3d_howto100m.pth", size=32)
    assert not loaded.random_weights
    torch.save({**state, "classifier.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="unexpected.*classifier.weight"):
        FEATURE_EXTRACTORS["s3d"](weights=tmp_path / "bad.pth", size=32)
    with pytest.raises(UserError, match="not found"):
        FEATURE_EXTRACTORS["s3d"](weights=tmp_path / "absent.pth")


def test_clip_extractor_middle_frame_of_each_second(tmp_path):
    from clipvip.features_extractors import middle_frame_positions
    from clipvip.model.tiny import build_tiny_clip

    ts = np.arange(10) / 2.0                                # 2 fps: 0, 0.5, ..., 4.5
    assert middle_frame_positions(ts, 5.0).tolist() == [1, 3, 5, 7, 9]
    assert middle_frame_positions(ts, 3.2).tolist() == [1, 3, 5]
    folder = build_tiny_clip(tmp_path / "clip", image_size=32, patch_size=16, hidden_size=32, projection_dim=24)
    ex = FEATURE_EXTRACTORS["clip"](model_dir=folder, batch_size=2)
    frames = np.random.default_rng(0).integers(0, 256, (10, 40, 48, 3), dtype=np.uint8)
    feats = ex.extract(frames, ts, duration=5.0)
    assert feats.shape == (5, 24) and feats.dtype == np.float16 and ex.dim == 24
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # second 2's feature is frame 5's image feature
    alone = ex.extract(frames[5:6], np.array([0.5]), duration=1.0)
    np.testing.assert_allclose(feats[2].astype(np.float32), alone[0].astype(np.float32), atol=2e-3)


# ================================================================================================ caption sampling
CAPTIONS = ["a red square moves left", "the blue circle moves up", "a green star moves right",
            "the white triangle moves down", "a yellow square moves left, then up"]


def test_subtitles_keep_the_captions_of_a_list_record(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"clip_id": "m", "text": [" a ", "b c"]},
                                         {"clip_id": "s", "text": "one"},
                                         {"clip_id": "t", "subtitles": [{"start": 0, "end": 1, "text": "x"}]}])
    m, s, t = read_subtitles(path, durations={"m": 5.0})
    assert m.captions == ("a", "b c") and m.lines == [SubtitleLine(0.0, 5.0, "a b c")]   # joined line unchanged
    assert m.caption(1).lines == [SubtitleLine(0.0, 5.0, "b c")] and not m.caption(1).timed
    assert s.captions == ("one",) and t.captions == ()
    with pytest.raises(IndexError):
        t.caption(0)
    bad = _write(tmp_path / "bad.jsonl", [{"clip_id": "m", "text": ["fine", "  "]}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: text\[1\]: empty"):
        read_subtitles(bad)


class _DictFeatures:
    """The part of ``FeatureIndex`` the VideoCLIP dataset and evaluation read."""

    def __init__(self, clips: dict):
        self.clips = clips

    def __contains__(self, clip_id) -> bool:
        return clip_id in self.clips

    def features(self, clip_id):
        return self.clips[clip_id]


def _caption_dataset(tiny_bert, tmp_path, text_mode, pair_sampling="clip", seed=0):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from clipvip.trainer.videoclip_task import VideoCLIPDataset

    path = _write(tmp_path / f"train_{text_mode}_{pair_sampling}.jsonl", [
        {"clip_id": "m", "text": CAPTIONS},
        {"clip_id": "t", "subtitles": [{"start": float(i), "end": i + 1.5, "text": CAPTIONS[i]} for i in range(5)]},
    ])
    rng = np.random.default_rng(0)
    feats = _DictFeatures({"m": rng.standard_normal((10, 16)), "t": rng.standard_normal((10, 16))})
    subs = {s.clip_id: s for s in read_subtitles(path, durations={"m": 10.0, "t": 10.0})}
    opts = SimpleNamespace(clips_per_video=3, max_video_len=8, max_text_len=63, pair_sampling=pair_sampling,
                           text_mode=text_mode)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    return VideoCLIPDataset(feats, subs, tok, opts, seed=seed), tok


@pytest.mark.parametrize("pair_sampling", ["clip", "overlapped"])
def test_finetune_item_samples_one_caption_per_epoch_and_draw(tiny_bert, tmp_path, pair_sampling):
    ds, tok = _caption_dataset(tiny_bert, tmp_path, "sample", pair_sampling)
    again, _ = _caption_dataset(tiny_bert, tmp_path, "sample", pair_sampling)
    assert ds.videos == ["m", "t"]
    seen = {}
    for epoch in range(12):
        ds.set_epoch(epoch)
        again.set_epoch(epoch)
        for k in range(3):   # video "m", draws 0..2
            item = ds[k]
            assert item["clip_id"] == "m" and item["text"] in CAPTIONS          # exactly one caption, not joined
            assert item["token_ids"] == tok(item["text"], add_special_tokens=False)["input_ids"][:61]
            assert ds[k]["text"] == item["text"] == again[k]["text"]             # pure function of (epoch, k)
            assert ds.caption_index("m", epoch, 0, k) == CAPTIONS.index(item["text"])
            seen[epoch, k] = item["text"]
    assert len({seen[e, 0] for e in range(12)}) > 1                              # other captions in other epochs
    assert len({seen[e, k] for e in range(12) for k in range(3)}) == len(CAPTIONS)
    other, _ = _caption_dataset(tiny_bert, tmp_path, "sample", pair_sampling, seed=1)
    assert [other.caption_index("m", e, 0, 0) for e in range(12)] != [CAPTIONS.index(seen[e, 0]) for e in range(12)]


@pytest.mark.parametrize("pair_sampling", ["clip", "overlapped"])
def test_join_keeps_the_paragraph_and_timed_subtitles_are_unchanged(tiny_bert, tmp_path, pair_sampling):
    joined, _ = _caption_dataset(tiny_bert, tmp_path, "join", pair_sampling)
    sampled, _ = _caption_dataset(tiny_bert, tmp_path, "sample", pair_sampling)
    for epoch in range(3):
        joined.set_epoch(epoch)
        sampled.set_epoch(epoch)
        for k in range(3):
            assert joined[k]["text"] == " ".join(CAPTIONS) and joined.caption_index("m", epoch, 0, k) is None
        for k in range(3, 6):   # the timed clip: the same spans and windows whatever text_mode says
            a, b = joined[k], sampled[k]
            assert a["text"] == b["text"] and a["token_ids"] == b["token_ids"]
            assert torch.equal(a["features"], b["features"])
            assert sampled.caption_index("t", epoch, 1, k - 3) is None
    if pair_sampling == "clip":
        assert sampled[3]["text"] == " ".join(CAPTIONS)   # all lines of the timed clip


def test_subtitle_annotations_follow_text_mode(tmp_path):
    from clipvip.videoclip_eval import subtitle_annotations

    path = _write(tmp_path / "val.jsonl", [{"clip_id": "m", "text": CAPTIONS[:2]},
                                           {"clip_id": "t", "subtitles": [{"start": 0, "end": 1, "text": "x"},
                                                                          {"start": 1, "end": 2, "text": "y"}]}])
    subs = {s.clip_id: s for s in read_subtitles(path)}
    assert subtitle_annotations(subs, "sample") == [{"clip_id": "m", "texts": CAPTIONS[:2]},
                                                    {"clip_id": "t", "texts": ["x y"]}]
    assert subtitle_annotations(subs, "join")[0] == {"clip_id": "m", "texts": [" ".join(CAPTIONS[:2])]}


# ================================================================================================ evaluation
def _eval_clips(lengths=(5, 12, 3, 9, 8), seed=0):
    rng = np.random.default_rng(seed)
    return {f"v{i}": rng.standard_normal((n, 16)).astype(np.float32) for i, n in enumerate(lengths)}


def _order_reference(model, tok, clips, anns, max_text_len):
    """Each caption's score with its video and with that video's first max_video_len rows reversed, one
    clip at a time (no batching, no padding)."""
    from clipvip.metrics import order_accuracy
    from clipvip.videoclip_eval import text_batch

    true, rev = [], []
    with torch.no_grad():
        for rec in anns:
            f = clips[rec["clip_id"]][: model.max_video_len]
            v = model.encode_video(torch.from_numpy(f)[None]).double()
            vr = model.encode_video(torch.from_numpy(f[::-1].copy())[None]).double()
            for text in rec["texts"]:
                t = model.encode_text(*text_batch(model, tok, [text], max_text_len)).double()
                true.append(float(t @ v.T))
                rev.append(float(t @ vr.T))
    return np.array(true), np.array(rev), order_accuracy(true, rev, tol=1e-6 * max(1.0, np.abs(true).max()))


def test_evaluate_videoclip_order_acc_blind_vs_positional(model, tiny_bert):
    import copy

    from transformers import AutoTokenizer

    from clipvip.videoclip_eval import evaluate_videoclip

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    clips = _eval_clips()
    anns = [{"clip_id": f"v{i}", "texts": [CAPTIONS[i]]} for i in range(5)]
    feats = _DictFeatures(clips)
    # position embeddings make the tower order-sensitive (scaled up: the tiny random BERT's are faint);
    # the value equals the per-clip reference (clips of 3..12 s in batches of 3: each reversed before padding)
    positional = copy.deepcopy(model)
    with torch.no_grad():
        positional.video_bert.embeddings.position_embeddings.weight.mul_(50.0)
    true, rev, reference = _order_reference(positional, tok, clips, anns, 63)
    assert np.all(np.abs(true - rev) > 1e-3 * np.abs(true).max())   # no tie: 5 queries, so the value is not 50
    result = evaluate_videoclip(positional, tok, feats, anns, batch_size=3, order_acc=True)
    assert result["order_acc"] == pytest.approx(reference) and result["order_acc"] != 50.0
    assert "order_acc" not in evaluate_videoclip(positional, tok, feats, anns, batch_size=3)
    # no position embeddings in the video BERT: a permutation-equivariant encoder, mean pooled -> order-blind
    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.video_bert.embeddings.position_embeddings.weight.zero_()
    assert evaluate_videoclip(blind, tok, feats, anns, batch_size=3, order_acc=True)["order_acc"] == 50.0


def test_evaluate_videoclip_honours_max_text_len(model, tiny_bert):
    from transformers import AutoTokenizer

    from clipvip.videoclip_eval import effective_max_text_len, evaluate_videoclip

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    clips = _eval_clips(lengths=(4, 6))
    long_text = " ".join(["a red square moves left"] * 40)   # 200 words
    anns = [{"clip_id": "v0", "texts": [long_text]}, {"clip_id": "v1", "texts": ["open the door"]}]
    widths = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_text(self, ids, mask):
            widths.append((ids.shape[1], mask.sum(1).tolist()))
            return self.inner.encode_text(ids, mask)

    spy = Spy(model)
    short = evaluate_videoclip(spy, tok, _DictFeatures(clips), anns, max_text_len=12)
    assert widths[-1][0] == 12 and widths[-1][1][0] == 12 and short["max_text_len"] == 12
    official = evaluate_videoclip(spy, tok, _DictFeatures(clips), anns)   # default: 63
    assert widths[-1][0] == 63 and official["max_text_len"] == 63
    limit = model.bert_config.max_position_embeddings                      # 128 for the tiny BERT
    capped = evaluate_videoclip(spy, tok, _DictFeatures(clips), anns, max_text_len=10_000)
    assert widths[-1][0] == limit and capped["max_text_len"] == limit
    with pytest.raises(ValueError, match="max_text_len"):
        effective_max_text_len(model, 2)


@pytest.fixture()
def vc_eval_files(model, tiny_bert, tmp_path):
    """A saved VideoCLIP folder, a feature index without clip "absent" (its failure in the shard's manifest)
    and test annotations naming it."""
    import h5py
    from transformers import AutoTokenizer

    from clipvip.data.feature_store import FEATURE_FORMAT, write_index
    from clipvip.data.manifest import write_failures

    folder = model.save_pretrained(tmp_path / "vc", tokenizer=AutoTokenizer.from_pretrained(tiny_bert))
    clips = _eval_clips()
    shard = tmp_path / "features" / "00000.h5"
    shard.parent.mkdir()
    with h5py.File(shard, "w") as fh:
        fh.attrs.update({"format": FEATURE_FORMAT, "dim": 16, "extractor": "synthetic", "complete": True})
        group = fh.create_group("clips")
        for clip_id, f in clips.items():
            group.create_dataset(clip_id, data=f.astype(np.float16)).attrs.update(
                {"duration": float(len(f)), "seconds": len(f), "source": "synthetic"})
    write_failures(tmp_path / "features" / "00000.failures.tsv", [("absent", "corrupt", "moov atom not found")])
    write_index([shard], tmp_path / "features" / "index.json")
    anns = _write(tmp_path / "test.jsonl", [{"clip_id": f"v{i}", "text": CAPTIONS[i]} for i in range(5)]
                  + [{"clip_id": "absent", "text": "never scored"}])
    return {"model": folder, "index": tmp_path / "features" / "index.json", "anns": anns}


def test_clipvip_evaluate_videoclip_refuses_and_reports_missing_clips(vc_eval_files, tmp_path, capsys):
    from clipvip import evaluate

    f = vc_eval_files
    out = tmp_path / "eval" / "test.json"
    with pytest.raises(UserError) as err:   # split test: any missing clip fails, before any model is loaded
        evaluate.run(str(f["model"]), str(f["index"]), str(f["anns"]), str(out), row={"split": "test"})
    message = str(err.value)
    assert "1 of 6 test clips" in message and "absent (corrupt)" in message
    assert str(f["index"].parent / "00000.failures.tsv") in message and "max_missing_fraction" in message
    assert not out.exists()
    opts = {"max_missing_fraction": 0.2, "max_text_len": 20, "device": "cpu", "batch_size": 4}
    code = evaluate.main(["--model", str(f["model"]), "--frames-index", str(f["index"]), "--annotations",
                          str(f["anns"]), "--out", str(out), "--row", json.dumps({"split": "test"}),
                          "--options", json.dumps(opts)])
    assert code == 0
    assert "INCOMPLETE: 1 annotated clips" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["missing_clips"] == 1 and data["missing_ids"] == ["absent"] and data["complete"] is False
    assert data["max_missing_fraction"] == 0.2 and data["max_text_len"] == 20
    assert data["num_videos"] == 5 and data["num_queries"] == 5 and 0 <= data["order_acc"] <= 100
    # val: the default 5 % limit refuses 1 of 6 as well; a complete split reports complete: true
    with pytest.raises(UserError, match="1 of 6 val clips"):
        evaluate.run(str(f["model"]), str(f["index"]), str(f["anns"]), str(out), split="val")
    full = _write(tmp_path / "full.jsonl", [{"clip_id": f"v{i}", "text": CAPTIONS[i]} for i in range(5)])
    data = evaluate.run(str(f["model"]), str(f["index"]), str(full), str(out), options={"order_acc": False,
                                                                                        "device": "cpu"})
    assert data["complete"] is True and data["missing_ids"] == [] and "order_acc" not in data
    assert data["max_text_len"] == 50   # EvaluateOptions' default, not a fixed 63


def test_clipvip_evaluate_videoclip_needs_a_feature_index(vc_eval_files, tmp_path):
    from clipvip import evaluate

    f = vc_eval_files
    bogus = _write(tmp_path / "frames_index.json", [{"shards": ["nope.h5"]}])
    with pytest.raises(UserError, match="feature index"):
        evaluate.run(str(f["model"]), str(bogus), str(f["anns"]), str(tmp_path / "o.json"))


def test_videoclip_task_validation_uses_text_mode_and_max_text_len(model, tiny_bert, tmp_path):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from clipvip.trainer.videoclip_task import VideoCLIPTask

    path = _write(tmp_path / "val.jsonl", [{"clip_id": f"v{i}", "text": CAPTIONS[i:i + 2]} for i in range(4)])
    val = {"features": _DictFeatures(_eval_clips(lengths=(4, 6, 9, 2))),
           "subtitles": {s.clip_id: s for s in read_subtitles(path)}}
    for text_mode, queries in (("sample", 8), ("join", 4)):
        t = SimpleNamespace(model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_bert), val=val, device="cpu",
                            opts=SimpleNamespace(eval_batch_size=3, text_mode=text_mode, max_text_len=16))
        result = VideoCLIPTask().evaluate(t)
        assert result["num_queries"] == queries and result["num_videos"] == 4 and result["max_text_len"] == 16
