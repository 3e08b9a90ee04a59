"""The stage contract (clipvip.stage): strict options checked at parse time, one error line, atomic writes,
registries as the single source of names, and the import rules between the CLI, stages and the library."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipvip.config import ConfigError, validate_config
from clipvip.stage import OptionError, StageOptions, UserError, atomic_path, option, stage_main

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CLIPVIP = [sys.executable, "-m", "clipvip"]


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def with_overlay(overlay: dict) -> dict:
    config = demo_config()
    for dotted, value in overlay.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


# Every stage's options block: a typo is refused at parse time with the key path and a suggestion.
TYPOS = [
    ("evaluate.options", {"batchsize": 64}, "evaluate.options.batchsize: unknown option of `clipvip evaluate`; "
                                            "did you mean batch_size?"),
    ("pretrain.options", {"learning_rate": 1e-4}, "pretrain.options.learning_rate: unknown option of `clipvip "
                                                  "train`; did you mean lr?"),
    ("finetune.options", {"max_step": 3}, "finetune.options.max_step: unknown option of `clipvip train`; did you "
                                          "mean max_steps?"),
    ("frames", {"jpeg_qualty": 80}, "frames.jpeg_qualty: unknown option of `clipvip frames`; did you mean "
                                    "jpeg_quality?"),
    ("captions", {"num_beam": 2}, "captions.num_beam: unknown option of `clipvip captions`; did you mean "
                                  "num_beams?"),
    ("demo.corpus", {"seeed": 1}, "demo.corpus.seeed: unknown option of `clipvip demo-data`; did you mean seed?"),
    ("demo.tiny_models", {"clip": {"layer": 1}}, "demo.tiny_models.clip.layer: unknown option of `clipvip "
                                                 "tiny-models`; did you mean layers?"),
]


@pytest.mark.parametrize("section,block,message", TYPOS, ids=[t[0] for t in TYPOS])
def test_a_typo_in_any_options_block_is_refused_with_its_key_path(section, block, message):
    # Merged into the user's own section, as a --configfile overlay would be (the demo defaults fill the rest).
    config = demo_config()
    target, parts = config, section.split(".")
    for key in parts[:-1]:
        target = target.setdefault(key, {})
    target[parts[-1]] = {**(target.get(parts[-1]) or {}), **block}
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    assert str(err.value).startswith("config error at " + message), str(err.value)


@pytest.mark.parametrize("dotted,value,message", [
    ("pretrain.options", {"lr": "fast"}, "config error at pretrain.options.lr: 'fast' is not float or null"),
    ("evaluate.options", {"batch_size": 0}, "config error at evaluate.options.batch_size: 0 is less than the minimum 1"),
    ("finetune.per_dataset", {"demo_msrvtt": {"zero_stage": 5}},
     "config error at finetune.per_dataset.demo_msrvtt.zero_stage: 5 is greater than the maximum 3"),
    ("frames", {"decoder_threads": "two"}, "config error at frames.decoder_threads: 'two' is not int or null"),
    ("evaluate.options", {"v2t_dsl": "both"}, "config error at evaluate.options.v2t_dsl: 'both' is not one of"),
])
def test_wrong_types_and_ranges_are_refused_at_parse_time(dotted, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(with_overlay({dotted: value}), SCHEMA)


def test_yaml_1_1_exponent_strings_are_read_as_numbers():
    # PyYAML reads `1e-4` (no dot) as the string "1e-4": the option is still the number.
    config = yaml.safe_load("pretrain: {options: {lr: 1e-4}}")
    assert config["pretrain"]["options"]["lr"] == "1e-4"
    from clipvip.trainer.options import TrainOptions

    assert TrainOptions.from_dict(config["pretrain"]["options"], "pretrain").lr == 1e-4
    validate_config(with_overlay({"pretrain.options": {"lr": "1e-4"}}), SCHEMA)


def test_pretrain_enabled_follows_the_dataset_key(tmp_path):
    videos = str(tmp_path)  # video folders must exist at parse time
    base = {"demo": {"enabled": False}, "base_model": "openai/clip-vit-base-patch16",
            "captions": {"model": "Salesforce/blip-image-captioning-base"},
            "datasets": {"hd": {"video_dir": videos, "annotations": {"train": "/a.jsonl"}},
                         "msr": {"video_dir": videos, "annotations": {"train": "/b.jsonl", "test": "/c.jsonl"}}}}
    named = validate_config({**copy.deepcopy(base), "pretrain": {"dataset": "hd"}}, SCHEMA)
    assert named["pretrain"]["enabled"] is True and named["finetune"]["datasets"] == ["msr"]
    options_only = validate_config({**copy.deepcopy(base), "pretrain": {"options": {"lr": 1e-6}}}, SCHEMA)
    assert options_only["pretrain"]["enabled"] is False
    with pytest.raises(ConfigError, match="config error at pretrain.dataset: required when pretrain.enabled"):
        validate_config({**copy.deepcopy(base), "pretrain": {"enabled": True}}, SCHEMA)


def test_captioner_is_required_only_when_a_caption_loss_is_trained():
    config = demo_config()
    config["demo"]["defaults"]["captions"].pop("model")
    with pytest.raises(ConfigError, match="config error at captions.model: required: post-pretraining with a "
                                          "caption loss"):
        validate_config(copy.deepcopy(config), SCHEMA)
    config["demo"]["defaults"]["ablation"]["loss"] = ["vs"]
    with pytest.raises(ConfigError, match="config error at finetune.losses: 'vsc_fc' is not a loss of the "
                                          r"ablation grid \(ablation.loss: vs\)"):
        validate_config(copy.deepcopy(config), SCHEMA)
    config["demo"]["defaults"]["finetune"]["losses"] = ["vs"]
    validate_config(config, SCHEMA)


def test_a_registered_encoder_is_selectable_in_the_config():
    from clipvip.model.encoders import register_video_encoder
    from clipvip.registry import VIDEO_ENCODERS

    with pytest.raises(ConfigError, match="'toy_cfg' is not one of"):
        validate_config(with_overlay({"ablation": {"video_encoder": ["toy_cfg"]}}), SCHEMA)
    try:
        register_video_encoder("toy_cfg", video_tokens=False)(type("Toy", (), {}))
        config = validate_config(with_overlay({"ablation": {"video_encoder": ["toy_cfg"], "loss": ["vs"]},
                                               "finetune": {"losses": None},
                                               "evaluate": {"options": {"video_encoder": "toy_cfg"}}}), SCHEMA)
        assert "toy_cfg-vs" in __import__("clipvip.config").config.variants(config)
    finally:
        VIDEO_ENCODERS._items.pop("toy_cfg", None)


def test_typo_fails_snakemake_dry_run_before_any_job(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("evaluate: {options: {batchsize: 64}}\npretrain: {options: {lr: 1e-4}}\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", "--configfile",
                           str(REPO / "config.yaml"), str(overlay), "--config", f"results={tmp_path}/r"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config error at evaluate.options.batchsize: unknown option of `clipvip evaluate`; did you mean " \
           "batch_size?" in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


# ------------------------------------------------------------------------------------------ StageOptions
def test_options_base_coerces_checks_and_requires():
    from dataclasses import dataclass

    @dataclass
    class Opts(StageOptions):
        STAGE = "toy"
        name: str = option(help="required")
        every: int | str = option("epoch", "int or 'epoch'")
        rate: float = option(0.5, "a rate", minimum=0.0, maximum=1.0)
        kind: str = option("a", "a kind", choices=lambda: ["a", "b"])

    assert Opts.from_dict({"name": "x", "every": "5", "rate": "1e-1"}).to_dict() == \
        {"name": "x", "every": 5, "rate": 0.1, "kind": "a"}
    assert Opts.from_dict({"name": "x", "every": "epoch"}).every == "epoch"
    with pytest.raises(OptionError, match=r"--options.name: required option is missing"):
        Opts.from_dict({})
    with pytest.raises(OptionError, match=r"--options.kind: 'c' is not one of a, b"):
        Opts.from_dict({"name": "x", "kind": "c"})
    with pytest.raises(OptionError, match=r"--options.rate: True is not of type float"):
        Opts.from_dict({"name": "x", "rate": True})


def test_stage_main_prints_one_line_and_exits_2(capsys):
    @stage_main("toy")
    def main(argv=None):
        raise UserError("--options.x: unknown option")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "clipvip toy: error: --options.x: unknown option\n"


def test_stage_cli_rejects_unknown_option_with_one_line(tmp_path):
    proc = subprocess.run([*CLIPVIP, "evaluate", "--model", "m", "--frames-index", "i", "--annotations", "a",
                           "--out", str(tmp_path / "o.json"), "--options", '{"batchsize": 4}'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("clipvip evaluate: error: --options.batchsize: unknown option of `clipvip evaluate`; "
                           "did you mean batch_size? (valid: batch_size, device, ")


def test_clipvip_without_arguments_is_a_usage_error():
    bare = subprocess.run(CLIPVIP, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "stages:" in bare.stderr and bare.stdout == ""
    helped = subprocess.run([*CLIPVIP, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "stages:" in helped.stdout


def test_atomic_path_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk gone")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.json"]


# ------------------------------------------------------------------------------------------ import rules
def _imports(path: Path) -> list[str]:
    return re.findall(r"^\s*(?:from|import)\s+(clipvip[\w.]*)", path.read_text(), flags=re.M)


def test_no_stage_imports_the_cli_or_the_train_entry():
    # `python -m clipvip` (__main__) is the CLI's other face; everything else must not reach back into it.
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in (REPO / "clipvip").rglob("*.py")
                 if p.name != "__main__.py" for m in _imports(p) if m in ("clipvip.cli", "clipvip.train")]
    assert offenders == []


def test_the_trainer_imports_no_stage_module():
    stages = {"clipvip.evaluate", "clipvip.frames", "clipvip.captions", "clipvip.train", "clipvip.cli",
              "clipvip.tables", "clipvip.demo_data", "clipvip.tiny_models"}
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in (REPO / "clipvip" / "trainer").rglob("*.py")
                 for m in _imports(p) if any(m == s or m.startswith(s + ".") for s in stages)]
    assert offenders == []


def test_jobs_rereading_the_workflow_get_the_same_config_without_importing_torch(tmp_path):
    # A Snakemake job (not the main process) validates with checks=False: the same filled config, none of the
    # registry imports (torch, transformers) that would delay every cluster job's command by seconds.
    script = f"""
import json, sys, yaml
from clipvip.config import validate_config
checked = validate_config(yaml.safe_load(open({str(REPO / 'config.yaml')!r})), {str(SCHEMA)!r}, checks=False)
heavy = sorted(m for m in ("torch", "transformers", "deepspeed") if m in sys.modules)
print(json.dumps({{"config": checked, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = json.loads(proc.stdout)
    assert job["heavy"] == []
    main = json.loads(json.dumps(validate_config(demo_config(), SCHEMA)))
    assert job["config"] == main
    # ... and a typo still stops the main process (the full checks), whatever jobs would do
    bad = with_overlay({"evaluate.options": {"batchsize": 64}})
    with pytest.raises(ConfigError, match="batchsize"):
        validate_config(bad, SCHEMA)
    validate_config(with_overlay({"evaluate.options": {"batchsize": 64}}), SCHEMA, checks=False)


def test_every_benchmark_compiles_on_this_python(tmp_path):
    # Benchmarks are not run in CI; a syntax this Python rejects (e.g. 3.12-only f-string quoting) would only
    # show when a user runs one.
    import py_compile

    scripts = sorted((REPO / "benchmarks").glob("*.py"))
    assert len(scripts) >= 5
    for script in scripts:
        py_compile.compile(str(script), cfile=str(tmp_path / f"{script.stem}.pyc"), doraise=True)
