"""``clipvip train``: post-pretraining (``--stage pretrain``) or fine-tuning (``--stage finetune``) under DeepSpeed.

Usage:
    clipvip train --stage finetune --frames-index R/frames/msrvtt/index.json --annotations train.jsonl \\
        --val-annotations val.jsonl --init R/runs/pretrain/vsc_fc/model --out R/runs/finetune/x/msrvtt \\
        --checkpoint-dir R/checkpoints/finetune/x/msrvtt --options '{"zero_stage": 2, "nprocs": 2}'
    clipvip train --stage pretrain ... --captions R/captions/hdvila/00000.jsonl ... --options @opts.json

Every ``--options`` key, its default and meaning: ``clipvip.trainer.options.TrainOptions``.
Launchers (``launcher``): ``local`` with ``nprocs > 1`` re-executes this command under torchrun;
``srun`` = one rank per srun task; ``submitit`` submits this command as a submitit job and waits;
``none`` = already launched (torchrun / deepspeed launcher) or a single process. See ``clipvip.distributed``.

Outputs in ``--out``: ``model/`` (consolidated fp32 ``CLIPViPModel`` + tokenizer; the best-validation
checkpoint when ``--val-annotations`` is given), ``metrics.jsonl``, ``config.json``,
``deepspeed_config.json``, ``selection.json`` (with validation). Checkpoints in ``--checkpoint-dir`` (keep it
outside ``--out``); a rerun resumes from the latest. Exit codes: 0 done, 3 non-finite loss, 75 preempted
(checkpointed; rerun to resume), other = crash.
"""
from __future__ import annotations

import argparse
import os
import sys

from clipvip.cli import parse_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipvip train", description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, choices=["pretrain", "finetune"])
    p.add_argument("--frames-index", required=True, help="FrameIndex JSON of the training clips")
    p.add_argument("--annotations", required=True, help="training JSONL (captions, or subtitles for pretrain)")
    p.add_argument("--captions", nargs="*", default=[], help="auxiliary caption JSONL shards (pretrain: C)")
    p.add_argument("--val-annotations", help="validation JSONL: enables best-checkpoint selection")
    p.add_argument("--val-frames-index", help="FrameIndex JSON of the validation clips (default: --frames-index)")
    p.add_argument("--init", required=True, help="model folder (ours or plain HF CLIP) or hub name")
    p.add_argument("--out", required=True, help="run folder (declared outputs)")
    p.add_argument("--checkpoint-dir", required=True, help="DeepSpeed checkpoints (outside --out)")
    p.add_argument("--options", default="", help="JSON object or @file.json (TrainOptions keys)")
    # How ranks start is a workflow resource, not a model parameter: these override the options' keys.
    p.add_argument("--launcher", choices=["local", "srun", "submitit", "none"], help="overrides options.launcher")
    p.add_argument("--nprocs", type=int, help="overrides options.nprocs (ranks for launcher local/submitit)")
    return p


def parse_args(argv: list[str]):
    from clipvip.trainer.options import TrainOptions

    args = build_parser().parse_args(argv)
    values = parse_options(args.options)
    for key in ("launcher", "nprocs"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return args, TrainOptions.from_dict(values, args.stage)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, opts = parse_args(argv)
    from clipvip.distributed import CHILD_ENV, relaunch_local

    if opts.launcher == "local" and opts.nprocs > 1 and not os.environ.get(CHILD_ENV):
        from pathlib import Path

        from clipvip.trainer.checkpoints import STATUS_CODES, read_status

        Path(args.checkpoint_dir, "status.json").unlink(missing_ok=True)  # no stale status from an old run
        code = relaunch_local(["clipvip", "train", *argv], opts.nprocs)
        # torchrun reports any rank failure as 1; the status file says why.
        status = read_status(args.checkpoint_dir).get("status")
        return STATUS_CODES.get(status, code) if code else 0
    if opts.launcher == "submitit":
        from clipvip.trainer.submit import submit_and_wait

        return submit_and_wait(argv, args, opts)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from clipvip.trainer.loop import run

    return run(args, opts, launcher="none" if opts.launcher == "local" else opts.launcher)


if __name__ == "__main__":
    sys.exit(main())
