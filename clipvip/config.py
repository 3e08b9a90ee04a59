"""Workflow configuration: JSON-schema validation with defaults, and the names the workflow derives from it.

Usage (the Snakefile does this before building the DAG):
    from clipvip.config import validate_config
    validate_config(config, "workflow/schemas/config.schema.yaml")   # fills defaults in place

A bad value raises ``ConfigError`` whose message names the key path and what was expected, e.g.
``config error at datasets.demo_msrvtt.num_frames: 'eight' is not of type 'integer'``.

Two layers, each the single source of its keys: the JSON schema holds the workflow's own keys (datasets,
shard size, which stages run); every stage's ``options`` block is checked by that stage's options class
(``clipvip.stage.StageOptions`` subclasses: ``FrameOptions``, ``CaptionOptions``, ``TrainOptions``,
``EvaluateOptions``, ``DemoOptions``, ``TinyModelsOptions``), so a typo, a wrong type or an out-of-range value
in any block fails ``snakemake -n`` naming the key path, e.g.
``config error at evaluate.options.batchsize: unknown option of `clipvip evaluate`; did you mean batch_size?``.
Names of encoders, losses and launchers come from ``clipvip.registry`` into the schema's enums.

``pretrain.enabled`` defaults to whether ``pretrain.dataset`` is given: writing a pre-training dataset turns
post-pretraining on, an ``options`` block alone does not.

``videoclip`` (off by default; workflow/rules/videoclip.smk): VideoCLIP post-pretrained on per-second features of
``videoclip.pretrain.dataset`` (default ``pretrain.dataset``), evaluated zero-shot and fine-tuned on
``videoclip.finetune.datasets`` (default ``finetune.datasets``). While enabled, those datasets are added to
``features.datasets``; its options blocks are ``TrainOptions`` with ``method: videoclip`` (``videoclip_*_options``).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema
import yaml

from clipvip.stage import OptionError, did_you_mean


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or refers to something that does not exist."""


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that also fills ``default`` values into the instance (jsonschema FAQ)."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                    instance[name] = json.loads(json.dumps(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def load_schema(path: str | Path, registry_names: bool = True) -> dict:
    """The schema with the registries' names filled into the enums that name registered things (without
    ``registry_names`` those keys accept any string: importing the registries costs torch + transformers)."""
    with open(path) as fh:
        schema = yaml.safe_load(fh)
    if not registry_names:
        return schema
    from clipvip.registry import LAUNCHERS, LOSSES, VIDEO_ENCODERS

    props = schema["properties"]
    ablation = props["ablation"]["properties"]
    ablation["video_encoder"]["items"]["enum"] = VIDEO_ENCODERS.names()
    ablation["loss"]["items"]["enum"] = LOSSES.names()
    props["evaluate"]["properties"]["zero_shot_encoder"]["enum"] = VIDEO_ENCODERS.names()
    # "none" means "already launched", which a workflow rule never is.
    props["launch"]["properties"]["launcher"]["enum"] = [n for n in LAUNCHERS.names() if n != "none"]
    return schema


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: dict, schema_path: str | Path, checks: bool = True) -> dict:
    """Validate ``config`` against the schema, fill defaults in place, check cross references; return it.

    ``checks=False`` (a Snakemake job re-reading the workflow, ``not workflow.is_main_process``: the main
    process has refused a bad config before any job started) fills the same defaults but skips the
    registry-name enums and the stage options, whose imports (torch, transformers) would otherwise cost every
    cluster job several seconds before its command starts."""
    demo = config.get("demo") or {}
    if demo.get("enabled"):
        _fill_missing(config, demo.get("defaults") or {})
    pretrain = config.get("pretrain")
    if isinstance(pretrain, dict) and "enabled" not in pretrain:
        pretrain["enabled"] = bool(pretrain.get("dataset"))
    validator = _validator_with_defaults(load_schema(schema_path, registry_names=checks))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config error at {_where(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("\n".join(lines))
    # Defaults filled into sub-objects created by defaults need a second pass to fill their own defaults.
    validator.validate(config)
    _expand_results(config, config["results"])
    _check_references(config)  # (these two also fill derived defaults: finetune.datasets, ...)
    _check_videoclip_references(config)
    if not checks:
        return config
    try:
        check_stage_options(config)
    except OptionError as exc:
        raise ConfigError(f"config error at {exc.path}: {exc.problem}") from None
    return config


def _fill_missing(config: dict, defaults: dict) -> None:
    """Deep-merge ``defaults`` under ``config`` in place: keys the config already has win."""
    for key, value in defaults.items():
        if key not in config:
            config[key] = json.loads(json.dumps(value))
        elif isinstance(config[key], dict) and isinstance(value, dict):
            _fill_missing(config[key], value)


def _expand_results(node, results: str):
    """``{results}`` in any string value stands for the results folder (so one key moves every output)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str):
            node[key] = value.replace("{results}", results)
        else:
            _expand_results(value, results)


def _check_references(config: dict) -> None:
    datasets = config["datasets"]
    pretrain = config.get("pretrain", {})
    if pretrain.get("enabled"):
        name = pretrain.get("dataset")
        if not name:
            raise ConfigError("config error at pretrain.dataset: required when pretrain.enabled is true")
        if name not in datasets:
            raise ConfigError(
                f"config error at pretrain.dataset: {name!r} is not one of datasets ({', '.join(datasets)})"
            )
        if "train" not in datasets[name]["annotations"]:
            raise ConfigError(f"config error at datasets.{name}.annotations: pre-training needs a 'train' split")
    finetune = config.setdefault("finetune", {})
    if not finetune.get("datasets"):
        # Default: fine-tune on every dataset with a train split except the pre-training corpus, so presets
        # for several datasets combine without each replacing the others' list.
        skip = pretrain.get("dataset") if pretrain.get("enabled") else None
        # Recognition datasets (label lines, no text) are never retrieval fine-tuning data.
        finetune["datasets"] = [n for n, ds in datasets.items() if n != skip and "train" in ds["annotations"]
                                and ds.get("task") != "recognition"]
    for name in finetune.get("datasets", []):
        if name not in datasets:
            raise ConfigError(
                f"config error at finetune.datasets: {name!r} is not one of datasets ({', '.join(datasets)})"
            )
        if "train" not in datasets[name]["annotations"]:
            raise ConfigError(f"config error at datasets.{name}.annotations: fine-tuning needs a 'train' split")
    for name in finetune.get("per_dataset", {}):
        if name not in finetune.get("datasets", []):
            raise ConfigError(f"config error at finetune.per_dataset.{name}: not listed in finetune.datasets")
    _check_paths(config)


def _built_by_demo(config: dict, path: str) -> bool:
    """Whether a rule of the enabled demo creates ``path`` (its videos, annotations and tiny models)."""
    if not (config.get("demo") or {}).get("enabled"):
        return False
    results = config["results"].rstrip("/")
    return any(path == f"{results}/{sub}" or path.startswith(f"{results}/{sub}/") for sub in ("demo", "pretrained"))


def _looks_like_path(value: str, results: str) -> bool:
    """A model reference that is a folder, not a hub id (``name`` or ``org/name``)."""
    results = results.rstrip("/")
    return (value.startswith(("/", "./", "../", "~")) or value in (".", "..") or value.count("/") > 1
            or value == results or value.startswith(results + "/") or "\\" in value)


def _check_model_reference(key: str, value: str, config: dict) -> None:
    """A path-like model that does not exist (or holds no config.json) fails now, not inside a job as an
    invalid hub repo id."""
    if not isinstance(value, str) or not value or not _looks_like_path(value, config["results"]):
        return
    if value.startswith("~"):
        raise ConfigError(f"config error at {key}: {value!r}: '~' is not expanded inside jobs; write the absolute "
                          f"path {str(Path(value).expanduser())!r}")
    if _built_by_demo(config, value):
        return
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"config error at {key}: {value!r} looks like a folder but does not exist (hub names are "
                          "'name' or 'org/name'; a local model is a folder written by save_pretrained)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"config error at {key}: folder {value!r} has no config.json: not a saved model "
                          "(save_pretrained / clipvip convert-official / huggingface-cli download write one)")


def _check_paths(config: dict) -> None:
    """Paths a dry run can check: dataset video folders and model folders (not the demo's, a rule makes them)."""
    for name, ds in config["datasets"].items():
        video_dir = ds.get("video_dir")
        if not isinstance(video_dir, str) or _built_by_demo(config, video_dir):
            continue
        if video_dir.startswith("~"):
            raise ConfigError(f"config error at datasets.{name}.video_dir: {video_dir!r}: '~' is not expanded "
                              f"inside jobs; write the absolute path {str(Path(video_dir).expanduser())!r}")
        if not Path(video_dir).is_dir():
            what = "is not a folder" if Path(video_dir).exists() else "does not exist"
            raise ConfigError(f"config error at datasets.{name}.video_dir: {video_dir!r} {what}")
    _check_model_reference("base_model", config.get("base_model"), config)
    captions = config.get("captions") or {}
    if captions.get("model") and (config.get("pretrain") or {}).get("enabled"):
        _check_model_reference("captions.model", captions["model"], config)


def check_stage_options(config: dict) -> None:
    """Build every stage's options from its config section, as its job will (raises ``OptionError``)."""
    from clipvip import evaluate_recognition
    from clipvip.captions import CaptionOptions
    from clipvip.demo_data import DemoOptions
    from clipvip.evaluate import EvaluateOptions
    from clipvip.frames.extract import FrameOptions
    from clipvip.tiny_models import TinyModelsOptions
    from clipvip.trainer.options import TrainOptions

    # Vita-CLIP recognition section (first: it also keeps recognition datasets out of finetune.datasets).
    evaluate_recognition.check_config(config)
    demo = config.get("demo", {})
    if demo.get("enabled"):
        DemoOptions.from_dict(demo.get("corpus"), "demo.corpus")
        TinyModelsOptions.from_dict(demo.get("tiny_models"), "demo.tiny_models")
    frames = {k: v for k, v in config["frames"].items() if k != "shard_size"}
    known = [*FrameOptions.option_fields(), "shard_size"]
    for key in frames:
        if key not in known:  # the section also holds the workflow's shard_size: suggest from both
            raise OptionError(f"frames.{key}", f"unknown option of `clipvip frames`{did_you_mean(key, known)} "
                              f"(valid: {', '.join(sorted(known))})")
    if "num_frames" in frames:
        raise OptionError("frames.num_frames", "frames per clip are a dataset setting: set datasets.<name>.num_frames")
    FrameOptions.from_dict(frames, "frames")
    for name, ds in config["datasets"].items():
        # Per-dataset frames overrides (e.g. a fixed-rate pool, pool_fps, for long pre-training videos only).
        override = ds.get("frames") or {}
        if "num_frames" in override or "shard_size" in override:
            raise OptionError(f"datasets.{name}.frames", "num_frames is datasets.<name>.num_frames and shard_size "
                              "is the workflow's frames.shard_size")
        FrameOptions.from_dict({**frames, **override}, f"datasets.{name}.frames")
    captions = dict(config.get("captions", {}))
    if not captions.get("model"):
        if config["pretrain"]["enabled"] and needs_captions(config):
            raise OptionError("captions.model", "required: post-pretraining with a caption loss "
                              f"({', '.join(sorted(v['loss'] for v in variants(config).values()))}) needs a captioner")
        captions["model"] = "-"  # not needed: check the other keys only
    CaptionOptions.from_dict(captions, "captions")
    if config["pretrain"]["enabled"]:
        TrainOptions.from_dict(config["pretrain"].get("options"), "pretrain", "pretrain.options")
        for variant in variants(config):
            TrainOptions.from_dict(pretrain_options(config, variant), "pretrain", "pretrain.options")
    finetune = config["finetune"]
    TrainOptions.from_dict(finetune["options"], "finetune", "finetune.options")
    for name, block in finetune["per_dataset"].items():
        TrainOptions.from_dict(block, "finetune", f"finetune.per_dataset.{name}")
    for variant in finetuned_variants(config):
        for name in finetune["datasets"]:
            TrainOptions.from_dict(finetune_options(config, variant, name), "finetune",
                                   f"finetune.per_dataset.{name}")
    EvaluateOptions.from_dict(config["evaluate"]["options"], "evaluate.options")
    check_analysis_options(config)
    check_videoclip_options(config)


def check_analysis_options(config: dict) -> None:
    """The analyses' and the data-scale study's sections (part of ``check_stage_options``)."""
    from clipvip.analysis.data_scale import DataScaleOptions
    from clipvip.analysis.domain_gap import DomainGapOptions
    from clipvip.analysis.gallery import GalleryOptions

    analysis = config.get("analysis") or {}
    domain_gap = {k: v for k, v in (analysis.get("domain_gap") or {}).items() if k != "enabled"}
    DomainGapOptions.from_dict(domain_gap, "analysis.domain_gap")
    gallery = {k: v for k, v in (analysis.get("gallery") or {}).items() if k not in ("enabled", "variant")}
    GalleryOptions.from_dict(gallery, "analysis.gallery")
    for name in config["finetune"]["datasets"]:
        GalleryOptions.from_dict({**dataset_settings(config, name), **gallery}, "analysis.gallery")
    variant = (analysis.get("gallery") or {}).get("variant")
    if variant and variant not in finetuned_variants(config):
        raise OptionError("analysis.gallery.variant", f"{variant!r} is not one of the fine-tuned variants "
                          f"({', '.join(finetuned_variants(config))}): the gallery shows a fine-tuned model")
    study = config.get("study") or {}
    fractions = study.get("data_scale") or []
    if fractions and not config["pretrain"]["enabled"]:
        raise OptionError("study.data_scale", "the data-scale study post-pretrains on subsets: it needs "
                          "post-pretraining (pretrain.enabled)")
    for i, fraction in enumerate(fractions):
        DataScaleOptions.from_dict({"fraction": fraction, "seed": study.get("seed", 0)}, f"study.data_scale.{i}")
    if fractions:
        study_variant(config)


def needs_captions(config: dict) -> bool:
    """Whether some post-pretraining variant's loss has a caption (C) term."""
    from clipvip.registry import LOSSES

    return any("C" in LOSSES.get(v["loss"]).keys for v in variants(config).values())


def variants(config: dict) -> dict[str, dict]:
    """Ablation variants: name ``<encoder>-<loss>[-<pair_sampling>][-<batching>]`` (the last two only when not
    the defaults clip / random) → ``{"video_encoder": ..., "loss": ..., ["pair_sampling", "batching"]}``; plus, for each
    fraction f < 1 of ``study.data_scale``, ``<variant>-scale<f>`` (e.g. ``vip-vsc_fc-scale0p1``: the study's
    variant, default the first, post-pretrained on a nested subset) with ``"data_scale": f``. Fraction 1.0 is the
    study's variant itself (the same data and steps)."""
    ablation = config.get("ablation", {})
    encoders = ablation.get("video_encoder", ["vip"])
    losses = ablation.get("loss", ["vsc_fc"])
    # VideoCLIP's training ideas as ablation axes (issue 14); the defaults add no suffix and no key, so the
    # names and params of existing runs never change.
    samplings = ablation.get("pair_sampling", ["clip"])
    batchings = ablation.get("batching", ["random"])
    found = {}
    for enc, loss, pairs, batching in itertools.product(encoders, losses, samplings, batchings):
        name, keys = f"{enc}-{loss}", {"video_encoder": enc, "loss": loss}
        if pairs != "clip":
            name, keys = f"{name}-{pairs}", {**keys, "pair_sampling": pairs}
        if batching != "random":
            name, keys = f"{name}-{batching}", {**keys, "batching": batching}
        found[name] = keys
    study = config.get("study") or {}
    fractions = sorted({float(f) for f in study.get("data_scale") or [] if float(f) < 1.0})
    if fractions:
        from clipvip.analysis.data_scale import variant_suffix

        name = study_variant(config, found)
        for fraction in fractions:
            found[f"{name}-{variant_suffix(fraction)}"] = {**found[name], "data_scale": fraction}
    return found


def finetuned_variants(config: dict) -> list[str]:
    """The variants fine-tuned on every ``finetune.datasets`` entry: those whose loss is in ``finetune.losses``
    (null = every variant), data-scale variants included. Zero-shot rows cover every variant either way, so a
    budget can fine-tune the paper's loss for each encoder while the loss ablation stays zero-shot."""
    found = variants(config)
    losses = (config.get("finetune") or {}).get("losses")
    if losses is None:
        return list(found)
    grid = list(dict.fromkeys(v["loss"] for v in found.values()))
    unknown = [loss for loss in losses if loss not in grid]
    if unknown:
        raise ConfigError(f"config error at finetune.losses: {', '.join(map(repr, unknown))} is not a loss of the "
                          f"ablation grid (ablation.loss: {', '.join(grid)})")
    return _with_finetuned_loss(config, found)


def _with_finetuned_loss(config: dict, found: dict) -> list[str]:
    """Names in ``found`` whose loss ``finetune.losses`` lists (all when it is null)."""
    losses = (config.get("finetune") or {}).get("losses")
    return [k for k, v in found.items() if losses is None or v["loss"] in losses]


def study_variant(config: dict, base: dict | None = None) -> str:
    """The variant the data-scale study scales (``study.variant``, default the first fine-tuned ablation variant);
    the study compares fine-tuned models, so it must be fine-tuned."""
    if base is None:
        base = {k: v for k, v in variants(config).items() if "data_scale" not in v}
    tuned = _with_finetuned_loss(config, base)
    name = (config.get("study") or {}).get("variant") or next(iter(tuned or base))
    if name not in tuned and name in base:
        raise ConfigError(f"config error at study.variant: {name!r} is not fine-tuned (finetune.losses: "
                          f"{', '.join(config['finetune']['losses'])}); the data-scale study compares fine-tuned models")
    if name not in base:
        raise ConfigError(f"config error at study.variant: {name!r} is not one of the ablation variants "
                          f"({', '.join(base)})")
    return name


def dataset_settings(config: dict, name: str) -> dict:
    """The per-dataset keys every stage shares (frames per clip, text length, text mode)."""
    ds = config["datasets"][name]
    return {"num_frames": ds["num_frames"], "max_text_len": ds["max_text_len"], "text_mode": ds["text_mode"]}


def pretrain_options(config: dict, variant: str) -> dict:
    name = config["pretrain"]["dataset"]
    keys = {k: v for k, v in variants(config)[variant].items() if k != "data_scale"}  # data: the annotations
    return {**dataset_settings(config, name), **config["pretrain"]["options"], **keys}


def finetune_options(config: dict, variant: str, dataset: str) -> dict:
    finetune = config["finetune"]
    encoder = variants(config)[variant]["video_encoder"]
    return {
        **dataset_settings(config, dataset),
        "loss": "vs",
        **finetune["options"],
        **finetune["per_dataset"].get(dataset, {}),
        "video_encoder": encoder,
    }


# ------------------------------------------------------------------------------------------------ VideoCLIP
# VideoCLIP fine-tuning on captioned clips (official MMPT fine-tuning: the whole clip, up to 32 s, with its
# caption): one (clip, text) pair per video and step; overlapped windows and 16 draws per video are pre-training's.
VIDEOCLIP_FINETUNE_DEFAULTS = {"pair_sampling": "clip", "clips_per_video": 1}


def videoclip_section(config: dict) -> dict:
    return config.get("videoclip") or {"enabled": False}


def _check_videoclip_references(config: dict) -> None:
    """Defaults and cross references of the ``videoclip`` section (filled in place; only while enabled)."""
    vc = videoclip_section(config)
    if not vc.get("enabled"):
        return
    datasets = config["datasets"]
    pretrain = vc["pretrain"]
    if pretrain["enabled"]:
        if not pretrain.get("dataset"):
            pretrain["dataset"] = (config.get("pretrain") or {}).get("dataset")
        name = pretrain["dataset"]
        if not name:
            raise ConfigError("config error at videoclip.pretrain.dataset: required when videoclip.pretrain.enabled "
                              "(and no pretrain.dataset to default to)")
        if name not in datasets:
            raise ConfigError(f"config error at videoclip.pretrain.dataset: {name!r} is not one of datasets "
                              f"({', '.join(datasets)})")
        if "train" not in datasets[name]["annotations"]:
            raise ConfigError(f"config error at datasets.{name}.annotations: VideoCLIP pre-training needs a 'train' "
                              "split")
    finetune = vc["finetune"]
    if not finetune["datasets"]:
        skip = pretrain.get("dataset") if pretrain["enabled"] else None
        finetune["datasets"] = [n for n in config["finetune"]["datasets"] if n != skip]
    for i, name in enumerate(finetune["datasets"]):
        if name not in datasets:
            raise ConfigError(f"config error at videoclip.finetune.datasets.{i}: {name!r} is not one of datasets "
                              f"({', '.join(datasets)})")
        if datasets[name].get("task") == "recognition":
            raise ConfigError(f"config error at videoclip.finetune.datasets.{i}: {name!r} is a recognition dataset")
        if finetune["enabled"] and "train" not in datasets[name]["annotations"]:
            raise ConfigError(f"config error at datasets.{name}.annotations: VideoCLIP fine-tuning needs a 'train' "
                              "split (or videoclip.finetune.enabled: false, zero-shot rows only)")
        split = (config.get("evaluate") or {}).get("split", "test")
        if not finetune["enabled"] and split not in datasets[name]["annotations"]:
            raise ConfigError(f"config error at datasets.{name}.annotations: no {split!r} split to evaluate "
                              "VideoCLIP zero-shot on")
    for name in finetune["per_dataset"]:
        if name not in finetune["datasets"]:
            raise ConfigError(f"config error at videoclip.finetune.per_dataset.{name}: not listed in "
                              "videoclip.finetune.datasets")
    if not finetune["datasets"]:
        raise ConfigError("config error at videoclip.finetune.datasets: no downstream dataset to evaluate or "
                          "fine-tune VideoCLIP on (and finetune.datasets is empty)")
    features = config.setdefault("features", {})
    listed = features.setdefault("datasets", [])
    listed += [n for n in videoclip_datasets(config) if n not in listed]
    _check_model_reference("videoclip.init", vc["init"], config)


def videoclip_datasets(config: dict) -> list[str]:
    """Datasets VideoCLIP reads features of: its pre-training dataset (when on), then the downstream ones."""
    vc = videoclip_section(config)
    if not vc.get("enabled"):
        return []
    names = [vc["pretrain"]["dataset"]] if vc["pretrain"]["enabled"] else []
    return names + [n for n in vc["finetune"]["datasets"] if n not in names]


def _with_method(options: dict, where: str) -> dict:
    if options.get("method", "videoclip") != "videoclip":
        raise OptionError(f"{where}.method", f"{options['method']!r}: the videoclip section trains method videoclip "
                          "(CLIP-ViP is the pretrain / finetune sections)")
    return {**options, "method": "videoclip"}


def videoclip_pretrain_options(config: dict) -> dict:
    """``clipvip train --stage pretrain`` options of VideoCLIP post-pretraining (method videoclip's defaults)."""
    return _with_method(videoclip_section(config)["pretrain"]["options"], "videoclip.pretrain.options")


def videoclip_finetune_options(config: dict, dataset: str) -> dict:
    """``clipvip train --stage finetune`` options of VideoCLIP on ``dataset``: ``VIDEOCLIP_FINETUNE_DEFAULTS``,
    then ``videoclip.finetune.options``, then ``videoclip.finetune.per_dataset.<dataset>``."""
    finetune = videoclip_section(config)["finetune"]
    merged = {**VIDEOCLIP_FINETUNE_DEFAULTS, **finetune["options"], **finetune["per_dataset"].get(dataset, {})}
    return _with_method(merged, f"videoclip.finetune.per_dataset.{dataset}")


def videoclip_evaluate_options(config: dict, dataset: str) -> dict:
    """``clipvip evaluate`` options of a VideoCLIP row: the dataset's text mode, the official text length (61 tokens
    + [CLS]/[SEP] = 63, MMPT's max_len 96 - 32 video tokens - 3), then ``videoclip.evaluate.options``."""
    return {"text_mode": config["datasets"][dataset]["text_mode"], "max_text_len": 63,
            **videoclip_section(config)["evaluate"]["options"]}


def check_videoclip_options(config: dict) -> None:
    """Every options block of the ``videoclip`` section, as its jobs will build them (part of
    ``check_stage_options``; raises ``OptionError`` naming the key)."""
    from clipvip.evaluate import EvaluateOptions
    from clipvip.tiny_models import TinyBertOptions
    from clipvip.trainer.options import TrainOptions

    vc = videoclip_section(config)
    if not vc.get("enabled"):
        return
    TinyBertOptions.from_dict(vc["tiny_bert"], "videoclip.tiny_bert")
    if vc["pretrain"]["enabled"]:
        TrainOptions.from_dict(videoclip_pretrain_options(config), "pretrain", "videoclip.pretrain.options")
    finetune = vc["finetune"]
    shared = _with_method({**VIDEOCLIP_FINETUNE_DEFAULTS, **finetune["options"]}, "videoclip.finetune.options")
    TrainOptions.from_dict(shared, "finetune", "videoclip.finetune.options")
    for name in finetune["datasets"]:
        TrainOptions.from_dict(videoclip_finetune_options(config, name), "finetune",
                               f"videoclip.finetune.per_dataset.{name}")
        EvaluateOptions.from_dict(videoclip_evaluate_options(config, name), "videoclip.evaluate.options")
