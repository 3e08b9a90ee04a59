"""clipvip captions / tiny-models: real tiny captioners on a real frame store; resume; failure carry-over."""
import json

import pandas as pd
import pytest

from clipvip.captions import Captioner, _StopForTest, caption_shard
from clipvip.captions import main as captions_main
from clipvip.demo_data import write_corpus
from clipvip.frames import FrameStore, extract_shard
from clipvip.tiny_models import build_tiny_captioner, build_tiny_models

CLIPS = [f"msr_{i:05d}" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    write_corpus(root / "demo", {"frame_size": 32, "num_frames": 8, "pretrain_clips": 2,
                                 "msrvtt_clips": {"test": 6}, "didemo_clips": {"test": 2}, "workers": 1})
    extract_shard(root / "demo" / "videos", CLIPS + ["msr_99999"], root / "frames" / "00000.h5",
                  {"num_frames": 4, "pool_size": 8, "short_side": 32, "max_failure_fraction": 0.5}, progress=False)
    build_tiny_captioner(root / "blip", kind="blip")
    build_tiny_captioner(root / "git", kind="git")
    return root


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _options(setup, kind="blip", **extra):
    return {"model": str(setup / kind), "batch_size": 2, "num_beams": 2, "max_new_tokens": 6, **extra}


def test_full_run_captions_middle_frames_and_carries_failures(setup, tmp_path):
    out = tmp_path / "00000.jsonl"
    stats = caption_shard(setup / "frames" / "00000.h5", out, _options(setup))
    assert stats == {"resumed": 0, "captioned": 6, "failed": 1, "total": 6}
    lines = _read(out)
    assert [line["clip_id"] for line in lines] == CLIPS
    assert all(line["model"] == str(setup / "blip") and line["caption"].strip() for line in lines)
    # the batched caption is what the captioner says about that clip's middle frame alone
    captioner = Captioner(str(setup / "blip"), num_beams=2, max_new_tokens=6)
    assert captioner([FrameStore(setup / "frames" / "00000.h5").middle(CLIPS[3])]) == [lines[3]["caption"]]
    failures = pd.read_csv(tmp_path / "00000.failures.tsv", sep="\t")
    assert failures["clip_id"].tolist() == ["msr_99999"] and failures["reason"].tolist() == ["frames:missing"]
    assert not (tmp_path / "00000.jsonl.partial").exists()


def test_resume_after_kill_redoes_nothing(setup, tmp_path, capsys):
    out = tmp_path / "00000.jsonl"
    partial = tmp_path / "00000.jsonl.partial"
    with pytest.raises(_StopForTest):
        caption_shard(setup / "frames" / "00000.h5", out, _options(setup), _stop_after_batches=2)
    assert not out.exists() and len(_read(partial)) == 4
    first = _read(partial)
    with open(partial, "a") as fh:
        fh.write('{"clip_id": "msr_00004", "capt')  # torn line from a kill mid-write
    capsys.readouterr()
    stats = caption_shard(setup / "frames" / "00000.h5", out, _options(setup))
    assert "resuming: 4 done" in capsys.readouterr().err
    assert stats["resumed"] == 4 and stats["captioned"] == 2  # only the 2 unfinished clips were generated
    lines = _read(out)
    assert [line["clip_id"] for line in lines] == CLIPS  # every clip exactly once
    assert lines[:4] == first
    # identical to an uninterrupted run (deterministic decoding)
    straight = tmp_path / "straight.jsonl"
    caption_shard(setup / "frames" / "00000.h5", straight, _options(setup))
    assert _read(straight) == lines


def test_partial_from_another_model_is_discarded(setup, tmp_path):
    out = tmp_path / "00000.jsonl"
    with pytest.raises(_StopForTest):
        caption_shard(setup / "frames" / "00000.h5", out, _options(setup, "git"), _stop_after_batches=1)
    stats = caption_shard(setup / "frames" / "00000.h5", out, _options(setup, "blip"))
    assert stats["resumed"] == 0 and {line["model"] for line in _read(out)} == {str(setup / "blip")}


def test_git_kind_with_prompt_strips_the_prompt(setup, tmp_path):
    out = tmp_path / "git.jsonl"
    caption_shard(setup / "frames" / "00000.h5", out, _options(setup, "git", prompt="a photo of"))
    plain = tmp_path / "git_plain.jsonl"
    caption_shard(setup / "frames" / "00000.h5", plain, _options(setup, "git"))
    prompted = [line["caption"] for line in _read(out)]
    assert len(prompted) == 6 and all(c and not c.startswith("a photo of") for c in prompted)
    assert prompted != [line["caption"] for line in _read(plain)]


def test_blip_prompt_is_not_echoed(setup):
    captioner = Captioner(str(setup / "blip"), num_beams=1, max_new_tokens=4, prompt="a photo of")
    caption = captioner([FrameStore(setup / "frames" / "00000.h5").middle(CLIPS[0])])[0]
    assert caption and not caption.startswith("a photo of")


def test_cli_ids_list_and_per_clip_errors(setup, tmp_path, monkeypatch):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(["msr_00005", *CLIPS[:5], "msr_99999", "msr_77777"]) + "\n")
    real_middle = FrameStore.middle

    def middle(self, clip_id):  # fault injection: one clip's frame cannot be read
        if clip_id == "msr_00002":
            raise OSError("corrupt JPEG")
        return real_middle(self, clip_id)

    monkeypatch.setattr(FrameStore, "middle", middle)
    out, failures = tmp_path / "c.jsonl", tmp_path / "c.failures.tsv"
    base = ["--frames", str(setup / "frames" / "00000.h5"), "--out", str(out), "--ids", str(ids),
            "--failures", str(failures)]
    # 2 of 7 clips fail here (a corrupt frame, an id in neither store nor manifest): over the default 10 %
    assert captions_main([*base, "--options", json.dumps(_options(setup))]) == 1
    assert not out.exists() and len(pd.read_csv(failures, sep="\t")) == 3
    code = captions_main([*base, "--options", json.dumps(_options(setup, max_failure_fraction=0.5))])
    assert code == 0
    assert [line["clip_id"] for line in _read(out)] == ["msr_00005", "msr_00000", "msr_00001", "msr_00003",
                                                        "msr_00004"]
    table = pd.read_csv(failures, sep="\t").set_index("clip_id")
    assert table.loc["msr_99999", "reason"] == "frames:missing"
    assert table.loc["msr_77777", "reason"] == "not_in_store"
    assert table.loc["msr_00002", "reason"] == "caption_error" and "corrupt JPEG" in table.loc["msr_00002", "detail"]


def test_tiny_models_stage(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPModel

    done = build_tiny_models(tmp_path, {"clip": {"image_size": 32, "hidden_size": 32, "text_hidden": 32},
                                        "captioner": {"kind": "git"}})
    assert json.loads((tmp_path / "DONE.json").read_text()) == json.loads(json.dumps(done))
    assert CLIPModel.from_pretrained(tmp_path / "clip").config.vision_config.image_size == 32
    processor = AutoProcessor.from_pretrained(tmp_path / "captioner")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "captioner")
    tok = processor.tokenizer
    assert model.config.model_type == "git" and (tok.bos_token, tok.eos_token) == ("[CLS]", "[SEP]")
    assert model.config.vocab_size == len(tok) < 512  # the learnt WordPiece vocabulary, not CLIP's 49408


def test_tiny_models_parts_build_alone_with_only_their_options(tmp_path):
    from clipvip.tiny_models import main as tiny_main
    from clipvip.tiny_models import part_options

    options = {"clip": {"image_size": 32, "hidden_size": 32, "text_hidden": 32}, "captioner": {"kind": "git"},
               "train": {"clip_steps": 2, "clip_batch_size": 8, "captioner_steps": 2, "captioner_batch_size": 4,
                         "seed": 3}}
    captioner_only = part_options(options, "captioner")
    assert captioner_only == {"captioner": {"kind": "git"},
                              "train": {"captioner_steps": 2, "captioner_batch_size": 4, "seed": 3}}
    assert tiny_main(["--out", str(tmp_path), "--only", "captioner", "--options", json.dumps(captioner_only)]) == 0
    done = json.loads((tmp_path / "DONE_captioner.json").read_text())
    assert done["captioner"] == str(tmp_path / "captioner") and len(done["pretrain"]["captioner_loss"]) == 2
    assert set(done["pretrain"]["captioner_heldout"]) == {"colour", "shape", "examples"}
    assert not (tmp_path / "clip").exists() and not (tmp_path / "DONE.json").exists()
    clip_only = part_options(options, "clip")
    assert tiny_main(["--out", str(tmp_path), "--only", "clip", "--options", json.dumps(clip_only)]) == 0
    done = json.loads((tmp_path / "DONE_clip.json").read_text())
    assert done["options"]["clip"]["image_size"] == 32 and len(done["pretrain"]["clip_loss"]) == 2


@pytest.mark.parametrize("kind, start", [("blip", "[DEC]"), ("git", "[CLS]")])
def test_captioner_wordpiece_knows_the_renderer_words_and_starts_like_its_family(kind, start):
    from clipvip.demo_data import COLOURS, SHAPES
    from clipvip.tiny_models import captioner_wordpiece

    tok = captioner_wordpiece(kind, 512, 64)
    words = ["a", *COLOURS, *SHAPES, "moves", "then", "left", "top"]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids  # every word is one whole token
    assert tok.decode(ids) == " ".join(words)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (start, "[SEP]", "[PAD]")
    assert tok.convert_tokens_to_ids(start) != tok.unk_token_id
