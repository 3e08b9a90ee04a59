"""``launcher: submitit``: ``clipvip train`` submits itself as a submitit job and waits for it.

Usage (what ``clipvip.trainer.launch.launch`` does): ``code = submit_and_wait(argv, args, opts)``.

The job runs ``submitit_nodes`` x ``submitit_tasks_per_node`` tasks; each task is one rank and exports
torch.distributed's variables with ``TorchDistributedEnvironment`` (``clipvip.distributed``). On a cluster
(``AutoExecutor``, ``slurm_*`` parameters from the options) a timeout or preemption calls
``TrainJob.checkpoint()``, which requeues the same job; the trainer then resumes from the latest DeepSpeed
checkpoint in ``--checkpoint-dir``. ``submitit_cluster: local`` uses submitit's ``LocalExecutor`` (real
processes on this machine, used by the tests). Job logs go to ``<checkpoint-dir>/submitit/``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """Picklable callable: one rank of ``clipvip train`` with the original command line."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> int:
        from clipvip.trainer.args import parse_args
        from clipvip.trainer.loop import run

        args, opts = parse_args(self.argv)
        code = run(args, opts, launcher="submitit")
        if code:
            # A failed task must fail the job (job.result() raises) instead of returning quietly.
            raise RuntimeError(f"clipvip train rank exited with code {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        # Requeue the same command; the rerun resumes from --checkpoint-dir's latest checkpoint.
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))


def submit_and_wait(argv: list[str], args, opts) -> int:
    folder = Path(args.checkpoint_dir) / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=opts.submitit_cluster)
    params = dict(nodes=opts.submitit_nodes, tasks_per_node=opts.submitit_tasks_per_node or opts.nprocs,
                  timeout_min=opts.submitit_timeout_min, name="clipvip-train")
    if opts.submitit_gpus_per_node:
        params["gpus_per_node"] = opts.submitit_gpus_per_node
    if opts.submitit_cpus_per_task:
        params["cpus_per_task"] = opts.submitit_cpus_per_task
    if opts.submitit_partition:
        params["slurm_partition"] = opts.submitit_partition
    if opts.submitit_slurm_args:
        params["slurm_additional_parameters"] = dict(opts.submitit_slurm_args)
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(argv))
    print(f"[clipvip train] submitted submitit job {job.job_id} ({executor.cluster}); logs in {folder}",
          file=sys.stderr, flush=True)
    try:
        job.results()  # every task's result; raises if any task failed
    except Exception as exc:  # submitit wraps the task's traceback in its own exception types
        print(f"[clipvip train] submitit job {job.job_id} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
