"""Bad input is loud, counted and never changes a result silently (issue 10).

Each test reproduces one bad input with real components (real MP4s from the demo corpus writer, real tiny
models, real frame stores) and asserts the one-line message, the exit code and, for failing stages, that no
output a later stage would consume is left behind while the reasons survive (log lines, a manifest copy
outside the declared outputs, also through one small Snakemake run).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clipvip.config import ConfigError, validate_config
from clipvip.demo_data import write_corpus
from clipvip.frames import FrameIndex, FrameStore, build_index, extract_shard, read_failures

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CLIPVIP = str(Path(sys.executable).with_name("clipvip"))
TEST_CLIPS = [f"msr_{i:05d}" for i in range(10)]
FRAME_OPTS = {"num_frames": 4, "pool_size": 8, "short_side": 32}


def _one_error_line(err: str, stage: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"clipvip {stage}: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([CLIPVIP, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Demo corpus (10 MSR-VTT test clips, 2 pre-training clips) of real H.264 MP4s."""
    root = tmp_path_factory.mktemp("bad_input")
    write_corpus(root / "demo", {"frame_size": 32, "num_frames": 8, "pretrain_clips": 2,
                                 "msrvtt_clips": {"test": 10}, "didemo_clips": {"test": 2}, "workers": 1})
    return root


@pytest.fixture(scope="module")
def store(corpus):
    """One complete shard of the 10 test clips."""
    out = corpus / "frames" / "00000.h5"
    extract_shard(corpus / "demo" / "videos", TEST_CLIPS, out, FRAME_OPTS, progress=False)
    return out


@pytest.fixture(scope="module")
def captioner(corpus):
    from clipvip.tiny_models import build_tiny_captioner

    build_tiny_captioner(corpus / "blip", kind="blip")
    return corpus / "blip"


@pytest.fixture(scope="module")
def tiny_clip(corpus):
    from clipvip.model.tiny import build_tiny_clip

    build_tiny_clip(corpus / "clip", image_size=32, patch_size=16, hidden_size=32, text_hidden=32, projection_dim=32)
    return corpus / "clip"


# ------------------------------------------------------------------------------------- 1. captions
def _caption_options(captioner, **extra):
    return json.dumps({"model": str(captioner), "batch_size": 4, "num_beams": 1, "max_new_tokens": 4, **extra})


def test_captions_fail_when_every_clip_fails_and_publish_nothing(store, captioner, tmp_path, monkeypatch, capsys):
    """An out-of-memory on every batch: exit 1, no captions JSONL, reasons in the log and in a kept copy."""
    from clipvip.captions import Captioner
    from clipvip.captions import main as captions_main

    def out_of_memory(self, images):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Captioner, "__call__", out_of_memory)
    out, failures, copy_ = tmp_path / "c" / "00000.jsonl", tmp_path / "c" / "00000.failures.tsv", \
        tmp_path / "failures" / "captions" / "ds" / "00000.failures.tsv"
    code = captions_main(["--frames", str(store), "--out", str(out), "--failures", str(failures),
                          "--failures-copy", str(copy_), "--options", _caption_options(captioner)])
    err = capsys.readouterr().err
    assert code == 1
    line = _one_error_line(err, "captions")
    assert "10 of 10 clips could not be captioned" in line and "max_failure_fraction=0.1" in line
    assert str(copy_) in line
    assert not out.exists()  # nothing a later stage (captions_table, pretrain) would consume
    assert "captions: failed: msr_00000: caption_error: RuntimeError: CUDA out of memory" in err
    assert err.count("captions: failed:") == 10 and "more failures" not in err  # 10 = the log's limit
    table = read_failures(copy_)
    assert len(table) == 10 and set(table.reason) == {"caption_error"}
    assert read_failures(failures).equals(table)


def test_captions_within_the_failure_limit_publish(store, captioner, tmp_path, monkeypatch):
    from clipvip.captions import Captioner, caption_shard

    real = Captioner.__call__

    def one_bad_clip(self, images):
        if len(images) == 1 and images[0].mean() == self._bad_mean:
            raise RuntimeError("bad frame")
        if len(images) > 1 and any(im.mean() == self._bad_mean for im in images):
            raise RuntimeError("batch has a bad frame")
        return real(self, images)

    monkeypatch.setattr(Captioner, "__call__", one_bad_clip)
    monkeypatch.setattr(Captioner, "_bad_mean", FrameStore(store).middle(TEST_CLIPS[3]).mean(), raising=False)
    stats = caption_shard(store, tmp_path / "ok.jsonl", json.loads(_caption_options(captioner)))
    assert stats["failed"] == 1 and stats["captioned"] == 9 and (tmp_path / "ok.jsonl").exists()


def test_captions_missing_ids_file_is_one_line(store, captioner, tmp_path):
    proc = _run("captions", "--frames", store, "--out", tmp_path / "x.jsonl", "--ids", tmp_path / "nope.txt",
                "--options", _caption_options(captioner))
    assert proc.returncode == 2
    assert f"--ids: cannot read {tmp_path / 'nope.txt'}: No such file or directory" in _one_error_line(proc.stderr,
                                                                                                       "captions")


def _pretrain_anns(ids):
    return [{"clip_id": c, "texts": [f"subtitle of {c}"]} for c in ids]


def test_pretraining_refuses_missing_captions_instead_of_falling_back(store):
    from clipvip.data import PretrainDataset
    from clipvip.stage import UserError

    anns = _pretrain_anns(TEST_CLIPS)
    with pytest.raises(UserError, match=r"10 of 10 clips have no caption \(no captions were given"):
        PretrainDataset(FrameStore(store), anns, None, 4, 32)
    captions = {c: f"caption {c}" for c in TEST_CLIPS[:8]}
    with pytest.raises(UserError, match=r"2 of 10 clips have no caption \(captions from results/captions/x.arrow; "
                                        r"first: msr_00008, msr_00009\), more than max_missing_captions=0.01"):
        PretrainDataset(FrameStore(store), anns, captions, 4, 32, captions_source="results/captions/x.arrow")
    # the tolerance is the user's to raise; within it the few uncaptioned clips are warned about
    with pytest.warns(UserWarning, match="2 of 10 clips use the annotation field 'texts'"):
        ds = PretrainDataset(FrameStore(store), anns, captions, 4, 32, max_missing_captions=0.2)
    assert ds.uncaptioned == TEST_CLIPS[8:]
    # the subtitle fallback is an explicit opt-in only
    with pytest.warns(UserWarning, match="caption_fallback is set"):
        ds = PretrainDataset(FrameStore(store), anns, None, 4, 32, caption_fallback="texts")
    assert ds[0]["caption"] == "subtitle of msr_00000"
    # a loss without a caption term needs no captions
    PretrainDataset(FrameStore(store), anns, None, 4, 32, needs_captions=False)


def test_train_option_max_missing_captions():
    from clipvip.trainer.options import TrainOptions
    from clipvip.stage import OptionError

    assert TrainOptions.from_dict({}, "pretrain").max_missing_captions == 0.01
    assert TrainOptions.from_dict({"max_missing_captions": 0.5}, "pretrain").max_missing_captions == 0.5
    with pytest.raises(OptionError, match="max_missing_captions: 2.0 is greater than the maximum 1.0"):
        TrainOptions.from_dict({"max_missing_captions": 2.0}, "pretrain")


# ---------------------------------------------------------------------------------------- 2. frames
def _videos_without(corpus, tmp_path, drop) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for video in (corpus / "demo" / "videos").iterdir():
        if video.stem not in drop:
            os.symlink(video, folder / video.name)
    return folder


def test_frames_over_the_limit_keep_the_reasons_outside_the_outputs(corpus, tmp_path):
    videos = _videos_without(corpus, tmp_path, TEST_CLIPS[:4])
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(TEST_CLIPS) + "\n")
    out, copy_ = tmp_path / "frames" / "00000.h5", tmp_path / "failures" / "frames" / "ds" / "00000.failures.tsv"
    proc = _run("frames", "--video-dir", videos, "--ids", ids, "--out", out, "--failures-copy", copy_,
                "--options", json.dumps(FRAME_OPTS))
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "frames")
    assert "4 of 10 videos failed {'missing': 4}" in line and str(copy_) in line
    for clip in TEST_CLIPS[:4]:
        assert f"frames: failed: {clip}: missing: no file {videos / clip}" in proc.stderr
    assert not out.exists() and not list(out.parent.glob("*.tmp-*"))
    assert set(read_failures(copy_).clip_id) == set(TEST_CLIPS[:4])


def test_frames_missing_video_dir_and_ids_file_are_one_line(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\n")
    proc = _run("frames", "--video-dir", tmp_path / "no_videos", "--ids", ids, "--out", tmp_path / "s.h5")
    assert proc.returncode == 2
    assert f"--video-dir {tmp_path / 'no_videos'} does not exist" in _one_error_line(proc.stderr, "frames")
    proc = _run("frames", "--video-dir", tmp_path, "--ids", tmp_path / "nope.txt", "--out", tmp_path / "s.h5")
    assert proc.returncode == 2
    assert "--ids: cannot read" in _one_error_line(proc.stderr, "frames")
    assert not list(tmp_path.glob("s.h5*"))


def test_snakemake_frames_job_failure_keeps_log_and_manifest_copy(corpus, tmp_path):
    """A real (tiny) workflow run: the failed frames job's outputs are deleted, its reasons are not."""
    videos = _videos_without(corpus, tmp_path, TEST_CLIPS[:4])
    ann = tmp_path / "test.jsonl"
    ann.write_text("".join(json.dumps({"clip_id": c, "text": f"clip {c}"}) + "\n" for c in TEST_CLIPS))
    results = tmp_path / "results"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "results": str(results), "demo": {"enabled": False}, "base_model": "openai/clip-vit-base-patch16",
        "frames": {"shard_size": 64, **{k: v for k, v in FRAME_OPTS.items() if k != "num_frames"}},
        "datasets": {"bad": {"video_dir": str(videos), "annotations": {"train": str(ann)}, "num_frames": 4}}}))
    target = results / "frames" / "bad" / "00000.h5"
    proc = subprocess.run([SNAKEMAKE, str(target), "--cores", "1", "--nolock", "--configfile", str(overlay)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not target.exists() and not target.with_name("00000.failures.tsv").exists()  # deleted by Snakemake
    log = (results / "logs" / "frames" / "bad" / "00000.log").read_text()
    assert "frames: failed: msr_00000: missing: no file" in log
    assert "clipvip frames: error: 4 of 10 videos failed {'missing': 4}" in log
    kept = results / "failures" / "frames" / "bad" / "00000.failures.tsv"
    assert str(kept) in log and set(read_failures(kept).clip_id) == set(TEST_CLIPS[:4])


def test_rules_pass_the_failure_copies():
    for rule, stage in (("frames", "frames"), ("captions", "captions")):
        text = (REPO / "workflow" / "rules" / f"{rule}.smk").read_text()
        assert f'failures_copy=f"{{R}}/failures/{stage}/{{{{ds}}}}/{{{{shard}}}}.failures.tsv"' in text
        assert "--failures-copy {params.failures_copy}" in text
    assert "--split {wildcards.split}" in (REPO / "workflow" / "rules" / "evaluate.smk").read_text()


# -------------------------------------------------------------------------------------- 3. evaluate
@pytest.fixture(scope="module")
def partial_index(corpus, tmp_path_factory):
    """A dataset whose frame store lacks 4 of the 10 test clips (their videos are gone: manifest reason)."""
    root = tmp_path_factory.mktemp("partial")
    videos = root / "videos"
    videos.mkdir()
    for video in (corpus / "demo" / "videos").iterdir():
        if video.stem not in TEST_CLIPS[:4]:
            os.symlink(video, videos / video.name)
    extract_shard(videos, TEST_CLIPS, root / "00000.h5", {**FRAME_OPTS, "max_failure_fraction": 0.5}, progress=False)
    build_index([root / "00000.h5"], root / "index.json")
    ann = root / "test.jsonl"
    ann.write_text("".join(json.dumps({"clip_id": c, "text": f"clip {c}"}) + "\n" for c in TEST_CLIPS))
    return root


def _evaluate_args(tiny_clip, index_dir, out, options=None):
    return ["evaluate", "--model", tiny_clip, "--frames-index", index_dir / "index.json",
            "--annotations", index_dir / "test.jsonl", "--out", out, "--split", "test",
            "--row", json.dumps({"method": "m", "dataset": "ds", "split": "test"}),
            "--options", json.dumps({"num_frames": 4, "max_text_len": 16, **(options or {})})]


def test_evaluate_refuses_a_shrunken_test_set(tiny_clip, partial_index, tmp_path):
    out = tmp_path / "test.json"
    proc = _run(*_evaluate_args(tiny_clip, partial_index, out))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr, "evaluate")
    assert "4 of 10 test clips of" in line and "have no frames: msr_00000 (missing), msr_00001 (missing)" in line
    assert f"recorded in {partial_index / 'failures.tsv'}" in line and "max_missing_fraction=0.0" in line
    assert not out.exists()


def test_evaluate_with_a_raised_threshold_says_incomplete_and_tables_mark_it(tiny_clip, partial_index, tmp_path):
    from clipvip.tables import main as tables_main

    out = tmp_path / "eval" / "m" / "ds" / "test.json"
    proc = _run(*_evaluate_args(tiny_clip, partial_index, out, {"max_missing_fraction": 0.5}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INCOMPLETE: 4 annotated clips have no frames" in proc.stderr
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["missing_clips"] == 4 and data["missing_ids"] == TEST_CLIPS[:4]
    assert (data["num_queries"], data["num_videos"]) == (6, 6)
    assert tables_main(["--metrics", str(out), "--out-dir", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "retrieval.md").read_text()
    assert "| queries" in md and "| videos" in md and "| missing" in md and "* incomplete" in md
    assert " *" in md.split("## ds")[1].splitlines()[4]  # the row's metric cells carry the marker
    wide = pd.read_csv(tmp_path / "tables" / "retrieval.csv")
    assert (wide.loc[0, "ds queries"], wide.loc[0, "ds videos"], wide.loc[0, "ds missing"]) == (6, 6, 4)
    assert not wide.loc[0, "ds complete"]
    long = pd.read_csv(tmp_path / "tables" / "retrieval_long.csv")
    assert long.loc[0, "missing_clips"] == 4 and not long.loc[0, "complete"]


def test_evaluate_model_returns_missing_ids(tiny_clip, partial_index):
    from clipvip.data import load_tokenizer, read_annotations
    from clipvip.model import CLIPViPModel
    from clipvip.retrieval import evaluate_model

    result = evaluate_model(CLIPViPModel.from_pretrained(tiny_clip), load_tokenizer(tiny_clip),
                            FrameIndex(partial_index / "index.json"), read_annotations(partial_index / "test.jsonl"),
                            num_frames=4, max_text_len=16)
    assert result["missing_ids"] == TEST_CLIPS[:4] and result["missing_clips"] == 4


# ----------------------------------------------------------------------------- 4. dry-run checks
def _demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _real_config(tmp_path, **datasets) -> dict:
    config = _demo_config()
    config["demo"]["enabled"] = False
    config["base_model"] = "openai/clip-vit-base-patch16"
    config["datasets"] = datasets or {"msrvtt": {"video_dir": str(tmp_path), "annotations": {"train": "t.jsonl"}}}
    return config


@pytest.mark.parametrize("key", ["base_model", "captions.model"])
@pytest.mark.parametrize("value", ["/nonexistent/clip", "./models/clip", "../clip", "{results}/models/clip"])
def test_model_paths_that_do_not_exist_fail_at_parse_time(tmp_path, key, value):
    config = _real_config(tmp_path)
    if key == "base_model":
        config["base_model"] = value
    else:
        config["datasets"]["msrvtt"]["annotations"]["train"] = "t.jsonl"
        config["pretrain"] = {"dataset": "msrvtt"}
        config["finetune"] = {"datasets": []}
        config["datasets"]["other"] = {"video_dir": str(tmp_path), "annotations": {"train": "o.jsonl"}}
        config["captions"] = {"model": value}
    with pytest.raises(ConfigError, match=rf"config error at {key}: '{value.replace('{results}', 'results')}' "
                                          r"looks like a folder but does not exist"):
        validate_config(config, SCHEMA)


def test_model_checks_pass_hub_names_existing_folders_and_demo_models(tmp_path):
    validate_config(_real_config(tmp_path), SCHEMA)  # hub name
    folder = tmp_path / "clip"
    folder.mkdir()
    config = _real_config(tmp_path)
    config["base_model"] = str(folder)
    with pytest.raises(ConfigError, match="has no config.json: not a saved model"):
        validate_config(config, SCHEMA)
    (folder / "config.json").write_text("{}")
    validate_config(copy.deepcopy(config), SCHEMA)
    config["base_model"] = "~/clip"
    with pytest.raises(ConfigError, match="'~' is not expanded inside jobs"):
        validate_config(config, SCHEMA)
    validate_config(_demo_config(), SCHEMA)  # the demo's models and videos are built by its rules


def test_missing_video_dir_fails_at_parse_time(tmp_path):
    config = _real_config(tmp_path, msrvtt={"video_dir": str(tmp_path / "gone"), "annotations": {"train": "t.jsonl"}})
    with pytest.raises(ConfigError, match=rf"config error at datasets.msrvtt.video_dir: '{tmp_path}/gone' does "
                                          r"not exist"):
        validate_config(config, SCHEMA)


def test_dataset_name_the_wildcards_reject_says_what_is_allowed(tmp_path):
    config = _real_config(tmp_path, **{"msr-vtt": {"video_dir": str(tmp_path), "annotations": {"train": "t.jsonl"}}})
    with pytest.raises(ConfigError, match=r"config error at datasets: 'msr-vtt' does not match '\^\[A-Za-z0-9_\.\]\+\$'"):
        validate_config(config, SCHEMA)


def test_dry_run_stops_on_a_model_path_that_does_not_exist(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results": str(tmp_path / "results"), "base_model": "/no/such/clip"}))
    proc = subprocess.run([SNAKEMAKE, "-n", "--nolock", "--configfile", str(overlay)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "config error at base_model: '/no/such/clip' looks like a folder but does not exist" in \
        proc.stdout + proc.stderr


@pytest.mark.parametrize("line, message", [
    ({"clip_id": "a", "text": ""}, r"empty text"),
    ({"clip_id": "a", "text": ["ok", "  "]}, r"empty text"),
    ({"clip_id": "a", "text": []}, r"'text' is an empty list"),
    ({"clip_id": "a", "text": 5}, r"'text' must be a string or a list of strings, got int 5"),
    ({"clip_id": "a", "text": ["ok", None]}, r"got NoneType None"),
    ({"clip_id": None, "text": "t"}, r"'clip_id' must be a non-empty string, got NoneType None"),
    ({"clip_id": 1.5, "text": "t"}, r"'clip_id' must be a non-empty string, got float"),
    ({"clip_id": ["a"], "text": "t"}, r"'clip_id' must be a non-empty string, got list"),
    ({"clip_id": "a\nb", "text": "t"}, r"contains a line break"),
    ({"clip_id": " a", "text": "t"}, r"leading or trailing whitespace"),
])
def test_bad_annotation_lines_name_file_and_line(tmp_path, line, message):
    from clipvip.data import read_annotations

    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"clip_id": "ok", "text": "fine"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: .*{message}"):
        read_annotations(path)


@pytest.mark.parametrize("clip_id, message", [("a\nb", "contains a line break"),
                                              ("a ", "leading or trailing whitespace"),
                                              (None, "must be a non-empty string")])
def test_split_ids_refuses_ids_that_would_vanish(tmp_path, clip_id, message):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"clip_id": "ok", "text": "t"}) + "\n" + json.dumps({"clip_id": clip_id, "text": "t"})
                    + "\n")
    proc = _run("split-ids", "--ids-from", path, "--shard-size", 10, "--out-dir", tmp_path / "ids")
    assert proc.returncode == 2  # bad input: exit 2
    assert f"{path}:2: 'clip_id'" in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "ids").exists()


def test_split_ids_warns_about_train_test_overlap(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"clip_id": c, "text": "t"}) + "\n" for c in ["a", "b", "c", "c"]))
    test.write_text("".join(json.dumps({"clip_id": c, "text": "t"}) + "\n" for c in ["c", "d", "b", "c"]))
    proc = _run("split-ids", "--ids-from", train, test, "--shard-size", 10, "--out-dir", tmp_path / "ids")
    assert proc.returncode == 0
    assert f"clipvip split-ids: warning: 2 clip ids are in both {train} and {test} (first: c, b)" in proc.stderr
    assert (tmp_path / "ids" / "00000.txt").read_text() == "a\nb\nc\nd\n"


# --------------------------------------------------------------------------------- 5. opaque messages
def test_convert_official_on_a_non_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(b"this is not a checkpoint\n" * 10)
    proc = _run("convert-official", "--checkpoint", bogus, "--out", tmp_path / "out")
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr, "convert-official")
    assert f"{bogus} is not a PyTorch checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_model_folder_without_config_json(tmp_path):
    from clipvip.model import CLIPViPModel
    from clipvip.stage import UserError

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match=rf"model folder {folder} has no config.json"):
        CLIPViPModel.from_pretrained(folder)
    with pytest.raises(UserError, match=r"model folder /no/such/model does not exist"):
        CLIPViPModel.from_pretrained("/no/such/model")


def test_evaluate_on_a_model_folder_without_config_json(partial_index, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    proc = _run(*_evaluate_args(folder, partial_index, tmp_path / "o.json", {"max_missing_fraction": 0.5}))
    assert proc.returncode == 2
    assert f"model folder {folder} has no config.json" in _one_error_line(proc.stderr, "evaluate")


def test_disk_full_while_writing_the_manifest_is_one_line_and_leaves_no_temp_files(corpus, tmp_path, capsys):
    """A real ENOSPC: the manifest's temp file is /dev/full (the frames stage writes it with plain open())."""
    from clipvip.frames import main as frames_main

    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(TEST_CLIPS[:2]) + "\n")
    out = tmp_path / "shard" / "00000.h5"
    manifest = out.with_name("00000.failures.tsv")
    out.parent.mkdir()
    os.symlink("/dev/full", manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}"))
    code = frames_main(["--video-dir", str(corpus / "demo" / "videos"), "--ids", str(ids), "--out", str(out),
                        "--options", json.dumps(FRAME_OPTS)])
    err = capsys.readouterr().err
    assert code == 1
    assert _one_error_line(err, "frames") == f"clipvip frames: error: no space left on device writing {manifest}"
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no store, no manifest, no temp file


def test_disk_full_while_publishing_evaluation_is_one_line(tiny_clip, partial_index, tmp_path, capsys):
    from clipvip.evaluate import main as evaluate_main

    out = tmp_path / "o.json"
    os.symlink("/dev/full", tmp_path / f".o.json.tmp-{os.getpid()}")
    args = [str(a) for a in _evaluate_args(tiny_clip, partial_index, out, {"max_missing_fraction": 0.5})[1:]]
    code = evaluate_main(args)
    err = capsys.readouterr().err
    assert code == 1 and "clipvip evaluate: error: no space left on device" in _one_error_line(err, "evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_overwritten_store_bytes_name_the_file_and_clip(store, tmp_path):
    from clipvip.stage import UserError

    broken = tmp_path / "00000.h5"
    shutil.copy(store, broken)
    with FrameStore(broken) as reader:
        offset = reader._clip(TEST_CLIPS[5]).id.get_offset()
    data = bytearray(broken.read_bytes())
    if offset is None:  # vlen data lives on the global heap: overwrite the second half of the file instead
        offset = len(data) // 2
    data[offset:offset + 4096] = b"\xff" * min(4096, len(data) - offset)
    broken.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        with FrameStore(broken) as reader:
            for clip in TEST_CLIPS:
                reader.uniform(clip)
    message = str(info.value)
    assert str(broken) in message and "msr_0000" in message
