"""The training plan: everything derived from (options, world size, dataset size, device), computed once.

Usage:
    from clipvip.trainer.plan import make_plan
    plan = make_plan(opts, world_size=2, dataset_len=len(ds), device=torch.device("cuda", 0))
    plan.micro, plan.accum, plan.total_steps, plan.precision, plan.workers, plan.ds_config
    engine, *_ = deepspeed.initialize(model=m, model_parameters=groups, config=plan.ds_config)

DeepSpeed JSON: everything the optimisation needs (batch geometry, AdamW, the warm-up + cosine schedule,
clipping, ZeRO stage, precision) so DeepSpeed's own optimizer and scheduler do the work, and the file logged
into the run folder is the whole truth. A user JSON (option ``deepspeed_config``) is merged over it
recursively, the user winning, so any DeepSpeed feature (offload, comms logging, ...) passes through.

Device-dependent choices: precision ``auto`` = bf16 on GPU, fp32 on CPU; ZeRO ``overlap_comm`` on GPU only
(it overlaps NCCL reduction with backward on a side stream; on CPU/gloo there is nothing to overlap);
loader workers ``None`` = the CPUs of this task minus one, capped at 8 (``loader_workers``), with
``prefetch_factor`` scaled so a GPU step never waits on decoding.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from clipvip.stage import OptionError, UserError, available_cpus

MAX_AUTO_WORKERS = 8


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """``auto`` = bf16 on GPU, fp32 on CPU (bf16/fp16 on CPU run but drift and are not faster)."""
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    if precision not in ("fp16", "bf16", "fp32"):
        raise OptionError("--options.precision", f"{precision!r} is not one of auto, fp16, bf16, fp32")
    return precision


def batch_geometry(batch_size: int, micro_batch_per_gpu: int | None, grad_accum: int,
                   world_size: int) -> tuple[int, int, int]:
    """(global batch, micro batch per rank, accumulation steps); DeepSpeed requires global = micro*accum*world."""
    if micro_batch_per_gpu is None:
        if batch_size % (world_size * grad_accum):
            raise OptionError("--options.batch_size", f"{batch_size} is not divisible by world_size {world_size} "
                              f"x grad_accum {grad_accum}")
        micro_batch_per_gpu = batch_size // (world_size * grad_accum)
    if micro_batch_per_gpu * grad_accum * world_size != batch_size:
        raise OptionError("--options.batch_size", f"{batch_size} != micro_batch_per_gpu {micro_batch_per_gpu} x "
                          f"grad_accum {grad_accum} x world_size {world_size}")
    return batch_size, micro_batch_per_gpu, grad_accum


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    # WarmupCosineLR rejects 0 and treats anything below 2 as 2.
    return max(2, int(math.ceil(total_steps * warmup_ratio)))


def task_cpus(env: dict | None = None) -> int:
    """CPUs of this task: the affinity mask, and under SLURM no more than ``SLURM_CPUS_PER_TASK``."""
    env = os.environ if env is None else env
    cpus = available_cpus()
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def loader_workers(num_workers: int | None, cpus: int | None = None) -> int:
    """Explicit ``num_workers`` wins; None = this task's CPUs minus one for the main process, capped at 8."""
    if num_workers is not None:
        return int(num_workers)
    cpus = task_cpus() if cpus is None else cpus
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def prefetch_factor(workers: int, on_gpu: bool) -> int | None:
    """Batches each worker keeps ready: 2 (torch's default) on CPU; on GPU enough that ~8 batches are queued."""
    if workers == 0:
        return None
    return max(2, math.ceil(8 / workers)) if on_gpu else 2


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins on leaves."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def manual_clip(cfg: dict) -> float:
    """Clip value the trainer must apply itself (set to 0 in ``cfg``); 0.0 when DeepSpeed does it.

    DeepSpeed 0.19.7's stage-0 fp32 path (``runtime.utils.clip_grad_norm_``) multiplies every gradient by a
    shape-[1] coefficient, which fails on CLIP's 0-dim ``logit_scale`` as soon as clipping triggers ("output
    with shape [] doesn't match the broadcast shape [1]"). ZeRO 1-3 and the bf16/fp16 optimizers clip
    correctly. For stage-0 fp32 the trainer calls ``torch.nn.utils.clip_grad_norm_`` (same formula:
    ``max_norm / (norm + 1e-6)``, capped at 1) on the all-reduced gradients just before ``engine.step()``.
    """
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    mixed = cfg.get("bf16", {}).get("enabled") or cfg.get("fp16", {}).get("enabled")
    if stage == 0 and not mixed and cfg.get("gradient_clipping", 0.0) > 0:
        value = float(cfg["gradient_clipping"])
        cfg["gradient_clipping"] = 0.0  # explicit: DeepSpeed's default when the key is absent is 1.0
        return value
    return 0.0


def build_ds_config(opts: Any, world_size: int, total_steps: int, on_gpu: bool) -> dict:
    """The DeepSpeed config for ``opts`` (a ``TrainOptions``)."""
    global_batch, micro, accum = batch_geometry(opts.batch_size, opts.micro_batch_per_gpu, opts.grad_accum,
                                                world_size)
    precision = resolve_precision(opts.precision, on_gpu)
    cfg: dict = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": opts.grad_clip,
        "steps_per_print": 10**9,  # our own logging; DeepSpeed's console lines would interleave with tqdm
        "wall_clock_breakdown": False,
        # Bounded buckets let ZeRO-2 reduce and drop gradients as backward goes; DeepSpeed's 5e8-element default
        # is larger than a ViT-B model, i.e. a second full gradient copy (benchmarks/zero_memory.py).
        # overlap_comm: NCCL reduction on a side stream during backward (GPU); nothing to overlap under gloo.
        "zero_optimization": {"stage": opts.zero_stage, "contiguous_gradients": True, "overlap_comm": bool(on_gpu),
                              "reduce_bucket_size": int(5e7), "allgather_bucket_size": int(5e7)},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": opts.lr,  # default for groups without their own "lr" (param_groups sets one each)
                "betas": list(opts.betas),
                "eps": opts.eps,
                "weight_decay": opts.weight_decay,
                "adam_w_mode": True,
                # Plain torch.optim.AdamW: without this DeepSpeed JIT-builds FusedAdam (~80 s on CPU).
                "torch_adam": True,
                # torch's fused kernel (CPU and CUDA): no tensor-sized temporaries at the step, which under
                # ZeRO-2 would be two copies of the rank's whole flat partition; also the fastest.
                "fused": True,
            },
        },
        "scheduler": {
            # Ratios apply to each param group's own lr, so temporal_lr_mult survives the schedule.
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": warmup_steps(total_steps, opts.warmup_ratio),
                "warmup_type": "linear",
                # >0: DeepSpeed's ratio at the first step is exactly this, 0 would waste step 1.
                "warmup_min_ratio": opts.warmup_min_ratio,
                "cos_min_ratio": opts.cos_min_ratio,
            },
        },
    }
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if opts.deepspeed_config:
        try:
            with open(opts.deepspeed_config) as fh:
                cfg = merge(cfg, json.load(fh))
        except OSError as exc:
            raise OptionError("--options.deepspeed_config", f"cannot read {opts.deepspeed_config}: "
                              f"{exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise OptionError("--options.deepspeed_config", f"{opts.deepspeed_config} is not JSON: {exc}") from None
    return cfg


def samples_per_rank(dataset_len: int, world_size: int) -> int:
    """One epoch's share of a rank (``ResumableDistributedSampler.num_samples``, drop_last=False)."""
    return math.ceil(dataset_len / world_size)


@dataclass
class TrainingPlan:
    world_size: int
    device_type: str
    global_batch: int
    micro: int
    accum: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    precision: str
    workers: int
    prefetch_factor: int | None
    pin_memory: bool
    manual_clip: float
    ds_config: dict = field(repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.device_type == "cuda"

    @property
    def persistent_workers(self) -> bool:
        return self.workers > 0

    @property
    def eval_workers(self) -> int:
        """Validation encoding workers: the training ones on GPU; in-process on CPU (as before)."""
        return self.workers if self.on_gpu else 0

    def derived(self) -> dict:
        """The values recorded in the run's ``config.json`` ``derived``."""
        return {"world_size": self.world_size, "micro_batch_per_gpu": self.micro, "grad_accum": self.accum,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "precision": self.precision, "num_workers": self.workers,
                "prefetch_factor": self.prefetch_factor, "manual_grad_clip": self.manual_clip,
                "device": self.device_type}


def make_plan(opts: Any, world_size: int, dataset_len: int, device: Any, rank_samples: int | None = None,
              cpus: int | None = None) -> TrainingPlan:
    """The plan of a run; ``rank_samples`` = the sampler's ``num_samples`` (default: computed like it)."""
    device_type = getattr(device, "type", str(device).split(":")[0])
    on_gpu = device_type == "cuda"
    global_batch, micro, accum = batch_geometry(opts.batch_size, opts.micro_batch_per_gpu, opts.grad_accum,
                                                world_size)
    rank_samples = samples_per_rank(dataset_len, world_size) if rank_samples is None else rank_samples
    steps_per_epoch = rank_samples // (micro * accum)
    if steps_per_epoch < 1:
        raise UserError(f"{dataset_len} training clips cannot fill one global batch of {opts.batch_size} "
                        f"(--options.batch_size)")
    total_steps = int(opts.max_steps or max(1, math.ceil(opts.epochs * steps_per_epoch)))
    ds_config = build_ds_config(opts, world_size, total_steps, on_gpu)
    clip = manual_clip(ds_config)  # stage-0 fp32 workaround, see manual_clip
    workers = loader_workers(opts.num_workers, cpus)
    return TrainingPlan(world_size=world_size, device_type=device_type, global_batch=global_batch, micro=micro,
                        accum=accum, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                        warmup_steps=warmup_steps(total_steps, opts.warmup_ratio),
                        precision=resolve_precision(opts.precision, on_gpu), workers=workers,
                        prefetch_factor=prefetch_factor(workers, on_gpu), pin_memory=on_gpu, manual_clip=clip,
                        ds_config=ds_config)
