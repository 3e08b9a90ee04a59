"""Start the ranks of a ``clipvip train`` run the way ``opts.launcher`` says, and map their end to an exit code.

Usage (``clipvip.train.main``): ``code = launch(argv, args, opts)``.

- ``local`` with ``nprocs > 1`` (in the parent): re-executes ``clipvip train <argv>`` under torchrun; torchrun
  reports any rank failure as 1, so the status file (``clipvip.trainer.checkpoints``) says why: 3 diverged,
  75 preempted, or a rank's ``UserError`` (re-raised here: one line, exit 2).
- ``submitit``: submits the same command line as a submitit job and waits (``clipvip.trainer.submit``).
- otherwise: this process is a rank (``run``).
"""
from __future__ import annotations

import os
from pathlib import Path

from clipvip.stage import UserError
from clipvip.trainer import checkpoints as ck


def rank_outcome(ckpt_dir, code: int) -> int:
    """The exit code of a finished multi-rank run from its launcher's ``code`` and the status file."""
    status = ck.read_status(ckpt_dir)
    if status.get("status") == "error":
        raise UserError(status.get("message") or "a rank stopped on bad input (see the log above)")
    return ck.STATUS_CODES.get(status.get("status"), code) if code else 0


def launch(argv: list[str], args, opts) -> int:
    from clipvip.distributed import CHILD_ENV, relaunch_local

    if opts.launcher == "local" and opts.nprocs > 1 and not os.environ.get(CHILD_ENV):
        Path(args.checkpoint_dir, "status.json").unlink(missing_ok=True)  # no stale status from an old run
        code = relaunch_local(["clipvip", "train", *argv], opts.nprocs)
        return rank_outcome(args.checkpoint_dir, code)
    if opts.launcher == "submitit":
        from clipvip.trainer.submit import submit_and_wait

        Path(args.checkpoint_dir, "status.json").unlink(missing_ok=True)
        code = submit_and_wait(argv, args, opts)
        return rank_outcome(args.checkpoint_dir, code)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from clipvip.trainer.loop import run

    return run(args, opts, launcher="none" if opts.launcher == "local" else opts.launcher)
