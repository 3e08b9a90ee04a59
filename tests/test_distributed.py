"""Launcher environments (``clipvip.distributed``), the training plan and DeepSpeed JSON (``clipvip.trainer.plan``)
and trainer options.

The srun mapping is exercised for real: two processes with the variables srun would give its tasks meet over
gloo and all-reduce. No SLURM needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from clipvip.distributed import expand_nodelist, init_distributed_env, slurm_port
from clipvip.stage import OptionError, UserError
from clipvip.trainer.plan import (batch_geometry, build_ds_config, loader_workers, make_plan, manual_clip, merge,
                                  resolve_precision, task_cpus)
from clipvip.trainer.options import TrainOptions

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("gpu[1,3-4],cpu7", ["gpu1", "gpu3", "gpu4", "cpu7"]),
    ("rack1-n[008-010]", ["rack1-n008", "rack1-n009", "rack1-n010"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_slurm_port_is_deterministic_and_in_range():
    assert slurm_port("123456") == slurm_port("123456") != slurm_port("123457")
    assert 15000 <= slurm_port("999999999") < 35000


@pytest.fixture
def clean_env(monkeypatch):
    for key in {k for k in os.environ if k.startswith("SLURM_")} | set(DIST_VARS):
        # setenv first so the teardown also removes what init_distributed_env exports into os.environ
        # (a leaked MASTER_ADDR would reach later subprocesses: snakemake -> sbatch -> srun ranks).
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: our own host-list parser is used
    return monkeypatch


def test_srun_environment_maps_to_torch_variables(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_STEP_NODELIST", "gpu[07-10]")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    info = init_distributed_env("srun", backend="gloo")
    assert (info.rank, info.world_size, info.local_rank, info.master_addr) == (5, 8, 1, "gpu07")
    assert info.master_port == slurm_port("4242") and info.backend == "gloo" and not info.is_main
    assert [os.environ[k] for k in DIST_VARS] == ["5", "8", "1", "gpu07", str(slurm_port("4242"))]
    # an inherited rendezvous (sbatch exports the submitting shell's environment) is ignored
    clean_env.setenv("MASTER_ADDR", "elsewhere")
    clean_env.setenv("MASTER_PORT", "1")
    assert init_distributed_env("srun", backend="gloo").master_addr == "gpu07" and os.environ["MASTER_PORT"] != "1"


def test_srun_without_slurm_variables_explains(clean_env):
    with pytest.raises(UserError, match="SLURM_PROCID"):
        init_distributed_env("srun")


def test_none_launcher_defaults_to_one_process(clean_env):
    info = init_distributed_env("none", backend="auto")
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0) and info.backend == "gloo"


def test_unknown_launcher(clean_env):
    with pytest.raises(UserError, match="unknown launcher 'mpirun'"):
        init_distributed_env("mpirun")


def test_srun_tasks_meet_over_gloo(tmp_path):
    """Two processes with srun-style variables only: they derive the same master and all-reduce."""
    script = textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from clipvip.distributed import init_distributed_env
        info = init_distributed_env("srun", backend="gloo")
        dist.init_process_group(info.backend)
        x = torch.tensor([info.rank + 1.0])
        dist.all_reduce(x)
        print(info.rank, info.world_size, info.master_addr, info.master_port, float(x))
        dist.destroy_process_group()
    """)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in DIST_VARS}
    port = slurm_port("7")  # derived from the job id on every rank; an inherited MASTER_PORT is ignored
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=dict(base, SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                                       SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="7", MASTER_PORT="1",
                                       PATH="/usr/bin:/bin"))
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs == [["0", "2", "localhost", str(port), "3.0"], ["1", "2", "localhost", str(port), "3.0"]]


# ------------------------------------------------------------------------------------------ options / ds_config
def test_options_stage_defaults_and_unknown_keys():
    ft, pt = TrainOptions.from_dict({}, "finetune"), TrainOptions.from_dict({}, "pretrain")
    assert (ft.loss, ft.lr, ft.weight_decay, ft.grad_clip, ft.batch_size, ft.max_text_len) == ("vs", 1e-6, 0.2, 1.0, 128, 50)
    assert (pt.loss, pt.lr, pt.weight_decay, pt.grad_clip, pt.batch_size, pt.max_text_len) == ("vsc_fc", 5e-6, 0.05, 5.0, 1024, 70)
    assert TrainOptions.from_dict({"lr": 3e-4}, "finetune").lr == 3e-4
    with pytest.raises(OptionError, match=r"--options.learning_rate: unknown option of `clipvip train`; did you mean lr"):
        TrainOptions.from_dict({"learning_rate": 1e-3}, "finetune")
    with pytest.raises(OptionError, match="eval_every"):
        TrainOptions.from_dict({"eval_every": "daily"}, "finetune")
    # YAML 1.1 reads 1e-4 as a string: a numeric string is the number, anything else is refused.
    assert TrainOptions.from_dict({"lr": "1e-4"}, "finetune").lr == 1e-4
    with pytest.raises(OptionError, match=r"--options.lr: 'fast' is not"):
        TrainOptions.from_dict({"lr": "fast"}, "finetune")
    with pytest.raises(OptionError, match=r"--options.zero_stage: 4 is greater than the maximum 3"):
        TrainOptions.from_dict({"zero_stage": 4}, "finetune")


def test_batch_geometry():
    assert batch_geometry(128, None, 2, 4) == (128, 16, 2)
    with pytest.raises(OptionError, match="--options.batch_size: 10 is not divisible"):
        batch_geometry(10, None, 1, 4)
    with pytest.raises(OptionError, match="micro_batch_per_gpu"):
        batch_geometry(128, 8, 1, 4)


def test_ds_config_from_options_and_user_json_wins(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_clipping": 0.5}))
    opts = TrainOptions.from_dict({"batch_size": 64, "zero_stage": 3, "warmup_ratio": 0.1,
                                   "deepspeed_config": str(user)}, "finetune")
    cfg = build_ds_config(opts, world_size=2, total_steps=200, on_gpu=False)
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (64, 32, 1)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["reduce_bucket_size"] == 1000
    assert cfg["zero_optimization"]["allgather_bucket_size"] == int(5e7)  # ours, where the user JSON is silent
    assert cfg["gradient_clipping"] == 0.5 and cfg["optimizer"]["params"]["fused"] is True
    adam = cfg["optimizer"]
    assert adam["type"] == "AdamW" and adam["params"]["torch_adam"] and adam["params"]["betas"] == [0.9, 0.98]
    sched = cfg["scheduler"]
    assert sched["type"] == "WarmupCosineLR" and sched["params"]["warmup_num_steps"] == 20
    assert sched["params"]["total_num_steps"] == 200 and sched["params"]["warmup_min_ratio"] > 0
    assert "bf16" not in cfg and build_ds_config(opts, 2, 200, on_gpu=True)["bf16"] == {"enabled": True}
    # ZeRO-2/3 overlap the gradient reduction with backward on GPU (NCCL side stream), not under gloo
    assert cfg["zero_optimization"]["overlap_comm"] is False
    assert build_ds_config(opts, 2, 200, on_gpu=True)["zero_optimization"]["overlap_comm"] is True
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_loader_workers_follow_the_task_cpus(monkeypatch):
    assert loader_workers(3, cpus=64) == 3 and loader_workers(0, cpus=64) == 0  # explicit wins
    assert loader_workers(None, cpus=1) == 0 and loader_workers(None, cpus=4) == 3
    assert loader_workers(None, cpus=64) == 8  # capped
    monkeypatch.setattr("clipvip.trainer.plan.available_cpus", lambda: 32)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert task_cpus() == 32 and loader_workers(None) == 8
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")  # the job's share, even if the mask shows more
    assert task_cpus() == 5 and loader_workers(None) == 4


def test_training_plan_in_one_place():
    opts = TrainOptions.from_dict({"batch_size": 8, "max_steps": None, "epochs": 2, "warmup_ratio": 0.25,
                                   "num_workers": None}, "finetune")
    cpu = make_plan(opts, world_size=2, dataset_len=20, device="cpu", cpus=3)
    assert (cpu.micro, cpu.accum, cpu.steps_per_epoch, cpu.total_steps, cpu.warmup_steps) == (4, 1, 2, 4, 2)
    assert (cpu.precision, cpu.workers, cpu.prefetch_factor, cpu.pin_memory, cpu.eval_workers) == ("fp32", 2, 2, False, 0)
    assert cpu.derived()["num_workers"] == 2 and cpu.ds_config["scheduler"]["params"]["total_num_steps"] == 4
    gpu = make_plan(opts, world_size=2, dataset_len=20, device="cuda:0", cpus=17)
    assert (gpu.precision, gpu.workers, gpu.pin_memory, gpu.eval_workers, gpu.persistent_workers) == ("bf16", 8, True, 8, True)
    assert gpu.ds_config["bf16"] == {"enabled": True} and gpu.ds_config["zero_optimization"]["overlap_comm"]
    with pytest.raises(UserError, match="cannot fill one global batch"):
        make_plan(opts, world_size=2, dataset_len=6, device="cpu")


def test_precision_and_stage0_manual_clip():
    assert resolve_precision("auto", on_gpu=False) == "fp32" and resolve_precision("auto", on_gpu=True) == "bf16"
    with pytest.raises(OptionError, match="precision"):
        resolve_precision("fp8", on_gpu=False)
    stage0 = {"zero_optimization": {"stage": 0}, "gradient_clipping": 1.0}
    assert manual_clip(stage0) == 1.0 and stage0["gradient_clipping"] == 0.0
    assert manual_clip({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}) == 0.0
    assert manual_clip({"zero_optimization": {"stage": 0}, "gradient_clipping": 1.0, "bf16": {"enabled": True}}) == 0.0


def test_checkpoint_pruning_keeps_newest_best_and_latest(tmp_path):
    from clipvip.trainer.checkpoints import prune

    for tag in ("global_step2", "global_step4", "global_step6", "global_step8", "best_step2", "best_step6"):
        (tmp_path / tag).mkdir()
    (tmp_path / "latest").write_text("global_step8")
    prune(tmp_path, keep=2, protect={"best_step6"})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["best_step6", "global_step6", "global_step8"]


def test_checkpoint_dir_is_kept_for_the_same_run_and_discarded_for_another(tmp_path):
    from clipvip.trainer.checkpoints import claim_checkpoint_dir, run_fingerprint

    init = tmp_path / "init"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"x" * 10)
    ckpt = tmp_path / "ckpt"
    paths = {"init": str(init), "annotations": None}
    first = run_fingerprint("finetune", {"lr": 1e-4, "launcher": "local", "num_workers": 2}, paths)
    assert claim_checkpoint_dir(ckpt, first) is False
    (ckpt / "global_step4").mkdir()
    (ckpt / "submitit").mkdir()
    # a kill/preemption rerun, even with another launcher or worker count: resume
    again = run_fingerprint("finetune", {"lr": 1e-4, "launcher": "srun", "num_workers": 0}, paths)
    assert claim_checkpoint_dir(ckpt, again) is False and (ckpt / "global_step4").exists()
    # changed lr: a different run, the old checkpoints must not be resumed
    changed = run_fingerprint("finetune", {"lr": 2e-4, "launcher": "srun", "num_workers": 0}, paths)
    assert claim_checkpoint_dir(ckpt, changed) is True
    assert not (ckpt / "global_step4").exists() and (ckpt / "submitit").exists()
    # a re-trained init model (new weights file) is another run too
    (ckpt / "global_step8").mkdir()
    (init / "model.safetensors").write_bytes(b"y" * 11)
    retrained = run_fingerprint("finetune", {"lr": 2e-4}, paths)
    assert claim_checkpoint_dir(ckpt, retrained) is True and not (ckpt / "global_step8").exists()
