"""The workflow skeleton: config schema, software-env sync, lint, dry run."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from clipvip.config import ConfigError, finetune_options, finetuned_variants, validate_config, variants

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_demo_config_is_valid_and_defaults_are_filled():
    config = validate_config(demo_config(), SCHEMA)
    assert config["datasets"]["demo_msrvtt"]["text_mode"] == "sample"
    assert config["base_model"] == "results/pretrained/clip"  # {results} expanded
    assert config["evaluate"]["split"] == "test"  # default from the schema
    assert config["launch"] == {"launcher": "local", "tasks": 1}
    # the demo's ablation grid: encoders (ViP vs MeanPool) x losses (L(V,S) vs L(V,S,C)+L(F,C))
    assert set(variants(config)) == {"vip-vs", "vip-vsc_fc", "meanpool-vs", "meanpool-vsc_fc"}


def test_finetune_losses_pick_the_finetuned_variants_and_typos_are_refused():
    config = validate_config(demo_config(), SCHEMA)
    # the demo fine-tunes the paper's loss for both encoders; the loss ablation stays zero-shot
    assert finetuned_variants(config) == ["vip-vsc_fc", "meanpool-vsc_fc"]
    everything = demo_config()
    everything["finetune"] = {"losses": None}  # an overlay's null wins over the demo's list: every variant
    assert finetuned_variants(validate_config(everything, SCHEMA)) == list(variants(config))
    typo = demo_config()
    typo["finetune"] = {"losses": ["vsc-fc"]}
    with pytest.raises(ConfigError, match=r"finetune\.losses: 'vsc-fc' is not a loss of the ablation grid "
                                          r"\(ablation\.loss: vs, vsc_fc\)"):
        validate_config(typo, SCHEMA)
    # data-scale variants follow their base variant; the study must scale a fine-tuned variant
    scaled = demo_config()
    scaled["study"] = {"data_scale": [0.5, 1.0]}
    scaled = validate_config(scaled, SCHEMA)
    assert finetuned_variants(scaled) == ["vip-vsc_fc", "meanpool-vsc_fc", "vip-vsc_fc-scale0p5"]
    untuned = demo_config()
    untuned["study"] = {"data_scale": [0.5, 1.0], "variant": "vip-vs"}
    with pytest.raises(ConfigError, match="study.variant: 'vip-vs' is not fine-tuned"):
        validate_config(untuned, SCHEMA)


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("datasets", "demo_msrvtt", "num_frames"), "eight", r"datasets\.demo_msrvtt\.num_frames: 'eight' is not of type 'integer'"),
        (("frames", "jpeg_quality"), 10, r"frames\.jpeg_quality: 10 is less than the minimum 50"),
        (("ablation", "video_encoder"), ["vip", "lstm"], r"ablation\.video_encoder\.1: 'lstm' is not one of"),
        (("datasets", "demo_didemo", "text_mode"), "concat", r"datasets\.demo_didemo\.text_mode: 'concat' is not one of"),
        (("pretrain", "dataset"), "nope", r"pretrain\.dataset: 'nope' is not one of datasets"),
        (("finetune", "datasets"), ["demo_msrvtt", "lsmdc"], r"finetune\.datasets: 'lsmdc' is not one of datasets"),
    ],
)
def test_schema_errors_name_the_key(path, value, message):
    config = demo_config()
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


def test_unknown_key_is_rejected():
    config = demo_config()
    config["frames"] = {"shardsize": 3}
    with pytest.raises(ConfigError, match=r"frames.shardsize: unknown option of `clipvip frames`; did you mean "
                                          r"shard_size\?"):
        validate_config(copy.deepcopy(config), SCHEMA)
    config["frames"] = {}
    config["ablation"] = {"los": ["vs"]}
    with pytest.raises(ConfigError, match=r"ablation: Additional properties are not allowed \('los'"):
        validate_config(config, SCHEMA)


def test_overlay_values_win_over_demo_defaults():
    config = demo_config()
    config["finetune"] = {"options": {"lr": 1e-3}}
    validated = validate_config(config, SCHEMA)
    assert validated["finetune"]["options"]["lr"] == 1e-3
    assert validated["finetune"]["options"]["group_size"] == 2  # still filled from the demo's defaults
    assert validated["finetune"]["datasets"] == ["demo_msrvtt", "demo_didemo"]


def test_disabled_demo_leaves_nothing_of_the_demo_behind(tmp_path):
    """A real-data overlay starts from the paper's settings, not from the demo's tiny-model values."""
    config = demo_config()
    config["demo"]["enabled"] = False
    with pytest.raises(ConfigError, match=r"<top level>: 'datasets' is a required property"):
        validate_config(copy.deepcopy(config), SCHEMA)
    config["datasets"] = {"msrvtt": {"video_dir": str(tmp_path), "annotations": {"train": "t.jsonl"}}}
    config["finetune"] = {"datasets": ["msrvtt"]}
    with pytest.raises(ConfigError, match=r"'base_model' is a required property"):
        validate_config(copy.deepcopy(config), SCHEMA)
    config["base_model"] = "openai/clip-vit-base-patch32"
    validated = validate_config(config, SCHEMA)
    assert list(validated["datasets"]) == ["msrvtt"]
    assert validated["frames"] == {"shard_size": 500} and validated["datasets"]["msrvtt"]["num_frames"] == 12
    assert validated["pretrain"]["enabled"] is False
    assert finetune_options(validated, "vip-vsc_fc", "msrvtt") == {
        "num_frames": 12, "max_text_len": 50, "text_mode": "sample", "loss": "vs", "video_encoder": "vip"}


def test_finetune_options_layering():
    config = validate_config(demo_config(), SCHEMA)
    opts = finetune_options(config, "meanpool-vsc_fc", "demo_didemo")
    assert opts["video_encoder"] == "meanpool"
    assert opts["loss"] == "vs"  # fine-tuning is L(V,T) whatever the post-pretraining loss was
    assert opts["max_steps"] == config["finetune"]["per_dataset"]["demo_didemo"]["max_steps"]
    assert opts["lr"] == config["finetune"]["options"]["lr"]
    assert opts["text_mode"] == "join"


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[ @;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_mirrors_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "workflow/envs/clipvip.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_reqs = {_requirement_name(r): r.replace(" ", "") for r in pip}
    for req in project["dependencies"]:
        name = _requirement_name(req)
        assert name in env_reqs, f"{name} is in pyproject.toml but not in workflow/envs/clipvip.yaml"
        assert env_reqs[name] == req.replace(" ", ""), f"{name}: pyproject {req!r} vs env {env_reqs[name]!r}"


def run_snakemake(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_make_lint_is_clean():
    """`make lint` = ruff (pinned) over the package, tests, benchmarks and scripts + `snakemake --lint`."""
    venv = Path(sys.executable).parent.parent
    # -o: the venv is already set up (the test runs inside it); never reinstall from a test.
    proc = subprocess.run(["make", "-o", f"{venv}/.clipvip-installed", f"VENV={venv}", "lint"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_of_the_demo_lists_every_stage(tmp_path):
    proc = run_snakemake("-n", "--config", f"results={tmp_path}/results")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rule in ["demo_data", "tiny_models", "split_ids_demo_msrvtt", "frames", "frames_index", "captions",
                 "pretrain", "finetune", "evaluate", "tables"]:
        assert re.search(rf"^{rule}\s+\d+", proc.stdout, re.M), f"rule {rule} missing from the dry run"
    # 4 post-pretrained variants, 2 of them fine-tuned on 2 datasets; 1 + 4 + 2 x 2 evaluations per dataset
    assert re.search(r"^pretrain\s+4$", proc.stdout, re.M) and re.search(r"^finetune\s+4$", proc.stdout, re.M)
    assert re.search(r"^evaluate\s+14$", proc.stdout, re.M)
    tuned = set(re.findall(r"runs/finetune/([a-z_]+-[a-z_]+)/demo_msrvtt/model", proc.stdout))
    assert tuned == {"vip-vsc_fc", "meanpool-vsc_fc"}


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("frames:\n  jpeg_quality: high\n")
    proc = run_snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "config error at frames.jpeg_quality: 'high' is not of type int" in proc.stdout + proc.stderr


def merge_overlay(base: dict, overlay: dict) -> dict:
    """What Snakemake does with --configfile: nested dicts are updated, everything else replaced."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_overlay(base[key], value)
        else:
            base[key] = value
    return base


# video_dir must exist at parse time: the repository's own folder stands in for the data folders.
PATHS = {"base_model": "openai/clip-vit-base-patch32", "datasets": {
    name: {"video_dir": str(REPO), "annotations": {"train": "train.jsonl", "val": "val.jsonl", "test": "t.jsonl"}}
    for name in ["msrvtt", "didemo", "lsmdc", "activitynet", "hdvila"]}}


@pytest.mark.parametrize("dataset, frames, text_len, epochs", [
    ("msrvtt", 12, 50, 100), ("didemo", 12, 50, 20), ("lsmdc", 12, 50, 10), ("activitynet", 32, 70, 20)])
def test_presets_resolve_to_the_papers_settings_without_demo_values(dataset, frames, text_len, epochs):
    from clipvip.trainer.options import TrainOptions

    config = merge_overlay(demo_config(), yaml.safe_load((REPO / f"presets/{dataset}.yaml").read_text()))
    config = merge_overlay(config, copy.deepcopy(PATHS))
    config["datasets"] = {k: v for k, v in config["datasets"].items() if k == dataset}
    config = validate_config(config, SCHEMA)
    assert config["finetune"]["datasets"] == [dataset]
    opts = TrainOptions.from_dict(finetune_options(config, "vip-vsc_fc", dataset), "finetune")
    assert (opts.lr, opts.weight_decay, opts.batch_size, opts.grad_clip, opts.warmup_ratio) == (1e-6, 0.2, 128, 1.0, 0.01)
    assert (opts.num_frames, opts.max_text_len, opts.epochs) == (frames, text_len, epochs)
    # nothing of the demo leaks in: paper init of the temporal embedding, no step cap, no twin grouping
    assert (opts.temporal_init_std, opts.max_steps, opts.group_size, opts.temporal_lr_mult) == (0.0, None, 1, 1.0)
    # frames keys absent from the config take FrameOptions' defaults (the one source), as the job does.
    from clipvip.frames.extract import FrameOptions

    assert FrameOptions.from_dict({k: v for k, v in config["frames"].items() if k != "shard_size"}).short_side == 224


def test_pretraining_preset_combines_with_finetuning_presets():
    from clipvip.config import pretrain_options
    from clipvip.trainer.options import TrainOptions

    config = demo_config()
    for name in ["pretrain_hdvila", "msrvtt", "didemo"]:
        merge_overlay(config, yaml.safe_load((REPO / f"presets/{name}.yaml").read_text()))
    merge_overlay(config, copy.deepcopy(PATHS))
    config["datasets"] = {k: v for k, v in config["datasets"].items() if k in ("hdvila", "msrvtt", "didemo")}
    config = validate_config(config, SCHEMA)
    assert sorted(config["finetune"]["datasets"]) == ["didemo", "msrvtt"]
    assert set(variants(config)) == {"vip-vsc_fc"}
    opts = TrainOptions.from_dict(pretrain_options(config, "vip-vsc_fc"), "pretrain")
    assert (opts.lr, opts.weight_decay, opts.batch_size, opts.grad_clip, opts.loss) == (5e-6, 0.05, 1024, 5.0, "vsc_fc")
    assert (opts.num_frames, opts.max_text_len, opts.temporal_init_std) == (12, 70, 0.0)


@pytest.mark.parametrize("presets, dataset", [(["msrvtt", "videoclip_zs_msrvtt"], "msrvtt"),
                                              (["videoclip_zs_youcook2"], "youcook2")])
def test_videoclip_zero_shot_presets_resolve(presets, dataset, tmp_path):
    """The official zero-shot protocols: the released (converted) weights evaluated as they are, S3D features,
    the official 63-token text; no VideoCLIP training."""
    from clipvip.config import videoclip_evaluate_options
    from clipvip.model.videoclip import build_tiny_bert

    config = demo_config()
    for name in presets:
        merge_overlay(config, yaml.safe_load((REPO / f"presets/{name}.yaml").read_text()))
    paths = copy.deepcopy(PATHS)
    paths["datasets"].setdefault(dataset, {"video_dir": str(REPO), "annotations": {"test": "t.jsonl"}})
    merge_overlay(config, paths)
    config["datasets"] = {k: v for k, v in config["datasets"].items() if k == dataset}
    config["finetune"] = {"datasets": [dataset] if dataset == "msrvtt" else []}
    config["features"]["options"]["weights"] = str(REPO / "README.md")  # stands in for s3d_howto100m.pth
    config["videoclip"]["init"] = str(build_tiny_bert(tmp_path / "converted", vocab_size=60))
    config = validate_config(config, SCHEMA)
    vc = config["videoclip"]
    assert (vc["pretrain"]["enabled"], vc["finetune"]["enabled"], vc["evaluate"]["zero_shot"]) == (False, False, True)
    assert vc["finetune"]["datasets"] == [dataset] and config["features"]["datasets"] == [dataset]
    assert config["features"]["options"]["extractor"] == "s3d"
    assert videoclip_evaluate_options(config, dataset)["max_text_len"] == 63
