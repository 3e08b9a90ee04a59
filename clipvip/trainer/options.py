"""``TrainOptions``: every key of ``clipvip train --options`` with its default and meaning.

Usage:
    opts = TrainOptions.from_dict({"lr": 1e-5, "zero_stage": 3}, stage="finetune")
    opts.lr, opts.loss          # 1e-05, "vs"

Keys marked "stage" default differently for ``--stage pretrain`` / ``finetune`` (the paper's settings,
REFERENCE hyperparameter table); unknown keys are an error so a typo never silently trains with a default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STAGE_DEFAULTS = {
    "pretrain": {"loss": "vsc_fc", "max_text_len": 70, "batch_size": 1024, "lr": 5e-6, "weight_decay": 0.05,
                 "grad_clip": 5.0},
    "finetune": {"loss": "vs", "max_text_len": 50, "batch_size": 128, "lr": 1e-6, "weight_decay": 0.2,
                 "grad_clip": 1.0},
}


@dataclass
class TrainOptions:
    # --- model
    loss: str | None = None            # stage: "vsc_fc" pretrain, "vs" finetune (clipvip.losses.LOSSES)
    video_encoder: str = "vip"         # vip | meanpool | seqtransformer | full_attention
    temporal_init_std: float = 0.0     # 0 = paper's zero init (right from pretrained CLIP); 0.02 for scratch demos
    temporal_lr_mult: float = 1.0      # lr multiplier of the temporal embedding's param group
    # --- data
    num_frames: int = 12               # T frames per training video (jittered from the frame pool)
    image_size: int | None = None      # None = the model's vision_config.image_size
    max_text_len: int | None = None    # stage: 70 pretrain, 50 finetune (tokens incl. start/end)
    text_mode: str = "sample"          # "sample" one caption per video per step | "join" paragraph sentences
    dedup_texts: bool = True           # identical texts in a batch count as positives (no false negatives)
    num_workers: int = 2               # DataLoader workers per rank
    group_size: int = 1                # keep runs of this many consecutive annotation lines in one batch
                                       # (hard negatives, e.g. the demo's time-reversed twins; see sampler)
    # --- schedule
    epochs: float = 1.0                # passes over the training videos (fractions allowed)
    max_steps: int | None = None       # optimizer steps; overrides epochs when set
    batch_size: int | None = None      # stage: 1024 pretrain, 128 finetune -- the GLOBAL batch (all ranks)
    micro_batch_per_gpu: int | None = None  # None = batch_size / world_size / grad_accum
    grad_accum: int = 1                # gradient accumulation steps
    lr: float | None = None            # stage: 5e-6 pretrain, 1e-6 finetune (peak, AdamW)
    weight_decay: float | None = None  # stage: 0.05 pretrain, 0.2 finetune
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_ratio: float = 0.01         # share of total steps with linear warm-up (at least 2 steps)
    warmup_min_ratio: float = 0.01     # lr ratio at step 1; 0 would make step 1 a no-op (DeepSpeed WarmupCosineLR)
    cos_min_ratio: float = 0.0         # lr ratio at the end of the cosine decay
    grad_clip: float | None = None     # stage: 5.0 pretrain, 1.0 finetune (global grad-norm clip)
    # --- DeepSpeed
    zero_stage: int = 2                # ZeRO stage 0-3
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32
    deepspeed_config: str | None = None  # path to a DeepSpeed JSON merged over ours (user wins)
    seed: int = 42                     # data order, jitter, caption sampling
    # --- checkpoints, validation, logging
    checkpoint_every: int = 500        # optimizer steps between DeepSpeed checkpoints (also at the end)
    keep_checkpoints: int = 2          # newest periodic checkpoints kept (the best-validation one is extra)
    eval_every: int | str = "epoch"    # validation every N steps or at each "epoch" end (needs --val-*)
    eval_batch_size: int = 32          # validation encoding batch
    select_metric: str = "t2v.R1"      # validation metric (dotted path into evaluate_model's dict) to maximise
    log_every: int = 1                 # steps between metrics.jsonl lines
    # --- launching
    launcher: str = "local"            # local | srun | submitit | none (see clipvip.distributed)
    nprocs: int = 1                    # launcher local: ranks on this machine
    dist_backend: str = "auto"         # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    submitit_cluster: str | None = None  # None = auto (slurm if available) | "local" (tests) | "slurm"
    submitit_nodes: int = 1
    submitit_tasks_per_node: int | None = None  # None = nprocs
    submitit_gpus_per_node: int = 0
    submitit_cpus_per_task: int | None = None
    submitit_timeout_min: int = 60
    submitit_partition: str | None = None
    submitit_slurm_args: dict = field(default_factory=dict)  # extra sbatch options (slurm_additional_parameters)
    # --- test only
    debug_nan_at_step: int | None = None  # TEST ONLY: rank 0's loss becomes NaN at this step (1-based)

    @classmethod
    def from_dict(cls, values: dict, stage: str) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"--options: unknown key(s) {unknown}; known: {sorted(known)}")
        opts = cls(**values)
        for key, value in STAGE_DEFAULTS[stage].items():
            if getattr(opts, key) is None:
                setattr(opts, key, value)
        if opts.text_mode not in ("sample", "join"):
            raise SystemExit(f"--options: text_mode must be sample|join, got {opts.text_mode!r}")
        if opts.zero_stage not in (0, 1, 2, 3):
            raise SystemExit(f"--options: zero_stage must be 0..3, got {opts.zero_stage}")
        if not (isinstance(opts.eval_every, int) and opts.eval_every > 0) and opts.eval_every != "epoch":
            raise SystemExit(f"--options: eval_every must be a positive int or 'epoch', got {opts.eval_every!r}")
        return opts

    def to_dict(self) -> dict:
        return asdict(self)
