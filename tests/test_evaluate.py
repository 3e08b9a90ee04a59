"""evaluate_model / clipvip evaluate on a tiny real CLIP and a real (tiny) frame store."""
import json

import numpy as np
import pytest
import torch

from clipvip.data import load_tokenizer, read_annotations, tokenize, video_transform
from clipvip.demo_data import write_corpus
from clipvip.retrieval import evaluate_model
from clipvip.evaluate import main as evaluate_main
from clipvip.frames import FrameIndex, build_index, extract_shard
from clipvip.metrics import all_metrics, order_accuracy
from clipvip.model import CLIPViPModel
from clipvip.model.tiny import build_tiny_clip

NUM_FRAMES = 4
CLIPS = [f"msr_{i:05d}" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_corpus(root / "demo", {"frame_size": 32, "num_frames": 8, "pretrain_clips": 2,
                                 "msrvtt_clips": {"test": 6}, "didemo_clips": {"test": 2}, "workers": 1})
    # msr_99999 has no video: the frames stage records it in the failure manifest
    extract_shard(root / "demo" / "videos", CLIPS + ["msr_99999"], root / "frames" / "00000.h5",
                  {"num_frames": NUM_FRAMES, "pool_size": 8, "short_side": 32, "max_failure_fraction": 0.5},
                  progress=False)
    build_index([root / "frames" / "00000.h5"], root / "frames" / "index.json")
    build_tiny_clip(root / "clip", image_size=32, patch_size=16, hidden_size=32, text_hidden=32, projection_dim=32)
    # multi-caption annotations: 2 captions for even clips, 1 for odd, plus the undecodable clip
    ann = root / "multi.jsonl"
    lines = [{"clip_id": c, "text": [f"a clip number {i}", f"shape moving {i}"] if i % 2 == 0 else f"clip {i}"}
             for i, c in enumerate(CLIPS)] + [{"clip_id": "msr_99999", "text": "never decoded"}]
    ann.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def _model(root, **overrides):
    return CLIPViPModel.from_pretrained(root / "clip", **overrides)


def test_evaluate_model_matches_hand_encoding(setup):
    model = _model(setup, video_encoder="vip", temporal_init_std=0.02)
    tok = load_tokenizer(setup / "clip")
    index = FrameIndex(setup / "frames" / "index.json")
    anns = read_annotations(setup / "multi.jsonl")
    model.train()
    result = evaluate_model(model, tok, index, anns, num_frames=NUM_FRAMES, max_text_len=16, batch_size=4)
    assert model.training  # mode restored
    assert set(result) == {"t2v", "v2t", "t2v_dsl", "v2t_dsl", "num_queries", "num_videos", "missing_clips",
                           "missing_ids"}  # order_acc only when asked (clipvip evaluate asks by default)
    assert (result["num_queries"], result["num_videos"], result["missing_clips"]) == (9, 6, 1)
    assert result["missing_ids"] == ["msr_99999"]
    for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        assert set(result[key]) == {"R1", "R5", "R10", "MdR", "MnR"}

    # by hand: one clip / one text at a time, eval mode
    model.eval()
    with torch.no_grad():
        videos = torch.cat([model.encode_video(video_transform(index.uniform(c, NUM_FRAMES), 32)[None]) for c in CLIPS])
        texts, owner = [], []
        for column, record in enumerate(a for a in anns if a["clip_id"] in CLIPS):
            texts += record["texts"]
            owner += [column] * len(record["texts"])
        feats = torch.cat([model.encode_text(**tokenize(tok, [t], 16)) for t in texts])
    sim = (feats.double() @ videos.double().T).numpy()
    expected = all_metrics(sim, owner)
    assert result["t2v"]["R1"] == expected["t2v"]["R1"]
    for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        assert result[key] == pytest.approx(expected[key])

    # order accuracy by hand: each text's score with its video against the same frames reversed
    with torch.no_grad():
        backwards = torch.cat([model.encode_video(video_transform(index.uniform(c, NUM_FRAMES), 32)[None].flip(1))
                               for c in CLIPS])
    videos_n = torch.nn.functional.normalize(videos.double(), dim=-1)
    back_n = torch.nn.functional.normalize(backwards.double(), dim=-1)
    feats_n = torch.nn.functional.normalize(feats.double(), dim=-1)
    true = (feats_n * videos_n[owner]).sum(-1).numpy()
    rev = (feats_n * back_n[owner]).sum(-1).numpy()
    with_order = evaluate_model(model, tok, index, anns, num_frames=NUM_FRAMES, max_text_len=16, batch_size=4,
                                order_acc=True)
    assert with_order["order_acc"] == pytest.approx(order_accuracy(true, rev))
    assert with_order["t2v"] == result["t2v"]
    assert not np.allclose(true, rev)  # std-0.02 temporal embedding: ViP sees the order


def test_order_blind_encoders_score_exactly_half(setup):
    # MeanPool averages frames (order-blind); ViP with the paper's zero-init temporal embedding is order-blind
    # too until trained: both must give exactly 50 (every pair of scores ties)
    tok, index = load_tokenizer(setup / "clip"), FrameIndex(setup / "frames" / "index.json")
    anns = read_annotations(setup / "multi.jsonl")
    for overrides in ({"video_encoder": "meanpool"}, {"video_encoder": "vip"}):
        result = evaluate_model(_model(setup, **overrides), tok, index, anns, num_frames=NUM_FRAMES,
                                max_text_len=16, order_acc=True)
        assert result["order_acc"] == 50.0, overrides


def test_evaluate_join_mode_and_without_dsl(setup):
    model = _model(setup, video_encoder="meanpool")
    anns = read_annotations(setup / "multi.jsonl", text_mode="join")
    result = evaluate_model(model, load_tokenizer(setup / "clip"), FrameIndex(setup / "frames" / "index.json"),
                            anns, num_frames=NUM_FRAMES, max_text_len=16, dsl=False)
    assert result["num_queries"] == 6 and "t2v_dsl" not in result


def test_identical_text_features_tie_as_the_tie_rule_says(setup):
    # every text identical -> every caption ties for every video query
    model = _model(setup, video_encoder="meanpool")
    anns = [{"clip_id": c, "texts": ["the same words"]} for c in CLIPS]
    index = FrameIndex(setup / "frames" / "index.json")
    result = evaluate_model(model, load_tokenizer(setup / "clip"), index, anns, num_frames=NUM_FRAMES,
                            max_text_len=16)
    assert result["v2t"]["R1"] == pytest.approx(100 / 6) and result["v2t"]["MdR"] == 3.5  # chance, exactly
    result = evaluate_model(model, load_tokenizer(setup / "clip"), index, anns, num_frames=NUM_FRAMES,
                            max_text_len=16, ties="pessimistic")
    assert result["v2t"]["MdR"] == 6.0 and result["v2t"]["R1"] == 0.0  # the worst rank for all


def test_cli_writes_row_and_metrics(setup, tmp_path):
    out = tmp_path / "eval" / "clip_zs" / "demo_msrvtt" / "test.json"
    row = {"method": "CLIP", "stage": "zero-shot", "encoder": "meanpool", "loss": "-", "dataset": "demo_msrvtt",
           "split": "test"}
    code = evaluate_main([
        "--model", str(setup / "clip"), "--frames-index", str(setup / "frames" / "index.json"),
        "--annotations", str(setup / "demo" / "annotations" / "demo_msrvtt_test.jsonl"), "--out", str(out),
        "--row", json.dumps(row),
        "--options", json.dumps({"num_frames": NUM_FRAMES, "max_text_len": 16, "video_encoder": "meanpool"}),
    ])
    assert code == 0
    data = json.loads(out.read_text())
    assert {k: data[k] for k in row} == row and data["row_keys"] == list(row)
    assert data["num_videos"] == 6 and data["num_queries"] == 6 and data["missing_clips"] == 0
    assert data["complete"] is True and data["missing_ids"] == [] and data["max_missing_fraction"] == 0.0
    assert data["model"] == str(setup / "clip") and data["options"]["video_encoder"] == "meanpool"
    assert 0.0 <= data["t2v"]["R1"] <= 100.0 and 1.0 <= data["v2t_dsl"]["MnR"] <= 6.0
    assert data["options"]["order_acc"] is True and data["order_acc"] == 50.0  # on by default; MeanPool: blind
    assert [p.name for p in out.parent.iterdir()] == ["test.json"]  # no temp file left behind
    # a rerun without --row gives the same metrics (deterministic encoding)
    again = tmp_path / "again.json"
    evaluate_main(["--model", str(setup / "clip"), "--frames-index", str(setup / "frames" / "index.json"),
                   "--annotations", str(setup / "demo" / "annotations" / "demo_msrvtt_test.jsonl"),
                   "--out", str(again), "--options", json.dumps({"num_frames": NUM_FRAMES, "max_text_len": 16,
                                                                 "video_encoder": "meanpool"})])
    again = json.loads(again.read_text())
    assert again["t2v"] == data["t2v"] and again["row_keys"] == [] and np.isfinite(again["t2v"]["MnR"])


def test_cli_tie_rule_is_an_option_and_a_wrong_one_is_refused(setup, tmp_path, capsys):
    args = ["--model", str(setup / "clip"), "--frames-index", str(setup / "frames" / "index.json"),
            "--annotations", str(setup / "demo" / "annotations" / "demo_msrvtt_test.jsonl")]
    results = {}
    for ties in ("expected", "pessimistic", "optimistic"):
        out = tmp_path / f"{ties}.json"
        options = {"num_frames": NUM_FRAMES, "max_text_len": 16, "video_encoder": "meanpool", "ties": ties}
        assert evaluate_main([*args, "--out", str(out), "--options", json.dumps(options)]) == 0
        results[ties] = json.loads(out.read_text())
        assert results[ties]["options"]["ties"] == ties
    for key in ("R1", "R5", "R10"):
        assert results["pessimistic"]["t2v"][key] <= results["expected"]["t2v"][key] <= results["optimistic"]["t2v"][key]
    bad = {"num_frames": NUM_FRAMES, "ties": "random"}
    assert evaluate_main([*args, "--out", str(tmp_path / "bad.json"), "--options", json.dumps(bad)]) == 2
    err = capsys.readouterr().err
    assert "ties" in err and "random" in err and not (tmp_path / "bad.json").exists()


def test_cli_refuses_missing_test_clips_unless_allowed(setup, tmp_path, capsys):
    """multi.jsonl's msr_99999 has no frames: any missing test clip fails; a raised limit marks the result."""
    args = ["--model", str(setup / "clip"), "--frames-index", str(setup / "frames" / "index.json"),
            "--annotations", str(setup / "multi.jsonl"), "--split", "test"]
    options = {"num_frames": NUM_FRAMES, "max_text_len": 16}
    out = tmp_path / "test.json"
    assert evaluate_main([*args, "--out", str(out), "--options", json.dumps(options)]) == 2
    err = capsys.readouterr().err
    assert "1 of 7 test clips of" in err and "msr_99999 (missing)" in err and "failures.tsv" in err
    assert not out.exists()
    # val allows 5 % by default: 1 of 7 is more
    assert evaluate_main([*args[:-1], "val", "--out", str(out), "--options", json.dumps(options)]) == 2
    capsys.readouterr()
    assert evaluate_main([*args, "--out", str(out),
                          "--options", json.dumps({**options, "max_missing_fraction": 0.2})]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["missing_ids"] == ["msr_99999"] and data["num_videos"] == 6
    assert "INCOMPLETE" in capsys.readouterr().err
