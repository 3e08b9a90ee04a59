"""The ``clipvip`` console script: one subcommand per workflow stage.

Usage:
    clipvip <stage> [stage options]        e.g.  clipvip frames --video-dir V --ids ids.txt --out s.h5
    clipvip --help                         lists the stages

Stages are a registry of ``"module:function"`` strings, imported lazily so that ``clipvip frames`` never pays
for importing DeepSpeed. Each target is ``main(argv: list[str] | None) -> int``, wrapped by
``clipvip.stage.stage_main`` (one error line and exit 2 for user errors). This module only dispatches: no
stage imports it; what stages share lives in ``clipvip.stage``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

STAGES: dict[str, tuple[str, str]] = {
    "demo-data": ("clipvip.demo_data:main", "write the synthetic demo corpus (MP4s + JSONL annotations)"),
    "tiny-models": ("clipvip.tiny_models:main", "build the demo's tiny CLIP, tokenizer and captioner locally"),
    "convert-official": ("clipvip.model.official:main", "turn a released CLIP-ViP .pt into a model folder"),
    "split-ids": ("clipvip.frames:split_ids_main", "split a dataset's clip ids into shard id lists"),
    "frames": ("clipvip.frames:main", "decode videos with decord into one HDF5 frame-store shard"),
    "frames-index": ("clipvip.frames:index_main", "merge a dataset's shards into an index + failure manifest"),
    "features": ("clipvip.features:main", "per-second video features (VideoCLIP inputs) into one HDF5 shard"),
    "corpus-arrow": ("clipvip.corpus_tables:main", "write the corpus Arrow tables (annotations, captions)"),
    "captions": ("clipvip.captions:main", "caption each clip's middle frame with an image captioner"),
    "train": ("clipvip.train:main", "post-pretrain or fine-tune under DeepSpeed"),
    "evaluate": ("clipvip.evaluate:main", "text<->video retrieval metrics for a model on a dataset split"),
    "tables": ("clipvip.tables:main", "aggregate metrics into CSV/Markdown tables and plots"),
    "demo-claims": ("clipvip.demo_claims:main", "the demo's claims table (what the demo shows, pass/fail)"),
    "evaluate-recognition": ("clipvip.evaluate_recognition:main", "action-recognition top-1/top-5 (supervised or zero-shot)"),
    "recognition-tables": ("clipvip.recognition_tables:main", "aggregate recognition metrics into CSV/Markdown tables"),
    "convert-vita": ("clipvip.model.vita_official:main", "turn the released Vita-CLIP .pth into a model folder"),
    "convert-videoclip": ("clipvip.model.videoclip:main", "turn the released MMPT VideoCLIP checkpoint_best.pt into a model folder"),
    "domain-gap": ("clipvip.analysis.domain_gap:main", "language-domain gap between text corpora (K-means NMI)"),
    "data-scale-subset": ("clipvip.analysis.data_scale:subset_main", "nested subset of the pre-training annotations"),
    "data-scale-plot": ("clipvip.analysis.data_scale:plot_main", "downstream R@1 against post-pretraining data size"),
    "gallery": ("clipvip.analysis.gallery:main", "top-k retrieved test clips of several models as an HTML page"),
    "search": ("clipvip.analysis.search:main", "text queries against a frame store through a cached faiss index"),
    "install-profile": ("clipvip.install_profile:main", "write a named Snakemake SLURM profile (account, partitions, GPUs) into ~/.config/snakemake"),
}


def load_stage(name: str):
    target = STAGES[name][0]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        # Like git: `clipvip` alone is a usage error (help on stderr, exit 2); `clipvip --help` is not.
        out = sys.stdout if argv else sys.stderr
        parser = argparse.ArgumentParser(prog="clipvip", description=__doc__.splitlines()[0])
        parser.print_help(out)
        print("\nstages:", file=out)
        for name, (_, help_text) in STAGES.items():
            print(f"  {name:<16} {help_text}", file=out)
        return 0 if argv else 2
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
