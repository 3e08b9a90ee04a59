"""The clipvip workflow on the project's real single-node SLURM (issue 6): the demo through the user's
profile, the training rule as one 2-task srun job, the submitit launcher, and a scancel'd training job that
resumes from its checkpoint.

Snakemake runs as `snakemake --profile profiles/slurm --profile profiles/slurm-test`: the user's profile
(executor, requeue, rerun-incomplete, ...) with the test cluster's partition, account and small resources
on top (a later profile replaces whole top-level keys, see profiles/slurm-test/config.yaml). The data are
the fast demo overlay of tests/test_demo_dag.py. The session fixture `slurm_cluster` comes from
tests/test_slurm.py.

Run: PATH=.venv/bin:$PATH .venv/bin/python -m pytest -q -m slurm tests/test_slurm.py tests/test_slurm_workflow.py
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_demo_dag import fast_overlay
from test_slurm import TERMINAL, SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
USER_PROFILE = REPO / "profiles" / "slurm"
TEST_PROFILE = REPO / "profiles" / "slurm-test"
VARIANT = "vip-vsc_fc"
# Keys a CPU-only test cluster cannot honour; every other key of profiles/slurm must be mirrored.
GPU_ONLY_KEYS = {"gres", "tasks_per_gpu", "gpu", "gpu_model", "cpus_per_gpu"}
# The didemo fine-tune is the fault test's uninterrupted reference: enough steps for a scancel to land
# mid-run, a checkpoint after every step, validation only at the end.
FAULT_RUN = {"max_steps": 10, "checkpoint_every": 1, "eval_every": 100}


def _profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def _rule_resources(profile: dict, rule: str) -> dict:
    return {**profile.get("default-resources", {}), **profile.get("set-resources", {}).get(rule, {})}


def _submitted(log: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) for every job the executor submitted, in order."""
    return [(rule, jobid) for jobid, rule in
            re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log)]


def _final_sacct(cluster: SlurmCluster, jobids: list[str], timeout: float = 120) -> dict[str, dict[str, str]]:
    """sacct rows (JobID -> row) of all jobs once every record is final (see SlurmCluster.wait_job)."""
    deadline, previous, rows = time.monotonic() + timeout, None, {}
    while time.monotonic() < deadline:
        rows = {r["JobID"]: r for r in cluster.sacct(",".join(jobids))}
        final = all(j in rows and rows[j]["JobName"] != "allocation"
                    and re.fullmatch(r"\d+(\.\d+)?[KMGT]", rows[j]["ReqMem"]) for j in jobids)
        final = final and all(r["State"].split()[0] in TERMINAL for r in rows.values())
        if final and rows == previous:
            return rows
        previous = rows if final else None
        time.sleep(0.5)
    raise AssertionError(f"jobs {jobids} not final after {timeout} s: {rows}")


class Workflow:
    """The demo workflow in its own work dir: the repo's Snakefile + config.yaml + overlays."""

    def __init__(self, cluster: SlurmCluster, workdir: Path):
        self.cluster, self.workdir = cluster, workdir
        self.results = workdir / "results"
        overlay = fast_overlay(self.results, **FAULT_RUN)
        base = yaml.safe_load((REPO / "config.yaml").read_text())
        if "corpus" in base["demo"] and "corpus" not in overlay.get("demo", {"corpus": 0}):
            overlay["demo"] = {"corpus": overlay["demo"]}  # an overlay written before demo.corpus existed
        # One frame shard per dataset and no zero-shot rows: fewer tiny SLURM jobs, same code paths.
        overlay["frames"]["shard_size"] = 32
        overlay["evaluate"] = {"zero_shot": False}
        self.overlay = self.write("fast.yaml", overlay)

    def write(self, name: str, data: dict) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(data))
        return path

    def cmd(self, *args: str, slurm: bool = True, extra_configs: tuple[Path, ...] = ()) -> list[str]:
        profiles = ["--profile", str(USER_PROFILE), "--profile", str(TEST_PROFILE)] if slurm else ["--cores", "2"]
        # args first: --configfile (and --forcerun) take lists and would swallow targets after them
        return [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO / "Snakefile"), *profiles,
                "--configfile", str(REPO / "config.yaml"), str(self.overlay), *map(str, extra_configs)]

    def run(self, *args: str, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args, **kw), cwd=self.workdir, env=self.cluster.env, capture_output=True,
                              text=True, timeout=timeout)

    def finetune(self, ds: str) -> Path:
        return self.results / "runs" / "finetune" / VARIANT / ds

    def checkpoints(self, ds: str) -> Path:
        return self.results / "checkpoints" / "finetune" / VARIANT / ds


def _tail(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-3000:] + "\n" + proc.stderr[-8000:]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no safetensors in {model_dir}"
    return {k: v for f in files for k, v in load_file(f).items()}


# --------------------------------------------------------------------------------------------------------
# 0. the tested profile cannot drift from the user's


def test_test_profile_mirrors_user_profile():
    user, test = _profile(USER_PROFILE), _profile(TEST_PROFILE)
    assert user["executor"] == test["executor"] == "slurm"
    # A later --profile replaces whole keys, so these must be complete in the test profile.
    assert set(test["set-resources"]) == set(user["set-resources"])
    for rule, resources in user["set-resources"].items():
        assert set(test["set-resources"][rule]) == set(resources) - GPU_ONLY_KEYS, rule
    assert set(test["default-resources"]) == set(user["default-resources"])
    assert set(test.get("set-threads", {})) == set(user.get("set-threads", {}))
    # profiles/default is applied automatically after every --profile and also replaces whole keys: it must
    # not override what the cluster profile sets (it once dropped default-resources' account and partition).
    workflow_default = _profile(REPO / "profiles" / "default")
    for key in set(workflow_default) & (set(user) | set(test)):
        assert workflow_default[key] == user.get(key, workflow_default[key]) == test.get(key, workflow_default[key]), key
    for rule in ("pretrain", "finetune"):  # the multi-rank wiring the training rules rely on
        ours = test["set-resources"][rule]
        assert ours["launcher"] == user["set-resources"][rule]["launcher"] == "srun"
        assert ours["mpi"].split()[0] == "srun" and "--ntasks-per-node" in ours["mpi"]


# --------------------------------------------------------------------------------------------------------
# 1. the whole demo through the SLURM executor; every rule a SLURM job with the profile's resources


@pytest.fixture(scope="module")
def demo(slurm_cluster: SlurmCluster, tmp_path_factory):
    flow = Workflow(slurm_cluster, tmp_path_factory.mktemp("slurm-demo"))
    t0 = time.monotonic()
    proc = flow.run()
    flow.seconds = time.monotonic() - t0
    print(f"\nSLURM demo workflow: {flow.seconds:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, _tail(proc)
    flow.log = proc.stdout + proc.stderr
    flow.jobs = _submitted(flow.log)
    return flow


def test_demo_every_rule_is_a_completed_slurm_job_with_the_profiles_resources(demo: Workflow):
    # The demo's products
    table = (demo.results / "tables" / "retrieval.md").read_text()
    assert "CLIP-ViP" in table and "fine-tuned" in table, table
    for ds in ("demo_msrvtt", "demo_didemo"):
        assert (demo.finetune(ds) / "model" / "config.json").exists()
        assert json.loads((demo.results / "eval" / f"finetuned-{VARIANT}" / ds / "test.json").read_text())["t2v"]

    # Every job of the DAG except the local target rule `all` went through sbatch.
    dry = demo.run("-n", "--forceall")
    planned = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$",
                                                                 dry.stdout.split("Job stats:", 1)[1], re.M)
               if m.group(1) not in ("total", "all")}
    submitted: dict[str, int] = {}
    for rule, _ in demo.jobs:
        submitted[rule] = submitted.get(rule, 0) + 1
    assert submitted == planned, (submitted, planned)

    test_profile = _profile(TEST_PROFILE)
    rows = _final_sacct(demo.cluster, [jobid for _, jobid in demo.jobs])
    for rule, jobid in demo.jobs:
        base = "split_ids" if rule.startswith("split_ids_") else rule
        want = _rule_resources(test_profile, base)
        tasks = want.get("tasks", 1)
        alloc, step = rows[jobid], rows.get(f"{jobid}.0")
        assert alloc["State"] == "COMPLETED" and alloc["ExitCode"] == "0:0", (rule, alloc)
        assert alloc["Partition"] == "debug" and alloc["Account"] == "clipvip", (rule, alloc)
        assert alloc["ReqMem"] == f"{want['mem_mb']}M", (rule, alloc, want)
        assert alloc["NCPUS"] == str(want["cpus_per_task"] * tasks), (rule, alloc, want)
        # Plain rules: the jobstep's `srun -n1`; training rules: their own `srun --ntasks-per-node=2`.
        assert step is not None and step["State"] == "COMPLETED" and step["NTasks"] == str(tasks), (rule, step)


def test_training_rule_is_one_two_task_srun_job(demo: Workflow):
    trained = [(rule, jobid) for rule, jobid in demo.jobs if rule in ("pretrain", "finetune")]
    assert [r for r, _ in trained].count("pretrain") == 1 and [r for r, _ in trained].count("finetune") == 2
    logs = {"pretrain": [demo.results / "logs" / "pretrain" / f"{VARIANT}.log"],
            "finetune": sorted((demo.results / "logs" / "finetune" / VARIANT).glob("*.log"))}
    for rule, jobid in trained:
        # the rule's log that names this job: both ranks, started by srun inside this SLURM job
        texts = [p.read_text() for p in logs[rule]]
        text = next((t for t in texts if f"slurm_job {jobid}" in t), None)
        assert text is not None, (rule, jobid, [t[:500] for t in texts])
        ranks = re.findall(rf"\[clipvip\] rank (\d)/2 local_rank (\d) launcher srun .* slurm_job {jobid}\b", text)
        assert sorted(ranks) == [("0", "0"), ("1", "1")], text[:2000]
    config = json.loads((demo.finetune("demo_msrvtt") / "config.json").read_text())
    assert config["derived"]["world_size"] == 2 and config["derived"]["launcher"] == "srun", config["derived"]


# --------------------------------------------------------------------------------------------------------
# 2. launcher submitit: the training process submits a 2-task SLURM job and waits for it


def test_submitit_launcher_trains_as_a_two_task_slurm_job(demo: Workflow):
    ds = "demo_msrvtt"
    shutil.rmtree(demo.checkpoints(ds))  # otherwise the rerun would resume the finished run
    submitit_options = {"submitit_cluster": "slurm", "submitit_partition": demo.cluster.partition,
                        "submitit_cpus_per_task": 1, "submitit_timeout_min": 10,
                        "submitit_slurm_args": {"account": demo.cluster.account, "mem": "3G"}}
    overlay = demo.write("submitit.yaml", {"launch": {"launcher": "submitit", "tasks": 2},
                                           "finetune": {"per_dataset": {ds: submitit_options}}})
    model = demo.finetune(ds) / "model"
    # Snakemake itself runs locally here (as on a login node): the rule's process only submits and waits.
    # --allowed-rules: only the fine-tune runs, whatever else a code change elsewhere would trigger.
    proc = demo.run(str(model), "--forcerun", "finetune", "--allowed-rules", "finetune", slurm=False,
                    extra_configs=(overlay,), timeout=600)
    assert proc.returncode == 0, _tail(proc)
    log = (demo.results / "logs" / "finetune" / VARIANT / f"{ds}.log").read_text()
    match = re.search(r"submitted submitit job (\d+) \(slurm\)", log)
    assert match, log[-3000:]
    jobid = match.group(1)
    rows = _final_sacct(demo.cluster, [jobid])
    alloc = rows[jobid]
    assert alloc["State"] == "COMPLETED" and alloc["JobName"] == "clipvip-train", rows
    assert alloc["NCPUS"] == "2" and alloc["ReqMem"] == "3G" and alloc["Account"] == demo.cluster.account, alloc
    steps = [r for k, r in rows.items() if re.fullmatch(rf"{jobid}\.\d+", k)]
    assert any(r["NTasks"] == "2" and r["State"] == "COMPLETED" for r in steps), rows
    # Both ranks ran inside that job, started by submitit.
    rank_logs = "".join(p.read_text() for p in (demo.checkpoints(ds) / "submitit").glob(f"{jobid}_*_log.err"))
    ranks = sorted(re.findall(rf"\[clipvip\] rank (\d)/2 .* launcher submitit .* slurm_job {jobid}\b", rank_logs))
    assert ranks == ["0", "1"], rank_logs[-3000:]
    assert (model / "config.json").exists() and list(model.glob("*.safetensors"))
    config = json.loads((demo.finetune(ds) / "config.json").read_text())
    assert config["derived"]["world_size"] == 2 and config["derived"]["launcher"] == "submitit"


# --------------------------------------------------------------------------------------------------------
# 3. faults: a training job cancelled mid-run resumes from its checkpoint and ends with the same weights


def _latest_step(ckpt_dir: Path) -> int:
    latest = ckpt_dir / "latest"
    try:
        return int(re.sub(r"\D", "", latest.read_text()) or -1)
    except OSError:
        return -1


def test_scancel_mid_training_then_rerun_resumes_to_the_same_weights(demo: Workflow):
    ds = "demo_didemo"
    run_dir, ckpt = demo.finetune(ds), demo.checkpoints(ds)
    reference = _weights(run_dir / "model")  # the demo run: same options, never interrupted
    shutil.rmtree(ckpt)
    target = str(run_dir / "model")

    # Run the fine-tune again from scratch and scancel its SLURM job once a few checkpoints exist.
    cmd = demo.cmd(target, "--forcerun", "finetune", "--allowed-rules", "finetune")
    # SIGINT back to its default in the child: a test session started in the background of a
    # non-interactive shell (`nohup make test &`) passes SIGINT on ignored, and Ctrl-C below would then be lost.
    proc = subprocess.Popen(cmd, cwd=demo.workdir, env=demo.cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    jobid, deadline = None, time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if jobid is None:
                out = demo.cluster.run("squeue", "-h", "-o", "%A|%k", check=False).stdout
                jobid = next((line.split("|")[0] for line in out.splitlines() if "rule_finetune" in line
                              and ds in line), None)
            if jobid is not None and _latest_step(ckpt) >= 3:
                break
            time.sleep(0.2)
        assert jobid is not None and proc.poll() is None, "fine-tune ended before it could be cancelled"
        cancelled_at = _latest_step(ckpt)
        demo.cluster.run("scancel", jobid)
        alloc = _final_sacct(demo.cluster, [jobid])[jobid]
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # snakemake-executor-plugin-slurm 2.8.0 compares sacct's State with "CANCELLED", but a job
            # cancelled by a user reads "CANCELLED by <uid>": the plugin keeps polling it as running. Do
            # what the user would: Ctrl-C (the plugin's scancel of the already-ended job is harmless).
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]
    assert cancelled_at < FAULT_RUN["max_steps"]
    assert alloc["State"].startswith("CANCELLED"), alloc
    assert not (run_dir / "model").exists(), "Snakemake should have removed the failed job's outputs"
    resume_step = _latest_step(ckpt)
    assert cancelled_at <= resume_step < FAULT_RUN["max_steps"], (cancelled_at, resume_step)

    # The rerun resumes from the checkpoint (not from scratch) and finishes with the same weights.
    again = demo.run(target, "--allowed-rules", "finetune", timeout=600)
    assert again.returncode == 0, _tail(again)
    log = (demo.results / "logs" / "finetune" / VARIANT / f"{ds}.log").read_text()
    assert f"resumed from {ckpt}/global_step{resume_step} at step {resume_step}" in log, log[-3000:]
    rerun_jobs = [j for r, j in _submitted(again.stdout + again.stderr) if r == "finetune"]
    assert len(rerun_jobs) == 1
    assert _final_sacct(demo.cluster, rerun_jobs)[rerun_jobs[0]]["State"] == "COMPLETED"
    resumed = _weights(run_dir / "model")
    assert set(resumed) == set(reference)
    diffs = {k: float((resumed[k] - reference[k]).abs().max()) for k in reference}
    assert max(diffs.values()) <= 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
