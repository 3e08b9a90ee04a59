"""Workflow configuration: JSON-schema validation with defaults, and the names the workflow derives from it.

Usage (the Snakefile does this before building the DAG):
    from clipvip.config import validate_config
    validate_config(config, "workflow/schemas/config.schema.yaml")   # fills defaults in place

A bad value raises ``ConfigError`` whose message names the key path and what was expected, e.g.
``config error at datasets.demo_msrvtt.num_frames: 'eight' is not of type 'integer'``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema
import yaml


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


def load_schema(path: str | Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` against the schema, fill defaults in place, check cross references; return it."""
    demo = config.get("demo") or {}
    if demo.get("enabled"):
        _fill_missing(config, demo.get("defaults") or {})
    validator = _validator_with_defaults(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config error at {_where(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("\n".join(lines))
    # Defaults filled into sub-objects created by defaults need a second pass to fill their own defaults.
    validator.validate(config)
    _expand_results(config, config["results"])
    _check_references(config)
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


def demo_dir(config: dict) -> str:
    return f"{config['results']}/demo"


def _check_references(config: dict) -> None:
    datasets = config["datasets"]
    pretrain = config.get("pretrain", {})
    if pretrain.get("enabled"):
        name = pretrain.get("dataset")
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
        finetune["datasets"] = [n for n, ds in datasets.items() if n != skip and "train" in ds["annotations"]]
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


def variants(config: dict) -> dict[str, dict]:
    """Ablation variants: name ``<encoder>-<loss>`` → ``{"video_encoder": ..., "loss": ...}``."""
    ablation = config.get("ablation", {})
    encoders = ablation.get("video_encoder", ["vip"])
    losses = ablation.get("loss", ["vsc_fc"])
    return {f"{enc}-{loss}": {"video_encoder": enc, "loss": loss} for enc, loss in itertools.product(encoders, losses)}


def dataset_settings(config: dict, name: str) -> dict:
    """The per-dataset keys every stage shares (frames per clip, text length, text mode)."""
    ds = config["datasets"][name]
    return {"num_frames": ds["num_frames"], "max_text_len": ds["max_text_len"], "text_mode": ds["text_mode"]}


def pretrain_options(config: dict, variant: str) -> dict:
    name = config["pretrain"]["dataset"]
    return {**dataset_settings(config, name), **config["pretrain"]["options"], **variants(config)[variant]}


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
