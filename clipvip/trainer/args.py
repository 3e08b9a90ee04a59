"""The ``clipvip train`` command line: arguments and ``--options`` -> ``(args, TrainOptions)``.

Usage:
    args, opts = parse_args(["--stage", "finetune", "--frames-index", ..., "--options", '{"lr": 1e-5}'])

Lives in the trainer package (not in the stage module ``clipvip.train``) because the ranks parse the same
command line again: the submitit job (``clipvip.trainer.submit``) and each torchrun child.
"""
from __future__ import annotations

import argparse

from clipvip.stage import parse_options

DESCRIPTION = ("post-pretraining (--stage pretrain), retrieval fine-tuning (--stage finetune) or action recognition "
               "(--task recognition --class-list FILE) under DeepSpeed")


def build_parser() -> argparse.ArgumentParser:
    from clipvip.registry import LAUNCHERS

    p = argparse.ArgumentParser(prog="clipvip train", description=DESCRIPTION)
    p.add_argument("--stage", choices=["pretrain", "finetune"],
                   help="required for task retrieval; task recognition is a fine-tuning (default finetune)")
    p.add_argument("--task", choices=["retrieval", "recognition"], help="overrides options.task")
    p.add_argument("--class-list", help="recognition: class names, one per line (line k = class k-1)")
    p.add_argument("--frames-index", required=True, help="FrameIndex JSON of the training clips")
    p.add_argument("--annotations", required=True, help="training JSONL (captions, or subtitles for pretrain; "
                   "recognition: {\"clip_id\", \"label\"} lines)")
    p.add_argument("--captions", nargs="*", default=[], help="auxiliary caption JSONL shards (pretrain: C)")
    p.add_argument("--val-annotations", help="validation JSONL: enables best-checkpoint selection")
    p.add_argument("--val-frames-index", help="FrameIndex JSON of the validation clips (default: --frames-index)")
    p.add_argument("--features-index", help="method videoclip: feature index JSON (`clipvip features`)")
    p.add_argument("--init", required=True, help="model folder (ours or plain HF CLIP) or hub name")
    p.add_argument("--out", required=True, help="run folder (declared outputs)")
    p.add_argument("--checkpoint-dir", required=True, help="DeepSpeed checkpoints (outside --out)")
    p.add_argument("--options", default="", help="JSON object or @file.json (TrainOptions keys)")
    # How ranks start is a workflow resource, not a model parameter: these override the options' keys.
    p.add_argument("--launcher", choices=LAUNCHERS.names(), help="overrides options.launcher")
    p.add_argument("--nprocs", type=int, help="overrides options.nprocs (ranks for launcher local/submitit)")
    return p


def parse_args(argv: list[str]):
    """``(argparse.Namespace, TrainOptions)``; bad options raise ``OptionError`` (a ``UserError``)."""
    from clipvip.trainer.options import TrainOptions

    parser = build_parser()
    args = parser.parse_args(argv)
    values = parse_options(args.options)
    for key in ("launcher", "nprocs", "task"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    task = values.get("task", "retrieval")
    if args.stage is None:
        if task != "recognition":
            parser.error("--stage is required (pretrain or finetune) unless --task recognition")
        args.stage = "finetune"
    if task == "recognition" and not args.class_list:
        parser.error("--task recognition needs --class-list FILE")
    if task != "recognition" and args.class_list:
        parser.error("--class-list is for --task recognition")
    opts = TrainOptions.from_dict(values, args.stage)
    args.task = opts.task
    return args, opts
