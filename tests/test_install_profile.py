"""`clipvip install-profile` (issue 18): a named Snakemake profile in the user's config folder, so that
`snakemake --profile slurm` works as cluster users type it.

Everything runs as real subprocesses: the installer through the venv's `clipvip` console script, Snakemake
dry runs of the demo workflow from the repository root (results in a tmp folder via `--config results=`).
HOME and XDG_CONFIG_HOME point at tmp folders, so nothing is written to the real ~/.config. The only test
doubles are fake `sinfo` / `sacctmgr` scripts standing in for the cluster's commands.

The last test (marked slurm, slow) installs against the project's real single-node SLURM (tests/slurm), so
the sinfo/sacctmgr checks run for real, and dry-runs the demo through `--profile slurm` on that cluster.

Run: .venv/bin/python -m pytest -q tests/test_install_profile.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_slurm import SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLIPVIP = [str(VENV_BIN / "clipvip")] if (VENV_BIN / "clipvip").exists() else [sys.executable, "-m", "clipvip"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
FLAGS = ["--account", "acct1", "--cpu-partition", "cpuq", "--gpu-partition", "gpuq", "--gpus-per-node", "2",
         "--pretrain-nodes", "3", "--finetune-nodes", "1"]
GPU_RULES = {"captions", "pretrain", "finetune", "evaluate"}
LOCAL_EXECUTOR_LINE = "Assuming unrestricted shared filesystem usage."  # printed only for a local executor


def _env(tmp_path: Path, *, fake_bin: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (base or os.environ).items() if k != "SNAKEMAKE_PROFILE"}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    path = [str(VENV_BIN)] + ([str(fake_bin)] if fake_bin else []) + [env.get("PATH", "/usr/bin:/bin")]
    env["PATH"] = os.pathsep.join(path)
    return env


def _fake_cluster_bin(tmp_path: Path, partitions: str = "cpuq*\ngpuq", accounts: str = "acct1\nroot") -> Path:
    """Test doubles for the cluster's `sinfo` and `sacctmgr` (the installer itself is real)."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    for name, lines in (("sinfo", partitions), ("sacctmgr", accounts)):
        script = fake / name
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' {' '.join(repr(x) for x in lines.splitlines())}\n")
        script.chmod(0o755)
    return fake


def install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIPVIP, "install-profile", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def _profile_file(tmp_path: Path, name: str = "slurm") -> Path:
    return tmp_path / "xdg" / "snakemake" / name / "config.yaml"


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipvip install-profile: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _dry_run(env: dict[str, str], results: Path, *extra: str, profile: str = "slurm") -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-n", "--profile", profile, "--config", f"results={results}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _planned_jobs(output: str) -> list[tuple[str, dict[str, str], str]]:
    """(rule, resources, shell command) of every job a dry run prints."""
    jobs, rule, resources = [], None, {}
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule, resources = m.group(1), {}
        elif (m := re.match(r"^\s+resources: (.*)$", line)) and rule:
            resources = dict(item.split("=", 1) for item in m.group(1).split(", "))
            jobs.append((rule, resources, ""))
        elif line.startswith("Shell command: ") and jobs and jobs[-1][0] == rule:
            jobs[-1] = (rule, resources, line[len("Shell command: "):])
    return jobs


# --------------------------------------------------------------------------------------------------------
# 1. install, then `snakemake -n --profile slurm` from the repo root uses it


def test_installed_profile_is_found_by_name_and_its_resources_reach_every_job(tmp_path: Path):
    proc = install(_env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path)), *FLAGS)
    assert proc.returncode == 0, proc.stderr
    written = _profile_file(tmp_path)
    assert f"wrote {written}" in proc.stdout
    assert "snakemake --profile slurm --configfile" in proc.stdout
    assert "checked against the cluster: partitions (sinfo), account (sacctmgr)" in proc.stdout

    text = written.read_text()
    assert not re.search(r"<[^<>\s]+>", yaml.safe_dump(yaml.safe_load(text))), text  # no placeholder left
    header = [line for line in text.splitlines() if line.startswith("#")][:4]
    assert any("profiles/slurm/config.yaml" in line for line in header), header
    assert any(f"clipvip install-profile {' '.join(FLAGS)}" in line for line in header), header
    profile = yaml.safe_load(text)
    template = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert set(profile) == set(template) and set(profile["set-resources"]) == set(template["set-resources"])
    assert profile["default-resources"]["slurm_account"] == "acct1"
    assert profile["default-resources"]["slurm_partition"] == "cpuq"
    rules = profile["set-resources"]
    for rule, nodes in (("pretrain", 3), ("finetune", 1)):
        assert rules[rule]["nodes"] == nodes and rules[rule]["tasks"] == nodes * 2, rules[rule]
        assert rules[rule]["mpi"] == "srun --ntasks-per-node=2" and rules[rule]["gres"] == "gpu:2"
        assert rules[rule]["tasks_per_gpu"] == 1 and rules[rule]["launcher"] == "srun"
    for rule in ("captions", "evaluate"):
        assert rules[rule]["gres"] == "gpu:1", rules[rule]
    for rule, resources in template["set-resources"].items():
        if resources.get("slurm_partition") == "<gpu-partition>":
            assert rules[rule]["slurm_partition"] == "gpuq", rule
        # everything the installer does not derive is the template's
        for key in set(resources) - {"slurm_partition", "nodes", "tasks", "gres", "mpi", "tasks_per_gpu"}:
            assert rules[rule][key] == resources[key], (rule, key)

    # Snakemake, started from the repo root exactly as a user types it, finds the profile by name.
    env = _env(tmp_path)
    dry = _dry_run(env, tmp_path / "results")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-4000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in out, out[:1000]
    # The intended executor is the (remote) slurm one: only a local executor prints this line, as the
    # same dry run with --executor local shows.
    assert LOCAL_EXECUTOR_LINE not in out
    local = _dry_run(env, tmp_path / "results", "--executor", "local")
    assert local.returncode == 0 and LOCAL_EXECUTOR_LINE in local.stdout + local.stderr

    jobs = _planned_jobs(out)
    assert {rule for rule, _, _ in jobs} >= GPU_RULES | {"frames", "tables", "demo_data"}, jobs
    for rule, res, shell in jobs:
        assert res["slurm_account"] == "acct1", (rule, res)
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpuq", (rule, res)
        else:
            assert res["slurm_partition"] == "cpuq" and "gres" not in res, (rule, res)
        if rule in ("pretrain", "finetune"):
            nodes = 3 if rule == "pretrain" else 1
            assert (res["nodes"], res["tasks"], res["gres"], res["tasks_per_gpu"]) == (str(nodes), str(2 * nodes),
                                                                                      "gpu:2", "1"), (rule, res)
            assert res["mpi"] == "srun --ntasks-per-node=2", res
            assert shell.startswith("srun --ntasks-per-node=2 clipvip train "), shell[:200]
        elif rule in GPU_RULES:
            assert res["gres"] == "gpu:1" and "tasks" not in res, (rule, res)
    assert not (tmp_path / "results").exists()  # a dry run


# --------------------------------------------------------------------------------------------------------
# 2. an existing profile is only replaced with --force


def test_existing_profile_is_refused_unless_force(tmp_path: Path):
    env = _env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path))
    assert install(env, *FLAGS).returncode == 0
    first = _profile_file(tmp_path).read_text()

    again = [*FLAGS[:6], "--gpus-per-node", "4"]
    line = _one_line_error(install(env, *again))
    assert "already exists" in line and "--force" in line and str(_profile_file(tmp_path).parent) in line, line
    assert _profile_file(tmp_path).read_text() == first

    forced = install(env, *again, "--force")
    assert forced.returncode == 0, forced.stderr
    profile = yaml.safe_load(_profile_file(tmp_path).read_text())
    assert profile["set-resources"]["pretrain"]["tasks"] == 8  # the template's 2 nodes x 4 GPUs
    assert profile["set-resources"]["finetune"]["mpi"] == "srun --ntasks-per-node=4"

    # another name is another profile
    other = install(env, *FLAGS, "--name", "slurm-small")
    assert other.returncode == 0 and _profile_file(tmp_path, "slurm-small").exists(), other.stderr
    assert "snakemake --profile slurm-small " in other.stdout


# --------------------------------------------------------------------------------------------------------
# 3. impossible sizes and unfilled placeholders: one clear line, nothing written


@pytest.mark.parametrize("args, expected", [
    (["--gpus-per-node", "0"], "--gpus-per-node must be at least 1"),
    (["--pretrain-nodes", "-1"], "--pretrain-nodes must be at least 1"),
    (["--finetune-nodes", "0"], "--finetune-nodes must be at least 1"),
    (["--gpus-per-node", "two"], "--gpus-per-node: invalid int value"),
])
def test_bad_sizes_are_one_line_errors(tmp_path: Path, args: list[str], expected: str):
    env = _env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path))
    base = FLAGS[:6]
    line = _one_line_error(install(env, *base, *args))
    assert expected in line, line
    assert not _profile_file(tmp_path).parent.exists()


def test_a_placeholder_left_unfilled_names_its_flag(tmp_path: Path):
    env = _env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path))
    line = _one_line_error(install(env, "--account", "acct1", "--cpu-partition", "cpuq"))
    assert "<gpu-partition>" in line and "--gpu-partition" in line, line
    assert not _profile_file(tmp_path).parent.exists()


# --------------------------------------------------------------------------------------------------------
# 4. partitions and account are checked where sinfo / sacctmgr exist


def test_unknown_partition_is_named_with_the_known_ones(tmp_path: Path):
    env = _env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path))
    line = _one_line_error(install(env, "--account", "acct1", "--cpu-partition", "cpuq", "--gpu-partition", "gpux"))
    assert "unknown SLURM partition 'gpux' (--gpu-partition)" in line, line
    assert "cpuq, gpuq" in line and "cpuq*" not in line, line  # the default partition's * is stripped
    assert not _profile_file(tmp_path).parent.exists()


def test_unknown_account_is_named(tmp_path: Path):
    env = _env(tmp_path, fake_bin=_fake_cluster_bin(tmp_path))
    line = _one_line_error(install(env, "--account", "nope", "--cpu-partition", "cpuq", "--gpu-partition", "gpuq"))
    assert "unknown SLURM account 'nope'" in line and "acct1" in line, line
    assert not _profile_file(tmp_path).parent.exists()


# --------------------------------------------------------------------------------------------------------
# 5. against the project's real SLURM: sinfo/sacctmgr checks for real, then `snakemake -n --profile slurm`


@pytest.mark.slurm
@pytest.mark.slow
def test_install_against_the_test_cluster_and_dry_run(slurm_cluster: SlurmCluster, tmp_path: Path):  # noqa: F811
    defaults = yaml.safe_load((REPO / "profiles" / "slurm-test" / "config.yaml").read_text())["default-resources"]
    partition, account = defaults["slurm_partition"], defaults["slurm_account"]
    assert (partition, account) == (slurm_cluster.partition, slurm_cluster.account)
    env = _env(tmp_path, base=slurm_cluster.env)

    wrong = install(env, "--account", account, "--cpu-partition", partition, "--gpu-partition", "nosuchgpu")
    line = _one_line_error(wrong)
    assert "'nosuchgpu'" in line and partition in line, line

    proc = install(env, "--account", account, "--cpu-partition", partition, "--gpu-partition", partition,
                   "--gpus-per-node", "2", "--pretrain-nodes", "1", "--finetune-nodes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "checked against the cluster: partitions (sinfo), account (sacctmgr)" in proc.stdout, proc.stdout

    dry = _dry_run(env, tmp_path / "results")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-4000:]
    assert "Using profiles slurm " in out and LOCAL_EXECUTOR_LINE not in out
    jobs = _planned_jobs(out)
    assert jobs and all(res["slurm_partition"] == partition and res["slurm_account"] == account
                        for _, res, _ in jobs), jobs
