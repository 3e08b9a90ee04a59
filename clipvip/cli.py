"""The ``clipvip`` console script: one subcommand per workflow stage.

Usage:
    clipvip <stage> [stage options]        e.g.  clipvip frames --video-dir V --ids ids.txt --out s.h5
    clipvip --help                         lists the stages

Stages are a registry of ``"module:function"`` strings, imported lazily so that ``clipvip frames`` never pays
for importing DeepSpeed. Each target is ``main(argv: list[str] | None) -> int | None``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

STAGES: dict[str, tuple[str, str]] = {
    "demo-data": ("clipvip.demo_data:main", "write the synthetic demo corpus (MP4s + JSONL annotations)"),
    "tiny-models": ("clipvip.tiny_models:main", "build the demo's tiny CLIP, tokenizer and captioner locally"),
    "convert-official": ("clipvip.model.official:main", "turn a released CLIP-ViP .pt into a model folder"),
    "split-ids": ("clipvip.frames:split_ids_main", "split a dataset's clip ids into shard id lists"),
    "frames": ("clipvip.frames:main", "decode videos with decord into one HDF5 frame-store shard"),
    "frames-index": ("clipvip.frames:index_main", "merge a dataset's shards into an index + failure manifest"),
    "captions": ("clipvip.captions:main", "caption each clip's middle frame with an image captioner"),
    "train": ("clipvip.train:main", "post-pretrain or fine-tune under DeepSpeed"),
    "evaluate": ("clipvip.evaluate:main", "text<->video retrieval metrics for a model on a dataset split"),
    "tables": ("clipvip.tables:main", "aggregate metrics into CSV/Markdown tables and plots"),
}


def load_stage(name: str):
    target = STAGES[name][0]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def parse_options(text: str | None) -> dict:
    """Parse a stage's ``--options`` value: a JSON object (the stage's config section) or ``@file.json``."""
    if not text:
        return {}
    if text.startswith("@"):
        with open(text[1:]) as fh:
            text = fh.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--options: not valid JSON ({exc}): {text[:200]!r}")
    if not isinstance(value, dict):
        raise SystemExit(f"--options: expected a JSON object, got {type(value).__name__}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        parser = argparse.ArgumentParser(prog="clipvip", description=__doc__.splitlines()[0])
        parser.print_help()
        print("\nstages:")
        for name, (_, help_text) in STAGES.items():
            print(f"  {name:<14} {help_text}")
        return 0
    if argv[0] == "--version":
        from clipvip import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        print(f"clipvip: unknown stage {name!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    result = load_stage(name)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
