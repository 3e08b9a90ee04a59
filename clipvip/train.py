"""``clipvip train``: post-pretraining (``--stage pretrain``) or fine-tuning (``--stage finetune``) under DeepSpeed.

Usage:
    clipvip train --stage finetune --frames-index R/frames/msrvtt/index.json --annotations train.jsonl \\
        --val-annotations val.jsonl --init R/runs/pretrain/vsc_fc/model --out R/runs/finetune/x/msrvtt \\
        --checkpoint-dir R/checkpoints/finetune/x/msrvtt --options '{"zero_stage": 2, "nprocs": 2}'
    clipvip train --stage pretrain ... --captions R/captions/hdvila/00000.jsonl ... --options @opts.json

Every ``--options`` key, its default and meaning: ``clipvip.trainer.options.TrainOptions``; the command line:
``clipvip.trainer.args``; what is derived from them (DeepSpeed JSON, batch geometry, workers, precision):
``clipvip.trainer.plan``. Launchers (``launcher``): ``local`` with ``nprocs > 1`` re-executes this command
under torchrun; ``srun`` = one rank per srun task; ``submitit`` submits this command as a submitit job and
waits; ``none`` = already launched (torchrun / deepspeed launcher) or a single process. See
``clipvip.distributed``.

Outputs in ``--out``: ``model/`` (consolidated fp32 ``CLIPViPModel`` + tokenizer; the best-validation
checkpoint when ``--val-annotations`` is given), ``metrics.jsonl``, ``config.json``,
``deepspeed_config.json``, ``selection.json`` (with validation). Checkpoints in ``--checkpoint-dir`` (keep it
outside ``--out``); a rerun resumes from the latest. Exit codes: 0 done, 2 bad input (one line on stderr),
3 non-finite loss, 75 preempted (checkpointed; rerun to resume), other = crash.
"""
from __future__ import annotations

import sys

from clipvip.stage import stage_main
from clipvip.trainer.args import build_parser, parse_args  # noqa: F401  (re-exported for callers)


@stage_main("train")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, opts = parse_args(argv)
    from clipvip.trainer.launch import launch

    return launch(argv, args, opts)


if __name__ == "__main__":
    sys.exit(main())
