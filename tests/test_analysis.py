"""The analyses (clipvip.analysis): domain-gap NMI, data-scale subsets, retrieval gallery, `clipvip search`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clipvip.analysis.data_scale import subset_ids, variant_suffix, write_subset
from clipvip.analysis.domain_gap import (DomainGapOptions, captions_closer, cluster_nmi, domain_gap,
                                         load_text_encoder)
from clipvip.analysis.domain_gap import run as domain_gap_run
from clipvip.analysis.domain_gap import main as domain_gap_main
from clipvip.analysis.gallery import main as gallery_main
from clipvip.analysis.search import build_or_load_index
from clipvip.analysis.search import main as search_main
from clipvip.config import ConfigError, validate_config, variants
from clipvip.demo_data import write_corpus
from clipvip.frames import build_index, extract_shard
from clipvip.model.tiny import build_tiny_clip

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CLIPS = [f"msr_{i:05d}" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A real (tiny) frame store of 6 demo clips, its test annotations and a tiny CLIP."""
    root = tmp_path_factory.mktemp("analysis")
    write_corpus(root / "demo", {"frame_size": 32, "num_frames": 8, "pretrain_clips": 2,
                                 "msrvtt_clips": {"test": 6}, "didemo_clips": {"test": 2}, "workers": 1})
    extract_shard(root / "demo" / "videos", CLIPS, root / "frames" / "00000.h5",
                  {"num_frames": 4, "pool_size": 8, "short_side": 32}, progress=False)
    build_index([root / "frames" / "00000.h5"], root / "frames" / "index.json")
    build_tiny_clip(root / "clip", image_size=32, patch_size=16, hidden_size=32, text_hidden=32, projection_dim=32)
    return root


def _jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# ------------------------------------------------------------------------------------------------ domain gap
def test_nmi_of_given_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert cluster_nmi(a, a.copy(), seeds=3) == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)  # identical: no gap
    far = rng.normal(size=(200, 8)) + 20.0  # a second, far-away blob: perfectly separable
    assert min(cluster_nmi(a, far, seeds=3)) == pytest.approx(1.0)
    same_distribution = cluster_nmi(a, rng.normal(size=(200, 8)), seeds=3)
    assert max(same_distribution) < 0.05


# A random tiny CLIP text encoder does not separate two sets of ordinary sentences reliably (NMI ~0.1 on
# disjoint vocabularies), so the "disjoint vocabularies" corpora are fixed texts of two words each, repeated
# 1-4 times: with the tiny model's seed fixed (build_tiny_clip seed 0) K-means separates them.
VOCAB_A, VOCAB_B = ("red", "blue"), ("money", "budget")


def _words(vocab, i):
    return " ".join(vocab[(i + j) % 2] for j in range(1 + i % 4))


def _texts(vocab, n):
    return [{"clip_id": f"c{i}", "text": _words(vocab, i)} for i in range(n)]


@pytest.fixture(scope="module")
def text_encoder(setup):
    return load_text_encoder(str(setup / "clip"), "cpu")


def test_identical_corpora_have_no_gap(setup, text_encoder, tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", _texts(VOCAB_A, 40))
    specs = [{"name": "subs", "role": "subtitles", "kind": "annotations", "paths": [str(path)]},
             {"name": "down", "role": "downstream", "kind": "annotations", "paths": [str(path)]}]
    rows = domain_gap(specs, *text_encoder, DomainGapOptions.from_dict({"seeds": 3}))
    assert len(rows) == 1 and rows[0]["n_per_corpus"] == 40
    assert rows[0]["nmi_mean"] == pytest.approx(0.0, abs=1e-9)  # same sample order: identical features


def _three_corpora(folder, subs, caps, down) -> list[dict]:
    """Corpus specs of a subtitles, a captions and a downstream corpus, each ``(vocabulary, count)``."""
    captions = folder / "caps.jsonl"
    captions.write_text("".join(json.dumps({"clip_id": f"c{i}", "caption": _words(caps[0], i), "model": "x"}) + "\n"
                                for i in range(caps[1])))
    return [{"name": "subs", "role": "subtitles", "kind": "annotations",
             "paths": [str(_jsonl(folder / "subs.jsonl", _texts(*subs)))]},
            {"name": "caps", "role": "captions", "kind": "captions", "paths": [str(captions)]},
            {"name": "down", "role": "downstream", "kind": "annotations",
             "paths": [str(_jsonl(folder / "down.jsonl", _texts(*down)))]}]


def test_disjoint_vocabularies_have_a_large_gap_through_the_real_text_encoder(setup, text_encoder, tmp_path):
    specs = _three_corpora(tmp_path, subs=(VOCAB_A, 60), caps=(VOCAB_A, 30), down=(VOCAB_B, 80))
    rows = domain_gap(specs, *text_encoder, DomainGapOptions.from_dict({"seeds": 3, "sample_size": 50}))
    by_pair = {(r["corpus_a"], r["corpus_b"]): r for r in rows}
    assert list(by_pair) == [("subs", "down"), ("caps", "down"), ("subs", "caps")]
    assert by_pair[("subs", "down")]["n_per_corpus"] == 50  # sample_size caps both
    assert by_pair[("caps", "down")]["n_per_corpus"] == 30  # the smaller corpus sets both sizes
    assert by_pair[("subs", "down")]["nmi_mean"] > 0.5, rows
    assert by_pair[("caps", "down")]["nmi_mean"] > 0.5, rows


def test_the_papers_reading_marks_captions_closer_only_when_they_are(setup, tmp_path):
    # subtitles from another vocabulary, captions from the downstream one: the captions are closer
    specs = _three_corpora(tmp_path, subs=(VOCAB_B, 40), caps=(VOCAB_A, 40), down=(VOCAB_A, 40))
    out = tmp_path / "out"
    rows = domain_gap_run(str(setup / "clip"), specs, str(out / "gap.csv"), str(out / "gap.md"),
                          options={"seeds": 2})
    nmi = {(r["corpus_a"], r["corpus_b"]): r["nmi_mean"] for r in rows}
    reading = captions_closer(rows, specs)
    assert reading == [{"downstream": "down", "subtitles": nmi[("subs", "down")], "captions": nmi[("caps", "down")],
                        "closer": True}]
    assert nmi[("caps", "down")] < 0.05 < 0.5 < nmi[("subs", "down")]
    assert "- down: subtitles" in (out / "gap.md").read_text() and "holds" in (out / "gap.md").read_text()
    # swapped roles: the reading says so
    swapped = [dict(specs[0], paths=specs[2]["paths"]), specs[1], dict(specs[2], paths=specs[0]["paths"])]
    rows = domain_gap_run(str(setup / "clip"), swapped, str(out / "gap2.csv"), str(out / "gap2.md"),
                          options={"seeds": 2})
    assert [r["closer"] for r in captions_closer(rows, swapped)] == [False]
    assert "does NOT hold" in (out / "gap2.md").read_text()


def test_domain_gap_cli_writes_table_and_plot(setup, tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", _texts(VOCAB_A, 20))
    b = _jsonl(tmp_path / "b.jsonl", _texts(VOCAB_B, 20))
    corpora = [{"name": "subs", "role": "subtitles", "kind": "annotations", "paths": [str(a)]},
               {"name": "down", "role": "downstream", "kind": "annotations", "paths": [str(b)]}]
    out = tmp_path / "out"
    code = domain_gap_main(["--model", str(setup / "clip"), "--corpora", json.dumps(corpora),
                            "--out-csv", str(out / "gap.csv"), "--out-md", str(out / "gap.md"),
                            "--out-png", str(out / "gap.png"), "--options", json.dumps({"seeds": 2})])
    assert code == 0
    table = pd.read_csv(out / "gap.csv")
    assert list(table.columns[:5]) == ["corpus_a", "corpus_b", "n_per_corpus", "nmi_mean", "nmi_std"]
    assert "±" in (out / "gap.md").read_text() and (out / "gap.png").read_bytes()[:4] == b"\x89PNG"
    assert domain_gap_main(["--corpora", json.dumps(corpora), "--out-csv", str(out / "x.csv"),
                            "--model", str(setup / "clip"), "--options", '{"seedz": 2}']) == 2


# ------------------------------------------------------------------------------------------------ data scale
def test_data_scale_subsets_are_nested_deterministic_and_verbatim(tmp_path):
    lines = [{"clip_id": f"hd_{i:04d}", "text": f"subtitle {i}", "extra": i} for i in range(200)]
    src = _jsonl(tmp_path / "train.jsonl", lines)
    subsets = {}
    for fraction in (0.1, 0.3, 1.0):
        out = tmp_path / str(fraction) / "train.jsonl"
        info = write_subset(str(src), str(out), fraction, seed=0)
        kept = [json.loads(line) for line in out.read_text().splitlines()]
        assert info["kept"] == len(kept) == round(200 * fraction)
        assert all(k == lines[int(k["clip_id"][3:])] for k in kept)  # lines copied verbatim
        assert [k["clip_id"] for k in kept] == sorted(k["clip_id"] for k in kept)  # file order kept
        subsets[fraction] = {k["clip_id"] for k in kept}
        again = tmp_path / "again.jsonl"
        write_subset(str(src), str(again), fraction, seed=0)
        assert again.read_bytes() == out.read_bytes()  # deterministic
    assert subsets[0.1] < subsets[0.3] < subsets[1.0]
    # membership does not depend on line order; another seed draws another subset
    shuffled = _jsonl(tmp_path / "shuffled.jsonl", lines[::-1])
    write_subset(str(shuffled), str(tmp_path / "s.jsonl"), 0.3, seed=0)
    assert {json.loads(x)["clip_id"] for x in (tmp_path / "s.jsonl").read_text().splitlines()} == subsets[0.3]
    assert subset_ids([x["clip_id"] for x in lines], 0.3, seed=1) != subsets[0.3]
    assert variant_suffix(0.1) == "scale0p1" and variant_suffix(0.25) == "scale0p25"


def _demo_config(**sections) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(sections)
    return config


def test_data_scale_variants_and_config_checks():
    grid = {"video_encoder": ["vip", "meanpool"], "loss": ["vsc_fc"]}
    config = validate_config(_demo_config(study={"data_scale": [0.3, 0.1, 1.0]}, ablation=grid), SCHEMA)
    assert list(variants(config)) == ["vip-vsc_fc", "meanpool-vsc_fc", "vip-vsc_fc-scale0p1", "vip-vsc_fc-scale0p3"]
    assert variants(config)["vip-vsc_fc-scale0p1"] == {"video_encoder": "vip", "loss": "vsc_fc", "data_scale": 0.1}
    from clipvip.config import pretrain_options

    assert "data_scale" not in pretrain_options(config, "vip-vsc_fc-scale0p1")
    config = validate_config(_demo_config(study={"data_scale": [0.5], "variant": "meanpool-vsc_fc"}, ablation=grid),
                             SCHEMA)
    assert "meanpool-vsc_fc-scale0p5" in variants(config)
    with pytest.raises(ConfigError, match=r"study\.data_scale\.0: 1\.5 is greater than the maximum of 1"):
        validate_config(_demo_config(study={"data_scale": [1.5]}), SCHEMA)
    with pytest.raises(ConfigError, match=r"study\.variant: 'vip-vs' is not one of the ablation variants"):
        validate_config(_demo_config(study={"data_scale": [0.5], "variant": "vip-vs"}, ablation=grid), SCHEMA)
    with pytest.raises(ConfigError, match=r"config error at analysis\.domain_gap\.sample_sise: unknown option of "
                                          r"`clipvip domain-gap`; did you mean sample_size\?"):
        validate_config(_demo_config(analysis={"domain_gap": {"sample_sise": 10}}), SCHEMA)
    with pytest.raises(ConfigError, match=r"config error at analysis\.gallery\.top_k: 0 is less than the minimum"):
        validate_config(_demo_config(analysis={"gallery": {"top_k": 0}}), SCHEMA)


def test_dry_run_with_data_scale_shows_the_study_variants(tmp_path):
    proc = subprocess.run([SNAKEMAKE, "-n", "--configfile", str(REPO / "config.yaml"),
                           str(REPO / "presets/demo_data_scale.yaml"), "--config", f"results={tmp_path}/r"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$",
                                                              proc.stdout.split("Job stats:", 1)[1], re.M)}
    assert jobs["pretrain"] == 3 and jobs["data_scale_subset"] == 2 and jobs["data_scale_plot"] == 1
    assert jobs["finetune"] == 6 and jobs["domain_gap"] == 1 and jobs["gallery"] == 2
    for variant in ("vip-vsc_fc-scale0p25", "vip-vsc_fc-scale0p5"):
        assert f"runs/pretrain/{variant}/model" in proc.stdout
        assert f"eval/finetuned-{variant}/demo_msrvtt/test.json" in proc.stdout
    assert f"{tmp_path}/r/study/data_scale/0.25/train.jsonl" in proc.stdout
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------- search
def test_search_index_is_cached_and_rebuilt_when_model_or_store_changes(setup, tmp_path):
    import shutil

    model = tmp_path / "clip"
    shutil.copytree(setup / "clip", model)
    store = tmp_path / "frames"
    shutil.copytree(setup / "frames", store)
    index_json = str(store / "index.json")
    messages = []
    index, ids, how, path = build_or_load_index(str(model), index_json, num_frames=4, log=messages.append)
    assert how == "built" and sorted(ids) == CLIPS and index.ntotal == 6 and path.parent == store / "search"
    built_at = path.stat().st_mtime_ns
    _, _, how, same = build_or_load_index(str(model), index_json, num_frames=4, log=messages.append)
    assert how == "reused" and same == path and path.stat().st_mtime_ns == built_at
    assert messages[0].startswith("search: built index") and messages[1].startswith("search: reused index")
    # another frame count is another index
    assert build_or_load_index(str(model), index_json, num_frames=2, log=messages.append)[2] == "built"
    # a re-trained model (new weights file) builds a new index
    weights = next(p for p in model.iterdir() if p.suffix in (".safetensors", ".bin"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    _, _, how, new_path = build_or_load_index(str(model), index_json, num_frames=4, log=messages.append)
    assert how == "built" and new_path != path
    # a re-extracted store (shard rewritten) too
    shard = store / "00000.h5"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert build_or_load_index(str(model), index_json, num_frames=4, log=messages.append)[2] == "built"
    assert build_or_load_index(str(model), index_json, num_frames=4, log=messages.append)[2] == "reused"


def test_clipvip_search_answers_queries_as_table_json_and_html(setup, tmp_path, capsys):
    import shutil

    store = tmp_path / "frames"
    shutil.copytree(setup / "frames", store)
    args = ["--model", str(setup / "clip"), "--frames-index", str(store / "index.json"), "--num-frames", "4",
            "--top-k", "3"]
    assert search_main([*args, "--json", "--html", str(tmp_path / "hits.html"),
                        "a red square moves right", "a blue circle moves up"]) == 0
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert [r["query"] for r in results] == ["a red square moves right", "a blue circle moves up"]
    for r in results:
        assert [h["rank"] for h in r["hits"]] == [1, 2, 3] and {h["clip_id"] for h in r["hits"]} <= set(CLIPS)
        scores = [h["score"] for h in r["hits"]]
        assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert "search: built index" in err
    page = (tmp_path / "hits.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 6
    assert search_main([*args, "a green triangle"]) == 0
    out, err = capsys.readouterr()
    assert "search: reused index" in err and "rank" in out and "clip_id" in out
    assert search_main(["--model", str(tmp_path / "nope"), "--frames-index", str(store / "index.json"), "q"]) == 2


# --------------------------------------------------------------------------------------------------- gallery
def test_gallery_page_shows_both_models_with_the_ground_truth_marked(setup, tmp_path):
    ann = setup / "demo" / "annotations" / "demo_msrvtt_test.jsonl"
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"t2v": {"R1": 33.3}}))
    out = tmp_path / "gallery" / "demo_msrvtt.html"
    code = gallery_main(["--frames-index", str(setup / "frames" / "index.json"), "--annotations", str(ann),
                         "--model", f"zero-shot CLIP={setup / 'clip'}", "--model", f"fine-tuned={setup / 'clip'}",
                         "--encoder", "zero-shot CLIP=meanpool", "--metrics", f"fine-tuned={metrics}",
                         "--out", str(out), "--summary", str(tmp_path / "g.json"),
                         "--options", json.dumps({"num_queries": 3, "top_k": 2, "num_frames": 4,
                                                  "thumb_frames": 3, "max_text_len": 32})])
    assert code == 0
    summary = json.loads((tmp_path / "g.json").read_text())
    assert len(summary["queries"]) == 3 and summary["models"] == ["zero-shot CLIP", "fine-tuned"]
    page = out.read_text()
    assert page.count("<img ") == 3 * 2 * 2 and "data-images-loaded" in page and "t2v R@1 33.3" in page
    for q in summary["queries"]:
        assert q["ground_truth"] in CLIPS
        for entry in q["models"].values():
            assert len(entry["top"]) == 2 and 1 <= entry["gt_rank"] <= 6
    shown_gt = sum(q["ground_truth"] in e["top"] for q in summary["queries"] for e in q["models"].values())
    assert page.count('class="hit gt"') == shown_gt
