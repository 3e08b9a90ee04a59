"""Turn any launcher's environment into torch.distributed's, and start local ranks.

Usage (inside the trainer, before ``deepspeed.init_distributed``):
    info = init_distributed_env("srun")          # or "local" / "none" / "submitit"
    deepspeed.init_distributed(dist_backend=info.backend)

Launchers (option ``launcher``):
- ``none``: this process is one rank of an already-launched job (torchrun, the deepspeed launcher) or a
  single process: RANK/WORLD_SIZE/... are read from the environment, defaulting to one rank.
- ``local``: ``nprocs`` ranks on this machine. The parent re-executes the same command line under
  ``torch.distributed.run`` (torchrun) via :func:`relaunch_local`; the children see ``CLIPVIP_CHILD=1``
  and behave like ``none``. OMP_NUM_THREADS defaults to 1 per rank on CPU (2 ranks on 2 cores otherwise
  oversubscribe badly).
- ``srun``: ranks started by ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the step's node list).
  The Snakemake SLURM executor strips ``SLURM_*`` from a rule's environment, but ``srun`` inside the job
  sets fresh ones for its tasks, so the rule's shell is
  ``{resources.mpi} -n {resources.tasks} --ntasks-per-node {resources.tasks_per_node} python -m clipvip train ...``
  with ``launcher: srun``. MASTER_ADDR is the first host of the node list, MASTER_PORT is derived from the
  job id (same on every task, distinct between concurrent jobs).
- ``submitit``: ranks started by submitit (see ``clipvip.train`` for the submission side);
  ``submitit.helpers.TorchDistributedEnvironment().export()`` sets the variables.

Importing this module does not import torch or DeepSpeed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from clipvip.registry import LAUNCHERS
from clipvip.stage import UserError

CHILD_ENV = "CLIPVIP_CHILD"  # set for ranks started by relaunch_local


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` = nccl when CUDA is available, gloo otherwise."""
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM host list syntax: ``node[01-03,07],gpu5`` -> ``[node01, node02, node03, node07, gpu5]``.

    ``scontrol show hostnames`` is the reference; this parser covers the usual single-bracket forms so that
    tasks on nodes without the SLURM client still work.
    """
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[\]]*)(?:\[([^\]]*)\])?([^,\[\]]*)", nodelist):
        if not prefix and not ranges:
            continue
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for number in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{number:0{width}d}{suffix}")
    return hosts


def first_host(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return expand_nodelist(nodelist)[0]


def slurm_port(job_id: str) -> int:
    # Deterministic per job so every task agrees without communicating; spread to avoid concurrent jobs
    # sharing a node colliding.
    return 15000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def _export(rank: int, world: int, local: int, addr: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local), MASTER_ADDR=addr,
                      MASTER_PORT=str(port))


@LAUNCHERS.register("srun")
def _srun_env(env) -> None:
    try:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
    except KeyError as exc:
        raise UserError(f"launcher 'srun': {exc.args[0]} is not set; start the ranks with "
                        "`srun -n N clipvip train ...`") from None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or socket.gethostname()
    # Always from the step itself: sbatch exports the submitting shell's environment, so an inherited
    # MASTER_ADDR/PORT (another job's, a test's) would send every rank to the wrong rendezvous.
    _export(rank, world, local, first_host(nodelist), slurm_port(env.get("SLURM_JOB_ID", "0")))


@LAUNCHERS.register("submitit")
def _submitit_env(env) -> None:
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@LAUNCHERS.register("local")
@LAUNCHERS.register("none")
def _launched_env(env) -> None:
    """Already launched (torchrun, the deepspeed launcher, ``local`` re-executed) or a single process."""
    if "RANK" not in env:  # a single process, nobody launched us
        _export(0, 1, 0, "127.0.0.1", free_port())
    env.setdefault("LOCAL_RANK", env["RANK"])


def init_distributed_env(launcher: str, backend: str = "auto") -> DistInfo:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from ``launcher``'s environment."""
    env = os.environ
    LAUNCHERS.get(launcher)(env)
    info = DistInfo(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env["LOCAL_RANK"]),
                    master_addr=env["MASTER_ADDR"], master_port=int(env["MASTER_PORT"]),
                    backend=resolve_backend(backend))
    # One line per rank in the job log: which launcher started it and where the ranks meet.
    print(f"[clipvip] rank {info.rank}/{info.world_size} local_rank {info.local_rank} launcher {launcher} "
          f"host {socket.gethostname()} master {info.master_addr}:{info.master_port} "
          f"slurm_job {env.get('SLURM_JOB_ID', '-')}", file=sys.stderr, flush=True)
    return info


def relaunch_local(module_argv: list[str], nprocs: int) -> int:
    """Run ``python -m <module_argv>`` as ``nprocs`` local ranks under torchrun; returns its exit code.

    torchrun kills the surviving ranks when one dies and forwards SIGTERM/SIGINT to them, so preemption
    and crashes behave as under a scheduler.
    """
    env = dict(os.environ, **{CHILD_ENV: "1"})
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
           "-m", *module_argv]
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        # torchrun turns SIGTERM into SIGTERM for every rank (which checkpoints and exits "preempted");
        # SIGUSR1 (SLURM's --signal) would simply kill torchrun, so it is forwarded as SIGTERM.
        proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # torchrun got the SIGINT too (same process group) and shuts the ranks down
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
