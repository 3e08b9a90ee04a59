"""The synthetic demo corpus: ids, determinism, reversed twins, captions that match the rendered motion."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from clipvip.demo_data import (COLOURS, DATASETS, DIRECTIONS, MISHEARD, DemoOptions, annotation_files,
                               annotation_lines, clip_ids, clip_specs, main, render_clip, render_still,
                               msrvtt_captions, didemo_paragraph, reverse_motions, still_alt_text,
                               still_caption, still_short_caption, still_specs)

REPO = Path(__file__).resolve().parents[1]
SMALL = {"seed": 3, "pretrain_clips": 12, "msrvtt_clips": {"train": 6, "val": 2, "test": 2},
         "didemo_clips": {"train": 4, "val": 2, "test": 3}, "workers": 1}
WORD_TO_DIRECTION = {"right": "right", "left": "left", "up": "up", "upward": "up", "down": "down",
                     "downward": "down"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def directions_in(text: str) -> list[str]:
    return [WORD_TO_DIRECTION[w] for w in re.findall(r"\b(right|left|upward|downward|up|down)\b", text)]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), "--options", json.dumps(SMALL)]) == 0
    return out


def test_written_ids_match_clip_ids_and_layout(corpus):
    done = json.loads((corpus / "DONE.json").read_text())
    assert done["clips"] == {"demo_pretrain": {"train": 12}, "demo_msrvtt": {"train": 6, "val": 2, "test": 2},
                             "demo_didemo": {"train": 4, "val": 2, "test": 3}}
    all_videos = sorted(p.stem for p in (corpus / "videos").glob("*.mp4"))
    assert done["num_videos"] == len(all_videos) == 12 + 10 + 9
    for dataset, (prefix, _) in DATASETS.items():
        files = annotation_files(corpus, dataset, SMALL)
        assert list(files) == (["train"] if dataset == "demo_pretrain" else ["train", "val", "test"])
        written = sorted(line["clip_id"] for path in files.values() for line in read_jsonl(path))
        assert written == clip_ids(SMALL, dataset) == [v for v in all_videos if v.startswith(prefix + "_")]
        for path in files.values():
            assert all(set(line) == {"clip_id", "text"} for line in read_jsonl(path))
    assert clip_ids(SMALL, "demo_msrvtt")[:3] == ["msr_00000", "msr_00001", "msr_00002"]
    with pytest.raises(ValueError, match="unknown demo dataset"):
        clip_ids(SMALL, "msrvtt")


def test_same_options_give_identical_corpus(corpus, tmp_path):
    assert main(["--out", str(tmp_path), "--options", json.dumps(SMALL)]) == 0
    for name in sorted(p.name for p in (corpus / "annotations").iterdir()):
        assert (tmp_path / "annotations" / name).read_bytes() == (corpus / "annotations" / name).read_bytes()
    assert (tmp_path / "DONE.json").read_text() == (corpus / "DONE.json").read_text()
    # Lossless H.264 (crf 0): the decoded frames are identical, whatever bytes x264 chose.
    videos = sorted(p.name for p in (corpus / "videos").iterdir())
    assert videos == sorted(p.name for p in (tmp_path / "videos").iterdir())
    for name in videos:
        np.testing.assert_array_equal(decode(tmp_path / "videos" / name), decode(corpus / "videos" / name))
    other = dict(SMALL, seed=4)
    assert main(["--out", str(tmp_path / "other"), "--options", json.dumps(other)]) == 0
    assert (tmp_path / "other/annotations/demo_msrvtt_train.jsonl").read_text() != \
        (corpus / "annotations/demo_msrvtt_train.jsonl").read_text()


def test_twins_are_exactly_reversed_with_their_own_motions(corpus):
    options = DemoOptions.from_dict(SMALL)
    meta = {m["clip_id"]: m for m in read_jsonl(corpus / "annotations/demo_didemo_meta.jsonl")}
    specs = {s.clip_id: s for s in clip_specs(options, "demo_didemo")}
    assert meta["dd_00000"]["twin_of"] == "dd_00001" and meta["dd_00001"]["twin_of"] == "dd_00000"
    assert meta["dd_00008"]["twin_of"] is None  # test split has 3 clips: the last has no partner
    for forward_id in ("dd_00000", "dd_00002", "dd_00004", "dd_00006"):
        twin_id = meta[forward_id]["twin_of"]
        assert meta[twin_id]["split"] == meta[forward_id]["split"]
        assert meta[twin_id]["motions"] == reverse_motions(meta[forward_id]["motions"])
        assert meta[twin_id]["motions"] != meta[forward_id]["motions"]
        forward, twin = render_clip(specs[forward_id], options), render_clip(specs[twin_id], options)
        np.testing.assert_array_equal(twin, forward[::-1])
        decoded_forward, decoded_twin = decode(corpus / f"videos/{forward_id}.mp4"), decode(corpus / f"videos/{twin_id}.mp4")
        assert decoded_forward.shape == (32, 64, 64, 3)
        np.testing.assert_array_equal(decoded_twin, decoded_forward[::-1])  # lossless, so exact
        assert np.abs(decoded_forward.astype(int) - forward).mean() < 2  # only the yuv420p round trip


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_rendered_motion_follows_the_meta_motions(corpus, dataset):
    options = DemoOptions.from_dict(SMALL)
    for spec in clip_specs(options, dataset):
        frames = render_clip(spec, options)
        shape_mask = np.any(frames != np.array(spec.background, np.uint8), axis=-1)
        ys, xs = zip(*(np.argwhere(mask).mean(0) for mask in shape_mask))
        steps = np.diff(np.stack([xs, ys], 1), axis=0)
        moves = []
        for dx, dy in steps:
            direction = next(name for name, (ux, uy) in DIRECTIONS.items()
                             if (ux and np.sign(dx) == ux and abs(dx) > abs(dy)) or
                             (uy and np.sign(dy) == uy and abs(dy) > abs(dx)))
            if not moves or moves[-1] != direction:
                moves.append(direction)
        assert moves == spec.motions, spec.clip_id
        # The shape stays inside the frame and moves every frame (no repeated frames).
        assert shape_mask[:, [0, -1], :].sum() == 0 and shape_mask[:, :, [0, -1]].sum() == 0
        assert all(np.linalg.norm(step) >= 1 for step in steps)


def test_captions_state_colour_shape_and_motions_in_order(corpus):
    meta = {m["clip_id"]: m for ds in DATASETS for m in read_jsonl(corpus / f"annotations/{ds}_meta.jsonl")}
    for line in read_jsonl(corpus / "annotations/demo_msrvtt_train.jsonl"):
        m = meta[line["clip_id"]]
        assert isinstance(line["text"], list) and len(line["text"]) == 5 and len(set(line["text"])) == 5
        for caption in line["text"]:
            assert f"{m['colour']} {m['shape']}" in caption and directions_in(caption) == m["motions"]
    for split in ("val", "test"):
        for line in read_jsonl(corpus / f"annotations/demo_msrvtt_{split}.jsonl"):
            assert isinstance(line["text"], str) and directions_in(line["text"]) == meta[line["clip_id"]]["motions"]
    for split in ("train", "val", "test"):
        for line in read_jsonl(corpus / f"annotations/demo_didemo_{split}.jsonl"):
            m = meta[line["clip_id"]]
            assert len(line["text"]) == len(m["motions"])
            assert line["text"][0].startswith(f"the {m['colour']} {m['shape']} moves ")
            assert [directions_in(s) for s in line["text"]] == [[d] for d in m["motions"]]
    subtitles = read_jsonl(corpus / "annotations/demo_pretrain_train.jsonl")
    assert all(s["text"] == s["text"].lower() and "." not in s["text"] for s in subtitles)


def test_subtitles_behave_like_asr():
    """Partly about the clip, partly unrelated; misheard words and wrong colours/shapes (statistics over 600)."""
    lines, meta = annotation_lines(DemoOptions.from_dict({"pretrain_clips": 600}), "demo_pretrain")
    meta = {m["clip_id"]: m for m in meta}
    subtitles = lines["train"]
    motion_right = [s for s in subtitles if directions_in(s["text"]) == meta[s["clip_id"]]["motions"]]
    assert 0.3 * len(subtitles) <= len(motion_right) <= 0.75 * len(subtitles)  # often, not always, the motion
    right_colour = [s for s in subtitles if meta[s["clip_id"]]["colour"] in s["text"].split()]
    assert 0.2 * len(subtitles) <= len(right_colour) <= 0.6 * len(subtitles)
    other_colours = [s for s in subtitles if any(c in s["text"].split() for c in COLOURS
                                                 if c != meta[s["clip_id"]]["colour"] and c != "white")]
    assert len(other_colours) >= 0.05 * len(subtitles)  # the speaker names the wrong colour
    misheard = {w for words in MISHEARD.values() for w in words if " " not in w}
    assert sum(any(w in misheard for w in s["text"].split()) for s in subtitles) >= 0.15 * len(subtitles)
    assert all(s["text"] == s["text"].lower() and "." not in s["text"] for s in subtitles)


def test_still_images_and_their_captions():
    rng = np.random.default_rng(0)
    specs = still_specs(rng, 50)
    for spec in specs:
        image = render_still(spec, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        coloured = (image == np.array(COLOURS[spec["colour"]], np.uint8)).all(-1)
        assert coloured.sum() > 20  # the shape is drawn, inside the frame
        ys, xs = np.nonzero(coloured)
        # its bounding box's centre is left of / at / right of the frame's centre as the cell says
        for centre, cell in (((xs.min() + xs.max() + 1) / 2, spec["column"]), ((ys.min() + ys.max() + 1) / 2, spec["row"])):
            assert {0: centre < 30, 1: 26 < centre < 38, 2: centre > 34}[cell], (spec, centre)
        caption = still_caption(spec)
        assert caption.startswith(f"a {spec['size']} {spec['colour']} {spec['shape']} ")
        assert still_short_caption(spec) == f"a {spec['colour']} {spec['shape']}"
    assert still_caption({"size": "small", "colour": "red", "shape": "square", "row": 0, "column": 0}) == \
        "a small red square in the top left"


def test_clip_alt_texts_carry_motion_words_at_the_given_share():
    specs = still_specs(np.random.default_rng(1), 400)
    rng = np.random.default_rng(2)
    texts = [still_alt_text(s, rng, 0.5) for s in specs]
    motion = [t for t in texts if re.search(r"\b(moves|moving|slides|goes|heads|travels|going)\b", t)]
    assert 0.4 * len(texts) <= len(motion) <= 0.6 * len(texts)
    for spec, text in zip(specs, texts):  # the still's own content is always named
        assert f"{spec['colour']} {spec['shape']}" in text
    # with share 0 the alt-text is the plain description
    assert all(still_alt_text(s, np.random.default_rng(3), 0.0) in _templates(s) for s in specs[:20])
    # the downstream captions' words all occur in the alt-texts, so the text tower has seen them
    vocabulary = {w for t in texts for w in re.findall(r"[a-z]+", t)}
    downstream = set()
    for spec in clip_specs(DemoOptions.from_dict(SMALL), "demo_msrvtt") + clip_specs(DemoOptions.from_dict(SMALL),
                                                                                     "demo_didemo"):
        for text in msrvtt_captions(spec) + didemo_paragraph(spec, np.random.default_rng(0)):
            downstream |= set(re.findall(r"[a-z]+", text))
    assert downstream - vocabulary <= {"first"}, downstream - vocabulary


def test_arrival_clauses_name_a_motion_that_ends_in_the_stills_cell():
    from clipvip.demo_data import DIRECTIONS, arrival_motions

    rng = np.random.default_rng(4)
    for row in range(3):
        for column in range(3):
            spec = {"row": row, "column": column, "size": "small", "colour": "red", "shape": "square"}
            lists = [arrival_motions(spec, rng) for _ in range(60)]
            if (row, column) == (1, 1):  # no perpendicular motion from the centre ends in the centre
                assert lists == [None] * 60
                assert still_alt_text(spec, rng, 1.0, "arrival") in _templates(spec)
                continue
            assert len({tuple(m) for m in lists}) > 1  # several motions end in each other cell
            for motions in lists:
                assert 1 <= len(motions) <= 3
                assert all((a in ("left", "right")) != (b in ("left", "right")) for a, b in zip(motions, motions[1:]))
                net = np.sum([DIRECTIONS[d] for d in motions], axis=0)
                assert tuple(np.sign(net)) == (column - 1, row - 1), (spec, motions)
    # the clause's words are the motion's, in order ("moves right, then up" for a top-right still)
    spec = {"row": 0, "column": 2, "size": "small", "colour": "red", "shape": "square"}
    text = still_alt_text(spec, np.random.default_rng(5), 1.0, "arrival")
    replay = np.random.default_rng(5)
    replay.random()  # still_alt_text's share draw, then its arrival_motions draw
    motions = arrival_motions(spec, replay)
    words = re.findall(r"\b(left|right|up|down|upward|downward)\b", text.split(" in the top right")[0])
    assert [{"upward": "up", "downward": "down"}.get(w, w) for w in words] == motions, (text, motions)
    with pytest.raises(ValueError, match="motion clause 'sideways'"):
        still_alt_text(spec, np.random.default_rng(0), 1.0, "sideways")


def test_position_pairs_repeat_a_still_in_another_cell():
    from clipvip.tiny_models import _still_batch

    specs, images = _still_batch(np.random.default_rng(6), 16, 64, position_share=0.5)
    assert images.shape == (16, 64, 64, 3) and len(specs) == 16
    for original, moved in zip(specs[:8], specs[8:]):
        assert {k: moved[k] for k in ("colour", "shape", "size", "background")} == \
            {k: original[k] for k in ("colour", "shape", "size", "background")}
        assert (moved["row"], moved["column"]) != (original["row"], original["column"])
    plain, _ = _still_batch(np.random.default_rng(6), 16, 64)
    assert plain == still_specs(np.random.default_rng(6), 16)  # share 0: the plain random batch


def test_shape_pairs_repeat_a_still_with_another_shape_at_the_same_spot():
    from clipvip.tiny_models import _still_batch

    specs, images = _still_batch(np.random.default_rng(6), 16, 64, position_share=0.25, shape_share=0.25)
    assert images.shape == (16, 64, 64, 3) and len(specs) == 16
    for original, moved in zip(specs[:4], specs[8:12]):  # the first 4 of 8 fresh stills move cell
        assert (moved["row"], moved["column"]) != (original["row"], original["column"])
    for original, reshaped, image in zip(specs[4:8], specs[12:], images[12:]):
        assert reshaped["shape"] != original["shape"]
        assert {k: v for k, v in reshaped.items() if k != "shape"} == {k: v for k, v in original.items() if k != "shape"}
        assert not np.array_equal(image, images[specs.index(original)])  # the drawing changes with the shape


def _templates(spec: dict) -> set[str]:
    return {still_caption(spec, _Fixed(i)) for i in range(4)}


class _Fixed:
    """An rng whose choice() always picks item ``i``."""
    def __init__(self, i):
        self.i = i

    def choice(self, items):
        return items[self.i]


def test_bad_options_are_rejected_with_the_key_named(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--options", '{"frames": 3}']) == 2
    err = capsys.readouterr().err
    assert "frames" in err and "unknown option" in err
    assert main(["--out", str(tmp_path), "--options", '{"frame_size": 63}']) == 2
    assert "frame_size" in capsys.readouterr().err
    assert not (tmp_path / "DONE.json").exists()


def test_killed_run_never_looks_complete_and_rerun_recovers(tmp_path):
    big = dict(SMALL, pretrain_clips=2000)
    proc = subprocess.Popen([sys.executable, "-m", "clipvip", "demo-data", "--out", str(tmp_path), "--options",
                             json.dumps(big)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp_dir = tmp_path / f".demo-tmp-{proc.pid}"
    deadline = time.time() + 30
    while not list(tmp_dir.glob("videos/*.mp4")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "demo-data finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "DONE.json").exists() and not (tmp_path / "videos").exists()
    assert main(["--out", str(tmp_path), "--options", json.dumps(SMALL)]) == 0
    assert (tmp_path / "DONE.json").exists() and not tmp_dir.exists()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 31


def test_shapes_differ_in_extent_and_fill_and_an_unknown_shape_is_refused():
    from clipvip.demo_data import SHAPES, shape_mask

    ys, xs = np.mgrid[-16:16, -16:16].astype(np.float32) + 0.5
    extents = {}
    for shape in SHAPES:
        mask = shape_mask(shape, xs, ys, 8.0)
        rows, cols = np.nonzero(mask)
        extents[shape] = (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1, bool(mask[16, 16]))
    assert extents["square"] == (16, 16, True)
    assert extents["bar"] == (20, 8, True) and extents["pillar"] == (8, 20, True)  # lying vs standing
    assert extents["ring"] == (20, 20, False)  # as wide as a bar, hollow in the middle
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        shape_mask("circle", xs, ys, 8.0)


def test_the_demo_config_samples_a_twin_at_exactly_the_reversed_frames():
    # A twin is its partner's frames backwards; the evaluation's floor-uniform frames must be too, or an
    # order-blind encoder sees a different, end-leaning subset of the twin and prefers it (docs/demo.md).
    import yaml

    from clipvip.data.sampling import uniform_indices

    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    clip_frames = config["demo"]["corpus"]["num_frames"]
    for name, dataset in config["demo"]["defaults"]["datasets"].items():
        picked = uniform_indices(clip_frames, dataset["num_frames"])
        assert sorted(clip_frames - 1 - picked) == sorted(picked), name
    assert sorted(31 - uniform_indices(32, 8)) != sorted(uniform_indices(32, 8))  # what 32 frames did
