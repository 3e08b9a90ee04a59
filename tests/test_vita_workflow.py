"""Vita-CLIP as a method of the workflow: ``clipvip train --task recognition`` (real DeepSpeed, real frame stores
from real MP4s of the demo's action set), kill/resume, 2 ranks = 1 rank, frozen tower bit-identical, the exported
folder loadable with its classes, ``clipvip evaluate-recognition`` supervised and zero-shot (no trained per-class
vector), the recognition table, config checks at parse time, the Snakemake dry run, and retrieval fine-tuning
with ``video_encoder: vita`` (the optimizer holds only the prompts)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")))
# 18 training clips = one per seen class; a fixed global batch of 6 clips.
BASE = {"task": "recognition", "batch_size": 6, "num_frames": 4, "max_steps": 8, "lr": 5e-3, "sampling_rate": 2,
        "num_workers": 0, "checkpoint_every": 2, "eval_every": 4, "eval_batch_size": 6, "nprocs": 1,
        "zero_stage": 2, "vita": {"num_global_prompts": 2, "text_num_context": 2}}
COUNTS = {"train": 18, "val": 6, "test": 6, "unseen": 6}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from clipvip.cli import main as cli
    from clipvip.demo_data import clip_ids, write_corpus
    from clipvip.model.tiny import build_tiny_clip

    root = tmp_path_factory.mktemp("vita-data")
    options = {"seed": 0, "frame_size": 32, "num_frames": 8, "pretrain_clips": 2, "msrvtt_clips": {"train": 2},
               "didemo_clips": {"train": 2}, "actions_clips": COUNTS, "workers": 1}
    write_corpus(root / "demo", options)
    ann = root / "demo" / "annotations"
    out = {"root": root, "ann": ann,
           "clip": build_tiny_clip(root / "clip", image_size=32, patch_size=16, hidden_size=32, layers=1, heads=2,
                                   text_hidden=32, text_layers=1, projection_dim=32)}
    for name in ("demo_actions", "demo_actions_unseen"):
        (root / f"{name}.ids").write_text("\n".join(clip_ids(options, name)) + "\n")
        shard = root / f"{name}.h5"
        assert cli(["frames", "--video-dir", str(root / "demo" / "videos"), "--ids", str(root / f"{name}.ids"),
                    "--out", str(shard), "--failures", str(root / f"{name}.failures.tsv"),
                    "--options", json.dumps({"short_side": 32, "num_frames": 4, "pool_size": 8})]) == 0
        assert cli(["frames-index", "--shards", str(shard), "--out", str(root / f"{name}_index.json")]) == 0
        out[f"{name}_index"] = root / f"{name}_index.json"
    out["classes"], out["unseen_classes"] = ann / "demo_actions_classes.txt", ann / "demo_actions_unseen_classes.txt"
    # The same clips as a video-text set (caption = the class name) for retrieval fine-tuning with vita.
    out["captions"] = root / "actions_text.jsonl"
    out["captions"].write_text("".join(json.dumps({"clip_id": r["clip_id"], "text": f"a shape {r['label']}."}) + "\n"
                                       for r in _lines(ann / "demo_actions_train.jsonl")))
    return out


def train_cmd(data, run: Path, options: dict, val=True, task_flag=True) -> list[str]:
    cmd = [sys.executable, "-m", "clipvip", "train", "--init", str(data["clip"]), "--out", str(run / "out"),
           "--checkpoint-dir", str(run / "ckpt"), "--frames-index", str(data["demo_actions_index"]),
           "--options", json.dumps(options)]
    if options.get("task") == "recognition":
        cmd += ["--task", "recognition", "--class-list", str(data["classes"]),
                "--annotations", str(data["ann"] / "demo_actions_train.jsonl")]
        if val:
            cmd += ["--val-annotations", str(data["ann"] / "demo_actions_val.jsonl")]
    else:
        cmd += ["--stage", "finetune", "--annotations", str(data["captions"])]
    return cmd


def train(data, run: Path, options: dict, expect: int = 0, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(data, run, options, **kw), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-5000:]
    return proc


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in _lines(run / "out" / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def one_rank(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("vita-1rank")
    train(data, run, BASE)
    return run


def _tower(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith(("vision_model.", "text_model.", "visual_projection.",
                                                            "text_projection."))}


@pytest.mark.slow
def test_recognition_run_logs_selects_on_top1_and_exports_with_classes(data, one_rank):
    from transformers import CLIPModel

    from clipvip.data.recognition import read_class_list
    from clipvip.model.vita import build_vita_model, vita_trainable_names

    rows = _lines(one_rank / "out" / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert set(steps[0]["terms"]) == {"CE(V,K)", "acc1"}
    assert sum(losses(one_rank)[-3:]) / 3 < losses(one_rank)[0]  # learns the fixed 18 clips
    # no warm-up: full lr at step 1, then cosine down
    assert steps[0]["lr"] == pytest.approx(BASE["lr"]) and steps[-1]["lr"] < 0.2 * BASE["lr"]
    val = [r for r in rows if r.get("event") == "val"]
    assert [r["step"] for r in val] == [4, 8] and {"top1", "top5"} <= set(val[0]["metrics"])
    selection = json.loads((one_rank / "out" / "selection.json").read_text())
    assert selection["metric"] == "top1" and selection["step"] == max(val, key=lambda r: r["value"])["step"]
    config = json.loads((one_rank / "out" / "config.json").read_text())
    assert config["task"] == "recognition" and config["options"]["loss"] == "recognition_ce"
    assert config["deepspeed"]["optimizer"]["params"]["lr"] == BASE["lr"]

    folder = one_rank / "out" / "model"
    names = read_class_list(data["classes"])
    assert read_class_list(folder / "classes.txt") == names
    model = build_vita_model(folder)  # from_pretrained with its class names
    assert model.video_encoder.text.class_names == names and model.video_encoder.text.ctx.shape[:2] == (18, 2)
    assert config["derived"]["trainable_params"] == sum(p.numel() for n, p in model.named_parameters()
                                                        if n in set(vita_trainable_names(model)))
    # The CLIP towers are bit-identical to the init after training.
    init, trained = _tower(CLIPModel.from_pretrained(data["clip"]).state_dict()), _tower(model.state_dict())
    assert set(init) == set(trained) and all(torch.equal(init[k], trained[k]) for k in init)
    assert float(model.logit_scale.detach()) != pytest.approx(2.6593, abs=1e-6)  # the scale trained


@pytest.mark.slow
def test_two_ranks_equal_one_rank(data, one_rank, tmp_path):
    train(data, tmp_path, dict(BASE, nprocs=2))
    a, b = losses(one_rank), losses(tmp_path)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-4, (a, b)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["derived"]["world_size"] == 2


@pytest.mark.slow
def test_kill_then_resume_equals_uninterrupted(data, one_rank, tmp_path):
    from clipvip.model.vita import build_vita_model

    proc = subprocess.Popen(train_cmd(data, tmp_path, BASE), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len([r for r in _lines(metrics) if "event" not in r]) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = train(data, tmp_path, BASE)
    assert "resumed from" in again.stdout + again.stderr
    assert [r["step"] for r in _lines(tmp_path / "out" / "metrics.jsonl") if "event" not in r] == list(range(1, 9))
    assert losses(tmp_path) == pytest.approx(losses(one_rank), abs=1e-6)
    a, b = build_vita_model(one_rank / "out" / "model").state_dict(), build_vita_model(tmp_path / "out" / "model").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_retrieval_finetune_with_vita_trains_only_the_prompts(data, tmp_path):
    from transformers import CLIPModel

    from clipvip.model.vita import build_vita_model

    opts = {"video_encoder": "vita", "batch_size": 6, "num_frames": 4, "max_steps": 2, "lr": 1e-3,
            "num_workers": 0, "max_text_len": 16, "nprocs": 1, "eval_every": 100, "vita": {"num_global_prompts": 2}}
    train(data, tmp_path, opts, val=False)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    model = build_vita_model(tmp_path / "out" / "model")
    prompts = {n: p for n, p in model.named_parameters() if n == "logit_scale" or n.startswith("video_encoder.")}
    assert model.video_encoder.text.ctx is None  # retrieval: no classes, the text side is CLIP's own
    assert config["derived"]["trainable_params"] == sum(p.numel() for p in prompts.values())
    assert [r["step"] for r in _lines(tmp_path / "out" / "metrics.jsonl")] == [1, 2]
    init, trained = _tower(CLIPModel.from_pretrained(data["clip"]).state_dict()), _tower(model.state_dict())
    assert all(torch.equal(init[k], trained[k]) for k in init)


# ------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def vita_folder(data, tmp_path_factory):
    """A Vita model over the tiny CLIP with random (untrained) prompts, saved like the trainer exports it."""
    from clipvip.data.recognition import read_class_list
    from clipvip.model.vita import build_vita_model
    from clipvip.trainer.tasks import load_tokenizer

    folder = tmp_path_factory.mktemp("vita-model")
    torch.manual_seed(0)
    model = build_vita_model(data["clip"], class_names=read_class_list(data["classes"]),
                             vita={"num_frames": 4, "text_num_context": 2})
    model.save_pretrained(folder)
    load_tokenizer(str(data["clip"])).save_pretrained(folder)
    return folder


def _evaluate(data, model, out: Path, unseen: bool, options: dict) -> dict:
    from clipvip.evaluate_recognition import main

    ds = "demo_actions_unseen" if unseen else "demo_actions"
    argv = ["--model", str(model), "--frames-index", str(data[f"{ds}_index"]),
            "--annotations", str(data["ann"] / f"{ds}_test.jsonl"),
            "--classes", str(data["unseen_classes" if unseen else "classes"]), "--out", str(out),
            "--row", json.dumps({"method": "Vita-CLIP", "protocol": "zs" if unseen else "sup", "dataset": ds}),
            "--options", json.dumps({"num_frames": 4, "sampling_rate": 2, **options})]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_evaluate_recognition_supervised_zero_shot_and_views(data, vita_folder, tmp_path):
    from clipvip.model.vita import build_vita_model

    sup = _evaluate(data, vita_folder, tmp_path / "sup.json", False, {"zero_shot": False})
    assert sup["num_clips"] == 6 and sup["num_classes"] == 18 and sup["class_text"] == "csc"
    assert sup["trained_classes"] == 18 and 0 <= sup["top1"] <= sup["top5"] <= 100 and sup["complete"]
    assert sup["row_keys"] == ["method", "protocol", "dataset"]
    zs = _evaluate(data, vita_folder, tmp_path / "zs.json", True, {"zero_shot": True})
    assert zs["num_classes"] == 6 and zs["class_text"] == "prompt" and zs["trained_classes"] == 0
    three = _evaluate(data, vita_folder, tmp_path / "views.json", False, {"views": 3})
    assert three["num_views"] == 3

    # Zero-shot uses no trained per-class vector: perturbing every CSC vector changes supervised scores only.
    model = build_vita_model(vita_folder)
    with torch.no_grad():
        model.video_encoder.text.ctx.add_(torch.randn_like(model.video_encoder.text.ctx) * 5)
    perturbed = tmp_path / "perturbed"
    model.save_pretrained(perturbed)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (vita_folder / name).exists():
            (perturbed / name).write_bytes((vita_folder / name).read_bytes())
    zs2 = _evaluate(data, perturbed, tmp_path / "zs2.json", True, {"zero_shot": True})
    assert (zs2["top1"], zs2["top5"]) == (zs["top1"], zs["top5"])
    from clipvip.evaluate_recognition import RecognitionEvalOptions, run

    opts = RecognitionEvalOptions.from_dict({"num_frames": 4, "sampling_rate": 2})
    logits = {}
    for name, folder in (("a", vita_folder), ("b", perturbed)):
        from clipvip.data.recognition import read_class_list
        from clipvip.evaluate_recognition import load_model
        from clipvip.model.vita import class_text_features

        m, tok, _ = load_model(str(folder), opts)
        with torch.no_grad():
            logits[name] = (class_text_features(m, tok, read_class_list(data["unseen_classes"]), zero_shot=True),
                            class_text_features(m, tok, read_class_list(data["classes"]), zero_shot=False))
    assert torch.equal(logits["a"][0], logits["b"][0]) and not torch.allclose(logits["a"][1], logits["b"][1])
    # Supervised scoring refuses classes the model never trained on.
    with pytest.raises(Exception, match="not training classes"):
        run(str(vita_folder), str(data["demo_actions_unseen_index"]),
            str(data["ann"] / "demo_actions_unseen_test.jsonl"), str(data["unseen_classes"]), str(tmp_path / "x.json"),
            options={"num_frames": 4, "zero_shot": False})


def test_plain_clip_zero_shot_and_recognition_table(data, vita_folder, tmp_path):
    from clipvip.recognition_tables import main as tables

    clip = _evaluate(data, data["clip"], tmp_path / "clip.json", False, {"template": "a shape {}."})
    assert clip["class_text"] == "prompt" and clip["trained_classes"] == 0
    rows = [dict(clip, method="CLIP", protocol="zero-shot", group="g")]
    for i, top1 in enumerate((40.0, 50.0, 60.0)):  # three splits of one group: mean ± std
        rows.append({"method": "Vita-CLIP", "protocol": "zero-shot", "dataset": f"s{i}", "group": "g",
                     "top1": top1, "top5": 90.0})
    paths = []
    for i, row in enumerate(rows):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(row))
    assert tables(["--metrics", *map(str, paths), "--out-dir", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "recognition.md").read_text()
    assert "| Vita-CLIP | zero-shot | 50.0 ± 10.0 | 90.0 ± 0.0 |" in md
    csv = (tmp_path / "t" / "recognition.csv").read_text().splitlines()
    assert csv[0] == "method,protocol,group,n,top1,top1_std,top5,top5_std,complete" and len(csv) == 3


# ------------------------------------------------------------------------------------------ configuration
def _demo_vita_config(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "presets" / "demo_vita.yaml").read_text())

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    config = merge(config, overlay)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config


@pytest.mark.parametrize("change, message", [
    ({"demo.defaults.recognition.options.lrr": 1}, "recognition.options.lrr: unknown option of `clipvip train`; did you mean lr?"),
    ({"demo.defaults.recognition.options.loss": "vs"}, "recognition.options.loss: 'vs' is a retrieval loss"),
    ({"demo.defaults.recognition.evaluate.viewz": 3}, "recognition.evaluate.viewz: unknown option"),
    ({"demo.defaults.recognition.options.vita": {"bogus": 1}}, "recognition.options.vita: unknown vita config keys"),
    ({"demo.defaults.recognition.datasets": ["demo_msrvtt"]}, "datasets.demo_msrvtt.task: must be recognition"),
    ({"demo.defaults.recognition.zero_shot": {"demo_actions_unseen": {"model": "nope"}}},
     "recognition.zero_shot.demo_actions_unseen.model: 'nope' is not one of recognition.datasets"),
])
def test_bad_recognition_config_fails_at_parse_time(change, message):
    from clipvip.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match="config error at " + __import__("re").escape(message)):
        validate_config(_demo_vita_config(**change), ROOT / "workflow" / "schemas" / "config.schema.yaml")


def test_recognition_datasets_never_join_retrieval_finetuning():
    from clipvip.config import validate_config

    config = _demo_vita_config(**{"demo.defaults.finetune.datasets": []})
    validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    assert "demo_actions" not in config["finetune"]["datasets"] and "demo_msrvtt" in config["finetune"]["datasets"]


def test_snakemake_dry_run_with_demo_vita_lists_the_recognition_rules(tmp_path):
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", "--configfile",
                           "config.yaml", "presets/demo_vita.yaml", "--config", f"results={tmp_path}/r"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    for rule in ("recognition_train", "recognition_tables", "split_ids_demo_actions", "split_ids_demo_actions_unseen"):
        assert counts.get(rule) == 1, (rule, counts)
    # rows clip + vita + one per post-pretrained variant, on demo_actions and demo_actions_unseen
    assert counts.get("recognition_evaluate") == 2 * (2 + counts.get("pretrain", 0)), counts
    # Without the overlay nothing of it is there.
    plain = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", "--config",
                            f"results={tmp_path}/p"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "recognition" not in plain.stdout
