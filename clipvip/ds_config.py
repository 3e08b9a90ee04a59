"""DeepSpeed JSON config built from the trainer's options.

Usage:
    from clipvip.ds_config import build_ds_config, resolve_precision
    cfg = build_ds_config(opts, world_size=2, total_steps=1000, on_gpu=False)
    engine, *_ = deepspeed.initialize(model=m, model_parameters=groups, config=cfg)

Everything the optimisation needs lives in this JSON (batch geometry, AdamW, the warm-up + cosine schedule,
clipping, ZeRO stage, precision) so DeepSpeed's own optimizer and scheduler do the work, and the file logged
into the run folder is the whole truth. A user JSON (option ``deepspeed_config``) is merged over it
recursively, the user winning, so any DeepSpeed feature (offload, comms logging, ...) passes through.
"""
from __future__ import annotations

import json
import math
from typing import Any


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """``auto`` = bf16 on GPU, fp32 on CPU (bf16/fp16 on CPU run but drift and are not faster)."""
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    if precision not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"precision must be auto|fp16|bf16|fp32, got {precision!r}")
    return precision


def batch_geometry(batch_size: int, micro_batch_per_gpu: int | None, grad_accum: int,
                   world_size: int) -> tuple[int, int, int]:
    """(global batch, micro batch per rank, accumulation steps); DeepSpeed requires global = micro*accum*world."""
    if micro_batch_per_gpu is None:
        if batch_size % (world_size * grad_accum):
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size} x "
                             f"grad_accum {grad_accum}")
        micro_batch_per_gpu = batch_size // (world_size * grad_accum)
    if micro_batch_per_gpu * grad_accum * world_size != batch_size:
        raise ValueError(f"batch_size {batch_size} != micro_batch_per_gpu {micro_batch_per_gpu} x grad_accum "
                         f"{grad_accum} x world_size {world_size}")
    return batch_size, micro_batch_per_gpu, grad_accum


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    # WarmupCosineLR rejects 0 and treats anything below 2 as 2.
    return max(2, int(math.ceil(total_steps * warmup_ratio)))


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
        "zero_optimization": {"stage": opts.zero_stage, "contiguous_gradients": True, "overlap_comm": False,
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
        with open(opts.deepspeed_config) as fh:
            cfg = merge(cfg, json.load(fh))
    return cfg
