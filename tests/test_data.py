"""Tests of the input pipeline (``clipvip.data``) on real frame stores built by ``clipvip frames``.

The store fixture writes a few real H.264 MP4s, runs the real ``clipvip.frames.main`` on them and indexes
the shard; nothing is mocked.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipvip.data import (
    CLIP_MEAN,
    CLIP_STD,
    ResumableDistributedSampler,
    TokenizingCollator,
    crop_uint8,
    jitter_indices,
    load_tokenizer,
    nearest_positions,
    normalize_pixels,
    read_annotations,
    read_captions,
    to_device,
    tokenize,
    uniform_indices,
    video_transform,
)


# ------------------------------------------------------------------------------------------ frame indices
def test_uniform_indices_match_linspace():
    assert uniform_indices(100, 4).tolist() == [0, 33, 66, 99]
    assert uniform_indices(250, 12).tolist() == np.linspace(0, 249, 12).astype(int).tolist()
    assert uniform_indices(5, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]  # N < T repeats frames
    assert uniform_indices(7, 1).tolist() == [0]
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


@pytest.mark.parametrize("n, t", [(250, 12), (100, 8), (37, 12), (13, 12)])
def test_jitter_indices_follow_the_official_formula(n, t):
    rng = np.random.default_rng(0)
    interval = int(n / (t - 1))
    starts, ends = [], []
    for _ in range(3000):
        idx = jitter_indices(n, t, rng)
        assert len(idx) == t and idx.dtype.kind == "i"
        assert np.all(np.diff(idx) >= 0)
        assert 0 <= idx[0] <= interval and n - 1 - interval <= idx[-1] <= n - 1
        # the inner indices are exactly linspace(start, end)
        assert idx.tolist() == np.linspace(idx[0], idx[-1], t).astype(int).tolist()
        starts.append(idx[0])
        ends.append(idx[-1])
    # start ~ randint(0, interval + 1), end ~ randint(N - 1 - interval, N): every value, roughly uniformly
    for values, low in ((starts, 0), (ends, n - 1 - interval)):
        counts = np.bincount(np.asarray(values) - low, minlength=interval + 1)
        assert len(counts) == interval + 1 and counts.min() > 0
        expected = 3000 / (interval + 1)
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 5)


def test_jitter_indices_degenerate_cases():
    rng = np.random.default_rng(1)
    ones = [jitter_indices(10, 1, rng)[0] for _ in range(500)]
    assert set(ones) == set(range(10))  # T = 1: any frame
    for n in (1, 2, 3, 5):  # N < T and T = 2 stay inside [0, N-1] and sorted
        for t in (2, 4, 12):
            for _ in range(200):
                idx = jitter_indices(n, t, rng)
                assert len(idx) == t and idx.min() >= 0 and idx.max() <= n - 1
                assert np.all(np.diff(idx) >= 0)
    # the same generator state gives the same draw
    assert jitter_indices(250, 12, np.random.default_rng(7)).tolist() == \
        jitter_indices(250, 12, np.random.default_rng(7)).tolist()


def test_nearest_positions():
    pool = np.array([0, 4, 8, 12, 16])
    assert nearest_positions(pool, [0, 1, 2, 3, 5, 7, 16, 20]).tolist() == [0, 0, 0, 1, 1, 2, 4, 4]
    full = np.arange(50)
    wanted = jitter_indices(50, 12, np.random.default_rng(0))
    assert full[nearest_positions(full, wanted)].tolist() == wanted.tolist()  # exact on a full pool
    with pytest.raises(ValueError):
        nearest_positions(np.array([3, 1]), [1])


# ------------------------------------------------------------------------------------------ transform
def _pil_reference(frames: np.ndarray, size: int) -> np.ndarray:
    """CLIP's torchvision pipeline written with PIL: Resize(size, BICUBIC), CenterCrop, ToTensor, Normalize."""
    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        w, h = img.size
        if min(w, h) != size:
            new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            img = img.resize(new, Image.BICUBIC)
        w, h = img.size
        left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        out.append(((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _smooth_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Natural-image-like content (smooth gradients + blobs), where resampling differences stay small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    frames = []
    for i in range(t):
        chans = [np.sin(6 * xx * rng.uniform(0.5, 2) + i) * np.cos(5 * yy * rng.uniform(0.5, 2)) for _ in range(3)]
        frames.append(np.stack(chans, -1) * 110 + 128 + rng.normal(0, 6, (h, w, 3)))
    return np.clip(frames, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h, w, size", [(256, 340, 224), (340, 256, 224), (224, 298, 224), (96, 64, 64), (50, 70, 64)])
def test_video_transform_matches_pil_reference(h, w, size):
    frames = _smooth_frames(3, h, w)
    ours = video_transform(frames, size)
    assert ours.shape == (3, 3, size, size) and ours.dtype == torch.float32
    ref = _pil_reference(frames, size)
    diff = np.abs(ours.numpy() - ref)
    # PIL rounds to uint8 after resizing (<= 0.5/255/std ~ 0.008); kernels differ slightly at the edges
    assert diff.mean() < 0.006 and diff.max() < 0.03
    if min(h, w) == size:  # crop only: exact up to float rounding
        assert diff.max() < 1e-5
    # torch input gives the same result
    assert torch.equal(video_transform(torch.from_numpy(frames), size), ours)


def test_video_transform_rejects_bad_input():
    with pytest.raises(ValueError):
        video_transform(np.zeros((2, 10, 10, 3), np.float32), 8)
    with pytest.raises(ValueError):
        video_transform(np.zeros((10, 10, 3), np.uint8), 8)


@pytest.mark.parametrize("h, w, size", [(256, 340, 224), (64, 96, 64), (50, 70, 64)])
def test_worker_crop_plus_device_normalisation_is_video_transform(h, w, size):
    frames = _smooth_frames(3, h, w)
    u8 = crop_uint8(frames, size)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, size, size)
    assert torch.equal(video_transform(frames, size, normalize=False), u8)
    assert torch.equal(normalize_pixels(u8), video_transform(frames, size))  # bit-identical: one code path
    # a batch [B,T,3,S,S] normalises per channel like the single clip
    batch = torch.stack([u8, u8.flip(0)])
    assert torch.equal(normalize_pixels(batch)[1], normalize_pixels(u8.flip(0)))
    ref = (u8.permute(0, 2, 3, 1).numpy() / np.float32(255) - CLIP_MEAN) / CLIP_STD
    assert np.abs(normalize_pixels(u8).numpy() - ref.transpose(0, 3, 1, 2)).max() < 1e-5
    assert normalize_pixels(u8, "cpu", torch.bfloat16).dtype == torch.bfloat16


def test_normalize_pixels_refuses_double_normalisation():
    x = video_transform(_smooth_frames(2, 64, 64), 64)
    with pytest.raises(TypeError, match="uint8"):
        normalize_pixels(x)  # already float: would be normalised twice
    with pytest.raises(ValueError):
        normalize_pixels(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))  # channels last


# ------------------------------------------------------------------------------------------ annotations
def _write_lines(path, lines):
    path.write_text("\n".join(ln if isinstance(ln, str) else json.dumps(ln) for ln in lines) + "\n")
    return path


def test_read_annotations_modes(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [
        {"clip_id": "v1", "text": ["a dog runs.", "a dog is running"]},
        "",
        {"clip_id": "v2", "text": "a cat sleeps", "start": 3.0},
        {"clip_id": "v1", "text": "the dog again"},
    ])
    sample = read_annotations(path)
    assert sample == [
        {"clip_id": "v1", "texts": ["a dog runs.", "a dog is running", "the dog again"]},
        {"start": 3.0, "clip_id": "v2", "texts": ["a cat sleeps"]},
    ]
    joined = read_annotations(path, text_mode="join")
    assert joined[0]["texts"] == ["a dog runs. a dog is running", "the dog again"]
    assert joined[1]["texts"] == ["a cat sleeps"]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"text": "x"}, "missing key 'clip_id'"),
    ({"clip_id": "a"}, "missing key 'text'"),
    ({"clip_id": "a", "text": ""}, "empty text"),
    ({"clip_id": "a", "text": []}, "empty text"),
    ({"clip_id": "a", "text": ["ok", "  "]}, "empty text"),
    ({"clip_id": "a", "text": 3}, "must be a string or a list"),
    ({"clip_id": "", "text": "x"}, "'clip_id' must be a non-empty string"),
])
def test_read_annotations_errors_name_file_and_line(tmp_path, line, message):
    path = _write_lines(tmp_path / "bad.jsonl", [{"clip_id": "ok", "text": "fine"}, line])
    with pytest.raises(ValueError, match=message) as info:
        read_annotations(path)
    assert f"{path}:2:" in str(info.value)


def test_read_annotations_rejects_empty_file_and_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="no annotations"):
        read_annotations(_write_lines(tmp_path / "e.jsonl", [""]))
    with pytest.raises(ValueError, match="text_mode"):
        read_annotations(_write_lines(tmp_path / "o.jsonl", [{"clip_id": "a", "text": "x"}]), text_mode="all")


def test_read_captions(tmp_path):
    a = _write_lines(tmp_path / "00000.jsonl", [{"clip_id": "v1", "caption": "a red ball", "model": "m"},
                                                {"clip_id": "v2", "caption": " ", "model": "m"}])
    b = _write_lines(tmp_path / "00001.jsonl", [{"clip_id": "v3", "caption": "a blue box ", "model": "m"}])
    assert read_captions([a, b]) == {"v1": "a red ball", "v3": "a blue box"}
    assert read_captions(str(b)) == {"v3": "a blue box"}
    dup = _write_lines(tmp_path / "00002.jsonl", [{"clip_id": "v1", "caption": "again", "model": "m"}])
    with pytest.raises(ValueError, match="already captioned"):
        read_captions([a, dup])


# ------------------------------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from clipvip.tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_clip_tokenizer().save_pretrained(folder)
    return load_tokenizer(folder)


def test_load_tokenizer_needs_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer"):
        load_tokenizer(tmp_path)


def test_tokenize_pads_and_keeps_eot_after_truncation(tokenizer):
    long = "a man is slicing a red tomato on a wooden board in a small kitchen " * 4
    enc = tokenize(tokenizer, ["a photo of a cat", long], max_len=12)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == torch.long
    # OpenAI CLIP ids for "a photo of a cat"; padding with <|endoftext|> and a zero mask
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert mask[0].tolist() == [1] * 7 + [0] * 5 and ids[0, 7:].tolist() == [49407] * 5
    full = tokenizer(long)["input_ids"]
    assert len(full) > 12
    assert ids[1].tolist() == full[:11] + [49407] and mask[1].all()


def test_collator_stacks_and_tokenizes(tokenizer):
    items = [{"pixel_values": torch.full((2, 3, 4, 4), float(i)), "text": t, "caption": c, "clip_id": f"v{i}",
              "index": i} for i, (t, c) in enumerate([("a dog", "a brown dog"), ("a cat", "a cat on a mat")])]
    batch = TokenizingCollator(tokenizer, max_len=8)(items)
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 4) and batch["pixel_values"][1].eq(1).all()
    assert batch["clip_id"] == ["v0", "v1"] and batch["index"].tolist() == [0, 1]
    assert batch["text"] == ["a dog", "a cat"]
    assert batch["input_ids"].shape == batch["caption_input_ids"].shape == (2, 8)
    assert torch.equal(batch["input_ids"], tokenize(tokenizer, ["a dog", "a cat"], 8)["input_ids"])
    assert batch["caption_attention_mask"].sum(1).tolist() == [5, 7]


# ------------------------------------------------------------------------------------------ sampler
def _consume(sampler, n):
    it = iter(sampler)
    out = [next(it) for _ in range(n)]
    sampler.advance(n)
    return out


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_rank_shards_are_disjoint_and_cover(drop_last):
    n, world = 23, 3
    shards = [list(ResumableDistributedSampler(n, world, r, shuffle=True, seed=5, drop_last=drop_last))
              for r in range(world)]
    sizes = {len(s) for s in shards}
    assert sizes == ({7} if drop_last else {8})
    flat = sum(shards, [])
    if drop_last:
        assert len(set(flat)) == 21  # disjoint, 2 dropped
    else:
        assert set(flat) == set(range(n)) and len(flat) == 24  # all covered, one wrap-around repeat
    # the epoch reshuffles deterministically
    s = ResumableDistributedSampler(n, world, 0, seed=5)
    s.set_epoch(1)
    again = ResumableDistributedSampler(n, world, 0, seed=5)
    again.set_epoch(1)
    assert list(s) == list(again) != shards[0]


def test_sampler_groups_stay_in_one_global_batch():
    """group_size=2 keeps (2k, 2k+1) -- the demo's time-reversed twins -- inside the same global batch."""
    n, world, micro, g = 40, 2, 4, 2
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = ResumableDistributedSampler(n, world, rank, seed=1, group_size=g)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert sorted(sum(shards, [])) == list(range(n))
        for step in range(n // (world * micro)):
            batch = {i for shard in shards for i in shard[step * micro:(step + 1) * micro]}
            assert all(i ^ 1 in batch for i in batch), (epoch, step, sorted(batch))
    plain = ResumableDistributedSampler(n, 1, 0, seed=1)
    grouped = ResumableDistributedSampler(n, 1, 0, seed=1, group_size=g)
    assert list(plain) != list(grouped)
    with pytest.raises(ValueError, match="group_size"):
        ResumableDistributedSampler(n, 1, 0, seed=1).load_state_dict(grouped.state_dict())


def test_sampler_resumes_mid_epoch_with_the_same_order():
    uninterrupted = ResumableDistributedSampler(50, 2, 1, shuffle=True, seed=3)
    reference = {}
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        reference[epoch] = list(uninterrupted)

    first = ResumableDistributedSampler(50, 2, 1, shuffle=True, seed=3)
    first.set_epoch(1)
    consumed = _consume(first, 4) + _consume(first, 4)  # two batches of 4
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 1 and state["position"] == 8

    resumed = ResumableDistributedSampler(50, 2, 1, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer's loop calls this again: it must keep the position
    assert len(resumed) == 25 - 8
    assert consumed + list(resumed) == reference[1]
    resumed.set_epoch(2)
    assert list(resumed) == reference[2] and len(resumed) == 25
    with pytest.raises(ValueError, match="seed"):
        ResumableDistributedSampler(50, 2, 1, seed=4).load_state_dict(state)


# ------------------------------------------------------------------------------------------ real frame store
# Every frame carries its decoded index as a brightness level (LEVEL0 + STEP * i) on a mild gradient, so the
# frames a dataset returns can be traced back to decoded frame indices after H.264 + JPEG.
LEVEL0, STEP, SHORT = 20, 5, 64
CLIPS = {"c40": (40, 72, 96), "c33": (33, 96, 72), "c25": (25, 64, 64)}  # id: (N, H, W)


def _indexed_frames(n: int, h: int, w: int) -> np.ndarray:
    ramp = np.linspace(-6, 6, w)[None, :, None]
    return np.stack([np.clip(LEVEL0 + STEP * i + ramp + np.zeros((h, w, 3)), 0, 255) for i in range(n)]).astype(np.uint8)


def _decoded_index(pixel_values: torch.Tensor) -> list[int]:
    """Frame index of each frame [T,3,S,S] (uint8 item pixels, or normalised floats), from its mean brightness."""
    if pixel_values.dtype == torch.uint8:
        raw = pixel_values.double() / 255
    else:
        raw = pixel_values * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    return [int(round((float(m) * 255 - LEVEL0) / STEP)) for m in raw.mean(dim=(1, 2, 3))]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from clipvip.cli import main as cli
    from clipvip.frames import FrameIndex
    from clipvip.video_io import write_video

    root = tmp_path_factory.mktemp("store")
    videos = root / "videos"
    videos.mkdir()
    for clip_id, (n, h, w) in CLIPS.items():
        write_video(videos / f"{clip_id}.mp4", _indexed_frames(n, h, w), fps=8)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # fails: in the manifest
    (root / "ids.txt").write_text("\n".join([*CLIPS, "broken"]) + "\n")
    shard = root / "00000.h5"
    assert cli(["frames", "--video-dir", str(videos), "--ids", str(root / "ids.txt"), "--out", str(shard),
                "--failures", str(root / "00000.failures.tsv"),
                "--options", json.dumps({"short_side": SHORT, "num_frames": 8, "pool_size": 64,
                                            "max_failure_fraction": 0.5})]) == 0
    assert cli(["frames-index", "--shards", str(shard), "--out", str(root / "index.json")]) == 0
    anns = [{"clip_id": c, "texts": [f"{c} first", f"{c} second", f"{c} third"]} for c in CLIPS]
    anns += [{"clip_id": "broken", "texts": ["never decoded"]}, {"clip_id": "absent", "texts": ["no video"]}]
    return {"index": FrameIndex(root / "index.json"), "anns": anns, "root": root}


def test_store_holds_every_frame_in_its_pool(store):
    index = store["index"]
    assert sorted(index.ids()) == sorted(CLIPS)
    for clip_id, (n, h, w) in CLIPS.items():
        frames, pool_idx = index.pool(clip_id)
        assert index.meta(clip_id)["num_frames"] == n and list(pool_idx) == list(range(n))
        assert min(frames.shape[1:3]) == SHORT and frames.dtype == np.uint8
        assert _decoded_index(video_transform(frames, SHORT)) == list(range(n))


def test_finetune_train_items_use_jittered_pool_frames(store):
    from clipvip.data import FinetuneDataset

    ds = FinetuneDataset(store["index"], store["anns"], num_frames=8, image_size=SHORT, train=True, seed=0)
    assert len(ds) == 3 and ds.missing == ["broken", "absent"]
    for i, record in enumerate(ds.records):
        n = CLIPS[record["clip_id"]][0]
        item = ds[i]
        assert item["pixel_values"].shape == (8, 3, SHORT, SHORT) and item["pixel_values"].dtype == torch.uint8
        assert item["clip_id"] == record["clip_id"] and item["text"] in record["texts"] and item["index"] == i
        used = _decoded_index(item["pixel_values"])
        interval = int(n / 7)
        assert 0 <= used[0] <= interval and n - 1 - interval <= used[-1] <= n - 1
        assert used == np.linspace(used[0], used[-1], 8).astype(int).tolist()
        assert torch.equal(ds[i]["pixel_values"], item["pixel_values"])  # same (seed, epoch, index): same item


def test_train_sampling_is_deterministic_per_seed_and_epoch(store):
    from clipvip.data import FinetuneDataset

    def draws(seed, epochs=range(6)):
        ds = FinetuneDataset(store["index"], store["anns"], 8, SHORT, train=True, seed=seed)
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            out.append([(ds[i]["text"], tuple(_decoded_index(ds[i]["pixel_values"]))) for i in range(len(ds))])
        return out

    a, b = draws(0), draws(0)
    assert a == b
    assert draws(1) != a
    assert len({tuple(epoch) for epoch in a}) > 1  # epochs differ
    texts = {t for epoch in a for t, _ in epoch}
    assert len(texts) > 3  # several captions per clip get sampled
    resumed = draws(0, epochs=[4, 5])  # a resumed run jumps straight to epoch 4
    assert resumed == a[4:]


def test_finetune_eval_items_are_the_store_uniform_frames(store):
    from clipvip.data import FinetuneDataset

    ds = FinetuneDataset(store["index"], store["anns"], num_frames=8, image_size=SHORT, train=False, seed=0)
    for i, record in enumerate(ds.records):
        item = ds[i]
        clip_id = record["clip_id"]
        assert item["text"] == record["texts"][0]
        expected = video_transform(store["index"].uniform(clip_id, 8), SHORT, normalize=False)
        assert item["pixel_values"].dtype == torch.uint8 and torch.equal(item["pixel_values"], expected)
        assert _decoded_index(item["pixel_values"]) == uniform_indices(CLIPS[clip_id][0], 8).tolist()


def test_missing_clips_are_reported_with_reasons(store, caplog):
    from clipvip.data import FinetuneDataset

    with caplog.at_level("WARNING"):
        ds = FinetuneDataset(store["index"], store["anns"], 4, SHORT, train=False)
    assert ds.missing == ["broken", "absent"]
    assert ds.missing_reasons["absent"] == "not in frame store"
    assert ds.missing_reasons["broken"] != "not in frame store"  # the failure manifest's reason
    assert "2 of 5 annotated clips are missing" in caplog.text
    with pytest.raises(ValueError, match="none of the 1 annotated clips"):
        FinetuneDataset(store["index"], store["anns"][-1:], 4, SHORT, train=False)


def test_pretrain_items_and_caption_fallback(store):
    from clipvip.data import PretrainDataset

    anns = store["anns"][:3]
    captions = {"c40": "a caption of c40", "c33": "a caption of c33"}
    with pytest.warns(UserWarning, match="1 of 3 clips use the annotation field 'texts'"):
        ds = PretrainDataset(store["index"], anns, captions, num_frames=6, image_size=SHORT, seed=0,
                             caption_fallback="texts", max_missing_captions=0.5)
    assert ds.uncaptioned == ["c25"]
    for i, record in enumerate(ds.records):
        item = ds[i]
        clip_id, n = record["clip_id"], CLIPS[record["clip_id"]][0]
        assert item["pixel_values"].shape == (6, 3, SHORT, SHORT)
        assert item["pixel_values"].dtype == item["frame_pixel_values"].dtype == torch.uint8
        assert item["frame_pixel_values"].shape == (1, 3, SHORT, SHORT)
        assert torch.equal(item["frame_pixel_values"], crop_uint8(store["index"].middle(clip_id)[None], SHORT))
        assert abs(_decoded_index(item["frame_pixel_values"])[0] - (n - 1) / 2) <= 1
        assert item["text"] in record["texts"]
        assert item["caption"] == captions.get(clip_id) or (clip_id == "c25" and item["caption"] in record["texts"])
    with pytest.warns(UserWarning, match="because no captions were given"):
        PretrainDataset(store["index"], anns, None, 6, SHORT, caption_fallback="texts", max_missing_captions=1.0)


@pytest.mark.parametrize("train", [False, True])
def test_two_workers_give_the_same_batches_as_none(store, tokenizer, train):
    from clipvip.data import FinetuneDataset, build_loader

    def batches(workers):
        ds = FinetuneDataset(store["index"], store["anns"], 4, SHORT, train=train, seed=3)
        sampler = ResumableDistributedSampler(len(ds), shuffle=True, seed=3)
        loader = build_loader(ds, sampler, batch_size=2, num_workers=workers,
                              collate_fn=TokenizingCollator(tokenizer, max_len=16))
        out = []
        for epoch in range(2):  # persistent workers must see the new epoch
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            out += list(loader)
        return out

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert a["clip_id"] == b["clip_id"] and a["text"] == b["text"]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    if train:  # a clip's frames differ between epochs 0 and 1, so the check above covers the epoch hand-over
        by_clip = [{c: p for b in epoch for c, p in zip(b["clip_id"], b["pixel_values"])}
                   for epoch in (serial[:2], serial[2:])]
        assert any(not torch.equal(by_clip[0][c], by_clip[1][c]) for c in by_clip[0])


# ------------------------------------------------------------------------------------------ normalised exactly once
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from clipvip.model import CLIPViPModel
    from clipvip.model.tiny import build_tiny_clip

    folder = build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=SHORT, patch_size=16, hidden_size=32,
                             text_hidden=32, projection_dim=32)
    loaded = CLIPViPModel.from_pretrained(folder, video_encoder="vip", temporal_init_std=0.02)
    return (loaded[0] if isinstance(loaded, tuple) else loaded).eval()


def _reference_features(model, clips: list[np.ndarray]) -> torch.Tensor:
    """Features of ``video_transform(..., normalize=True)`` frames fed straight to the model."""
    with torch.no_grad():
        return model.encode_video(torch.stack([video_transform(f, SHORT) for f in clips]))


def test_evaluation_normalises_exactly_once(store, tiny_model):
    from clipvip.data import FinetuneDataset
    from clipvip.evaluate import encode_videos

    ds = FinetuneDataset(store["index"], store["anns"], 4, SHORT, train=False)
    ours = encode_videos(tiny_model, ds, batch_size=2, device="cpu", progress=False)
    ref = _reference_features(tiny_model, [store["index"].uniform(r["clip_id"], 4) for r in ds.records])
    assert (ours - ref).abs().max() <= 1e-5
    # sensitivity: skipping the mean/std step, or applying it twice, moves the features far more than that
    u8 = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    scale = (1 / torch.tensor(CLIP_STD)).view(3, 1, 1)
    shift = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)).view(3, 1, 1)
    with torch.no_grad():
        missing = tiny_model.encode_video(u8.float() / 255)
        twice = tiny_model.encode_video(normalize_pixels(u8) * scale + shift)
    assert (missing - ref).abs().max() > 1e-2 and (twice - ref).abs().max() > 1e-2


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_normalise_exactly_once(store, tokenizer, tiny_model, workers):
    """Loader batch (uint8, from workers) -> ``to_device`` (the trainer's ``_to_device``) -> model: V and F
    features equal those of ``video_transform`` frames of the same decoded indices; so does the loss."""
    from clipvip.data import PretrainDataset, build_loader
    from clipvip.trainer.step import ContrastiveStep

    anns = store["anns"][:3]
    with pytest.warns(UserWarning):
        ds = PretrainDataset(store["index"], anns, None, num_frames=6, image_size=SHORT, seed=0,
                             caption_fallback="texts", max_missing_captions=1.0)
    loader = build_loader(ds, None, batch_size=3, num_workers=workers, collate_fn=TokenizingCollator(tokenizer, 16))
    (raw,) = list(loader)
    assert raw["pixel_values"].dtype == raw["frame_pixel_values"].dtype == torch.uint8
    batch = to_device(raw, "cpu", torch.float32)
    assert batch["pixel_values"].dtype == torch.float32 and batch["input_ids"].dtype == torch.int64
    index = store["index"]
    clips = [index.frames(c, _decoded_index(raw["pixel_values"][k])) for k, c in enumerate(raw["clip_id"])]
    middles = [index.middle(c)[None] for c in raw["clip_id"]]
    with torch.no_grad():
        v = tiny_model.encode_video(batch["pixel_values"])
        f = tiny_model.encode_video(batch["frame_pixel_values"])
        assert (v - _reference_features(tiny_model, clips)).abs().max() <= 1e-5
        assert (f - _reference_features(tiny_model, middles)).abs().max() <= 1e-5
        step = ContrastiveStep(tiny_model, "vsc_fc")
        ref_batch = dict(batch, pixel_values=torch.stack([video_transform(c, SHORT) for c in clips]),
                         frame_pixel_values=torch.stack([video_transform(m, SHORT) for m in middles]))
        loss, _ = step(batch)
        ref_loss, _ = step(ref_batch)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5
    with pytest.raises(TypeError, match="uint8"):
        to_device(batch, "cpu")  # a batch that is already normalised is refused, not normalised again


def test_normalised_pixels_are_contiguous_whatever_the_crop():
    for h, w in ((64, 64), (64, 96), (80, 64)):  # no crop (a dense channels-last view), crop, resize
        x = video_transform(_smooth_frames(2, h, w), 64)
        assert x.is_contiguous() and x.shape == (2, 3, 64, 64)
