"""Tests against a real single-node SLURM started by tests/slurm/cluster.sh (issue 6).

The session fixture `slurm_cluster` starts munged, mariadbd, slurmdbd, slurmctld and slurmd once per
pytest session (only when a test that uses it is selected) and stops them at the end, also when tests fail
or pytest is interrupted. If the cluster was already up before the session (started by hand), it is reused
and left running. Set CLIPVIP_SKIP_SLURM=1 to skip these tests.

Run: .venv/bin/python -m pytest -q -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
TEST_PROFILE = REPO / "profiles" / "slurm-test"
VENV_BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}
SACCT_FIELDS = ["JobID", "JobName", "State", "ExitCode", "NCPUS", "ReqMem", "NTasks", "Account", "Partition"]


def _clean_env(**extra: str) -> dict[str, str]:
    """Environment for SLURM clients and Snakemake: the venv first on PATH, no inherited SLURM job or
    Snakemake profile settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


@dataclass
class SlurmCluster:
    """Handle on the running test cluster (what `cluster.sh env` reports) with small helpers."""

    host: str
    partition: str
    account: str
    state_dir: Path
    script: Path = SCRIPT
    profile: Path = TEST_PROFILE
    env: dict[str, str] = field(default_factory=_clean_env)

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable`; returns the job id."""
        out = self.run("sbatch", "--parsable", "-p", self.partition, "-A", self.account, *args).stdout
        return out.strip().split(";")[0]

    def sacct(self, jobid: str | int) -> list[dict[str, str]]:
        """Rows of `sacct -j ID` (allocation, .batch, steps) as dicts keyed by SACCT_FIELDS."""
        out = self.run("sacct", "-j", str(jobid), f"--format={','.join(SACCT_FIELDS)}", "-P", "-n").stdout
        return [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line.strip()]

    def wait_job(self, jobid: str | int, timeout: float = 120) -> list[dict[str, str]]:
        """Wait until the accounting DB holds the job's final record; return its sacct rows.

        slurmdbd is eventually consistent: a step record that arrives before the job's own start record
        makes a placeholder job row (JobName "allocation", garbage ReqMem) that is fixed a few seconds
        later. So wait until the controller has forgotten the job as active, every row is terminal, the
        allocation row is not the placeholder, and two reads 0.5 s apart agree."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, str]] = []
        previous = None
        while time.monotonic() < deadline:
            active = self.run("squeue", "-h", "-j", str(jobid), "-t", "PD,R,CG,CF,S", check=False).stdout.strip()
            rows = self.sacct(jobid)
            alloc = next((r for r in rows if r["JobID"] == str(jobid)), None)
            final = (not active and alloc is not None and alloc["JobName"] != "allocation"
                     and re.fullmatch(r"\d+(\.\d+)?[KMGT]", alloc["ReqMem"]) is not None
                     and all(r["State"].split()[0] in TERMINAL for r in rows))
            if final and rows == previous:
                return rows
            previous = rows if final else None
            time.sleep(0.5)
        raise AssertionError(f"job {jobid} not finished after {timeout} s; sacct: {rows}")

    def snakemake(self, workdir: Path, *args: str, profile: Path | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:
        """Run Snakemake with the SLURM executor profile (default: profiles/slurm-test) in workdir."""
        cmd = [sys.executable, "-m", "snakemake", "--profile", str(profile or self.profile),
               "--directory", str(workdir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=workdir, timeout=timeout)

    def stop_daemon(self, name: str) -> None:
        self.run(str(self.script), "stop-daemon", name)

    def start_daemon(self, name: str) -> None:
        self.run(str(self.script), "start-daemon", name, timeout=180)

    def ready(self) -> bool:
        return self.run(str(self.script), "status", check=False).returncode == 0


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=_clean_env(),
                          timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the project's single-node SLURM for the session; stop it at the end (even on failures)."""
    if os.environ.get("CLIPVIP_SKIP_SLURM") == "1":
        pytest.skip("CLIPVIP_SKIP_SLURM=1")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster needs root (it runs its daemons as root and writes /etc/slurm)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is unavailable to install it (Debian/Ubuntu only)")

    already_up = _script("status", timeout=60).returncode == 0
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped or already_up:
            return
        stopped = True
        proc = _script("stop", timeout=300)
        if proc.returncode != 0:
            print(f"cluster.sh stop failed:\n{proc.stderr}", file=sys.stderr)

    # Make SIGTERM (e.g. a CI timeout) unwind like Ctrl-C so fixture teardown runs; atexit as last resort.
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(stop)
    try:
        if not already_up:
            t0 = time.monotonic()
            proc = _script("start", timeout=1800)  # includes apt-get install on a fresh machine
            if proc.returncode != 0:
                pytest.fail(f"tests/slurm/cluster.sh start failed ({proc.returncode}):\n{proc.stderr}",
                            pytrace=False)
            print(f"\nSLURM cluster started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        facts = dict(line.split("=", 1) for line in _script("env", timeout=60).stdout.splitlines() if "=" in line)
        yield SlurmCluster(host=facts["CLIPVIP_SLURM_HOST"], partition=facts["CLIPVIP_SLURM_PARTITION"],
                           account=facts["CLIPVIP_SLURM_ACCOUNT"], state_dir=Path(facts["CLIPVIP_SLURM_DIR"]))
    finally:
        stop()
        atexit.unregister(stop)
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------------
# 1. plain sbatch: two tasks, accounting shows the requested resources


def test_sbatch_two_tasks(slurm_cluster: SlurmCluster, tmp_path: Path):
    out = tmp_path / "ranks-%j.out"
    jobid = slurm_cluster.sbatch("-n", "2", "--mem=300M", "-t", "5", "-o", str(out), "-D", str(tmp_path),
                                 "--wrap", 'srun bash -c "echo rank=\\${SLURM_PROCID}"')
    rows = {r["JobID"]: r for r in slurm_cluster.wait_job(jobid)}
    log = (tmp_path / f"ranks-{jobid}.out").read_text()
    assert sorted(re.findall(r"rank=(\d+)", log)) == ["0", "1"], log
    alloc, step = rows[jobid], rows[f"{jobid}.0"]
    assert alloc["State"] == "COMPLETED" and alloc["ExitCode"] == "0:0", rows
    assert alloc["NCPUS"] == "2" and alloc["ReqMem"] == "300M", alloc
    assert alloc["Partition"] == slurm_cluster.partition and alloc["Account"] == slurm_cluster.account, alloc
    assert step["State"] == "COMPLETED" and step["NTasks"] == "2", step


# --------------------------------------------------------------------------------------------------------
# 2. Snakemake's SLURM executor: a plain rule (jobstep wraps it in `srun -n1`) and an `mpi` rule that
#    launches its own 2-task srun, as the training rules will.

SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: "hello.txt", "ranks.txt"

    rule hello:
        output: "hello.txt"
        resources: mem_mb=200
        shell: "echo hello from $(hostname) > {output}"

    rule ranks:
        output: "ranks.txt"
        resources: tasks=2, mpi="srun", mem_mb=300
        shell:
            "{resources.mpi} -n 2 --ntasks-per-node 2 "
            "python -c 'import os; print(\\"rank\\", os.environ[\\"SLURM_PROCID\\"])' | tee {output}"
    """
)


def _submitted_jobs(log: str) -> dict[str, str]:
    """rule name -> SLURM job id, from the executor's 'submitted with SLURM jobid' lines."""
    pattern = r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/"
    return {rule: jobid for jobid, rule in re.findall(pattern, log)}


def test_snakemake_slurm_executor(slurm_cluster: SlurmCluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    proc = slurm_cluster.snakemake(tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert sorted(re.findall(r"rank (\d+)", (tmp_path / "ranks.txt").read_text())) == ["0", "1"]
    assert (tmp_path / "hello.txt").read_text().startswith(f"hello from {slurm_cluster.host}")

    jobs = _submitted_jobs(log)
    assert set(jobs) == {"hello", "ranks"}, log
    # The per-job SLURM log (kept by the test profile) shows what the ranks printed.
    ranks_log = (tmp_path / ".snakemake" / "slurm_logs" / "rule_ranks" / f"{jobs['ranks']}.log").read_text()
    assert "rank 0" in ranks_log and "rank 1" in ranks_log, ranks_log

    expected = {"hello": dict(NCPUS="1", ReqMem="200M", step_tasks="1"),
                "ranks": dict(NCPUS="2", ReqMem="300M", step_tasks="2")}
    for rule, want in expected.items():
        rows = {r["JobID"]: r for r in slurm_cluster.wait_job(jobs[rule])}
        alloc, step = rows[jobs[rule]], rows[f"{jobs[rule]}.0"]
        assert alloc["State"] == "COMPLETED", (rule, rows)
        assert alloc["NCPUS"] == want["NCPUS"] and alloc["ReqMem"] == want["ReqMem"], (rule, alloc)
        assert alloc["Account"] == slurm_cluster.account and alloc["Partition"] == slurm_cluster.partition
        # hello: the jobstep plugin's `srun -n1 ...`; ranks: the rule's own `srun -n 2`.
        assert step["State"] == "COMPLETED" and step["NTasks"] == want["step_tasks"], (rule, step)


# --------------------------------------------------------------------------------------------------------
# 3. submitit on the real SLURM: 2 tasks, TorchDistributedEnvironment + gloo all_reduce


def test_submitit_two_task_allreduce(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("torch")
    for k, v in slurm_cluster.env.items():  # sbatch/sacct from the venv-first PATH, no stray SLURM_* vars
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(k)

    def rank_allreduce():  # nested: cloudpickle ships it by value, no import of this test module needed
        import os

        import submitit
        import torch
        import torch.distributed as dist

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        job_env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export()
        dist.init_process_group("gloo", rank=dist_env.rank, world_size=dist_env.world_size)
        value = torch.tensor([float(job_env.global_rank + 1)])
        dist.all_reduce(value)
        dist.destroy_process_group()
        return dict(global_rank=job_env.global_rank, local_rank=job_env.local_rank,
                    num_tasks=job_env.num_tasks, world_size=dist_env.world_size,
                    master_addr=dist_env.master_addr, total=value.item(), job_id=job_env.job_id)

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(nodes=1, tasks_per_node=2, cpus_per_task=1, mem_gb=1, timeout_min=5,
                               slurm_partition=slurm_cluster.partition, slurm_account=slurm_cluster.account,
                               name="clipvip-submitit-test")
    job = executor.submit(rank_allreduce)
    deadline = time.monotonic() + 180
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            pytest.fail(f"submitit job {job.job_id} not done after 180 s; state {job.state}")
        time.sleep(0.5)
    results = sorted(job.results(), key=lambda r: r["global_rank"])
    assert [r["global_rank"] for r in results] == [0, 1], results
    assert [r["local_rank"] for r in results] == [0, 1], results
    assert all(r["num_tasks"] == 2 and r["world_size"] == 2 for r in results), results
    assert all(r["total"] == 3.0 for r in results), results  # (0+1) + (1+1)
    assert all(r["job_id"] == str(job.job_id) for r in results), results
    rows = {r["JobID"]: r for r in slurm_cluster.wait_job(job.job_id)}
    assert rows[str(job.job_id)]["State"] == "COMPLETED" and rows[str(job.job_id)]["NCPUS"] == "2", rows


# --------------------------------------------------------------------------------------------------------
# 4. faults: the controller is down -> clear errors; then it comes back and jobs run again


@pytest.fixture
def controller_down(slurm_cluster: SlurmCluster):
    """Stop slurmctld for the test; restart it and wait until the node is idle again afterwards."""
    slurm_cluster.stop_daemon("slurmctld")
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.start_daemon("slurmctld")
    assert slurm_cluster.ready(), "cluster did not recover after restarting slurmctld"


def test_sbatch_without_controller(controller_down: SlurmCluster, tmp_path: Path):
    proc = controller_down.run("sbatch", "-p", controller_down.partition, "-D", str(tmp_path),
                               "--wrap", "true", check=False)
    assert proc.returncode != 0
    assert "Unable to contact slurm controller" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_snakemake_without_controller(controller_down: SlurmCluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    proc = controller_down.snakemake(tmp_path, "hello.txt")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "SLURM sbatch failed" in log and "Unable to contact slurm controller" in log, log


def test_recovers_after_controller_restart(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Runs after the fault tests (file order): the restarted controller accepts and finishes jobs."""
    jobid = slurm_cluster.sbatch("-n", "1", "--mem=100M", "-t", "2", "-D", str(tmp_path),
                                 "-o", str(tmp_path / "%j.out"), "--wrap", "echo ok")
    rows = slurm_cluster.wait_job(jobid)
    assert rows[0]["State"] == "COMPLETED", rows
    assert (tmp_path / f"{jobid}.out").read_text().strip() == "ok"
