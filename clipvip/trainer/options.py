"""``TrainOptions``: every key of ``clipvip train --options`` with its default and meaning.

Usage:
    opts = TrainOptions.from_dict({"lr": 1e-5, "zero_stage": 3}, stage="finetune")
    opts.lr, opts.loss          # 1e-05, "vs"

Keys whose default is None and that appear in ``STAGE_DEFAULTS`` default differently for ``--stage pretrain``
/ ``finetune`` (the paper's settings, REFERENCE hyperparameter table). The class is strict (``StageOptions``):
an unknown key, a wrong type or an out-of-range value is refused naming the key, so a typo never silently
trains with a default; the workflow applies the same check to ``pretrain.options`` / ``finetune.options``
before any job starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from clipvip.registry import LAUNCHERS, LOSSES, VIDEO_ENCODERS
from clipvip.stage import OptionError, StageOptions, option

STAGE_DEFAULTS = {
    "pretrain": {"loss": "vsc_fc", "max_text_len": 70, "batch_size": 1024, "lr": 5e-6, "weight_decay": 0.05,
                 "grad_clip": 5.0},
    "finetune": {"loss": "vs", "max_text_len": 50, "batch_size": 128, "lr": 1e-6, "weight_decay": 0.2,
                 "grad_clip": 1.0},
}
TASKS = ("retrieval", "recognition")
# ``task: recognition`` (Vita-CLIP action recognition; official K400 run ``train_scripts/k400_train.sh``): these
# replace the defaults of keys the options do not set. No warm-up: DeepSpeed's WarmupCosineLR needs >= 2
# warm-up steps, so they run at the full lr (warmup_min_ratio 1.0) and the cosine starts after them. The
# official code clips no gradients (grad_clip 0 = off).
TASK_DEFAULTS = {
    "recognition": {"loss": "recognition_ce", "video_encoder": "vita", "num_frames": 8, "batch_size": 256,
                    "lr": 4e-4, "weight_decay": 0.05, "grad_clip": 0.0, "warmup_ratio": 0.0,
                    "warmup_min_ratio": 1.0, "select_metric": "top1", "max_text_len": 77},
}
# ``method: videoclip`` (VideoCLIP, fairseq MMPT projects/retri/videoclip/how2.yaml): Adam (no weight decay)
# betas (0.9, 0.98), lr 5e-5, 1000 warm-up updates then DeepSpeed's WarmupDecayLR (linear decay to 0 = fairseq's
# polynomial_decay with power 1), clip 2.0, 16 clips per video x 32 videos = 512 pairs per step; group_size
# keeps a video's clips in one batch (random batching). Applied like TASK_DEFAULTS (keys the options set win).
METHOD_DEFAULTS = {
    "videoclip": {"loss": "videoclip", "lr": 5e-5, "betas": [0.9, 0.98], "weight_decay": 0.0, "grad_clip": 2.0,
                  "batch_size": 512, "warmup_steps": 1000, "eps": 1e-8, "pair_sampling": "overlapped",
                  "max_text_len": 63},  # 61 span tokens + [CLS] [SEP] (official 96 - 32 - 3 + 2)
}
# VitaConfig keys the trainer sets itself (from num_frames and --class-list).
VITA_DERIVED = ("num_frames", "class_names")


@dataclass
class TrainOptions(StageOptions):
    STAGE = "train"
    task: str = option("retrieval", "retrieval (contrastive video-text) | recognition (Vita-CLIP: class cross-"
                       "entropy over --class-list; its own defaults, see TASK_DEFAULTS); --task overrides",
                       choices=TASKS)
    # --- model
    loss: str | None = option(None, "stage: vsc_fc pretrain, vs finetune (clipvip.registry.LOSSES)",
                              choices=LOSSES.names)
    video_encoder: str = option("vip", "video encoder (clipvip.registry.VIDEO_ENCODERS)",
                                choices=VIDEO_ENCODERS.names)
    temporal_init_std: float = option(0.0, "0 = the paper's zero init (right from pretrained CLIP); 0.02 for "
                                      "from-scratch models", minimum=0.0)
    temporal_lr_mult: float = option(1.0, "lr multiplier of the temporal embedding's param group", minimum=0.0)
    # --- data
    num_frames: int = option(12, "T frames per training video (jittered from the frame pool)", minimum=1)
    image_size: int | None = option(None, "None = the model's vision_config.image_size", minimum=16)
    max_text_len: int | None = option(None, "stage: 70 pretrain, 50 finetune (tokens incl. start/end)",
                                      minimum=8, maximum=77)
    text_mode: str = option("sample", "sample: one caption per video per step | join: paragraph sentences",
                            choices=("sample", "join"))
    dedup_texts: bool = option(True, "identical texts in a batch count as positives (no false negatives)")
    num_workers: int | None = option(None, "DataLoader workers per rank; None = the CPUs the job has per task "
                                     "minus one for the main process, capped at 8", minimum=0)
    max_missing_captions: float = option(0.01, "pretrain with a caption loss term: the share of training clips "
                                         "that may lack their auxiliary caption (they use the subtitle); above "
                                         "it training refuses to start", minimum=0.0, maximum=1.0)
    group_size: int = option(1, "keep runs of this many consecutive annotation lines in one batch (hard "
                             "negatives, e.g. the demo's time-reversed twins; see the sampler)", minimum=1)
    shuffle_mode: str = option("global", "sampler order: global (exact shuffle) | shard (shard order shuffled, "
                               "clips shuffled within windows of shard_buffer shards: reads stay local, for "
                               "corpus-scale post-pretraining)", choices=("global", "shard"))
    shard_buffer: int = option(4, "shuffle_mode shard: shards whose clips are shuffled together", minimum=1)
    # --- VideoCLIP (issues 14 + 15; clipvip.trainer.videoclip_task)
    method: str = option("clipvip", "clipvip (frames -> CLIP-ViP) | videoclip (per-second features from `clipvip "
                         "features` + timed subtitles -> VideoCLIPModel; its defaults: METHOD_DEFAULTS)",
                         choices=("clipvip", "videoclip"))
    pair_sampling: str = option("clip", "video-text pairs: clip (whole clip + all its text, CLIP-ViP) | overlapped "
                                "(VideoCLIP: a subtitle span and an overlapping 3-32 s window) | aligned (window = "
                                "the span); named pair_sampling because `sampling` is the recognition frame "
                                "sampling", choices=("clip", "overlapped", "aligned"))
    batching: str = option("random", "random (shuffled, group_size clips of a video together) | retrieval "
                           "(VideoCLIP's retrieval-augmented batches: every retrieval_every epochs the videos are "
                           "embedded and clustered with faiss; a batch = whole clusters; clipvip.data."
                           "retrieval_batches.RetrievalBatches)", choices=("random", "retrieval"))
    retrieval_every: int = option(1, "batching retrieval: epochs between cluster rebuilds", minimum=1)
    videos_per_cluster: int = option(32, "batching retrieval: videos per cluster (= per batch item)", minimum=2)
    clips_per_video: int = option(16, "videoclip: (clip, text) pairs drawn per video (consecutive in a batch)",
                                  minimum=1)
    nlist: int = option(512, "batching retrieval: faiss IVF lists", minimum=1)
    num_video_layers: int = option(6, "videoclip: BERT layers of the video tower", minimum=1)
    max_video_len: int = option(32, "videoclip: at most this many per-second feature tokens", minimum=1)
    warmup_steps: int | None = option(None, "absolute warm-up updates (overrides warmup_ratio; videoclip 1000, "
                                      "capped at total_steps - 1)", minimum=1)
    # --- recognition (task: recognition), and the vita encoder in either task
    sampling: str = option("stride", "recognition frames: stride (official Vita-CLIP: T frames sampling_rate "
                           "apart) | uniform (the CLIP-ViP protocol)", choices=("stride", "uniform"))
    sampling_rate: int = option(16, "recognition, sampling stride: decoded frames between sampled frames",
                                minimum=1)
    eval_views: int = option(1, "recognition validation: temporal views per clip (softmax averaged)", minimum=1)
    vita: dict = option({}, "video_encoder vita: clipvip.model.vita.VitaConfig keys (num_global_prompts, "
                        "train_cls_proj, temporal_init_std, text_num_context, csc, unseen_template, ...); "
                        "num_frames and class_names come from num_frames and --class-list")
    # --- schedule
    epochs: float = option(1.0, "passes over the training videos (fractions allowed)", minimum=0.0)
    max_steps: int | None = option(None, "optimizer steps; overrides epochs when set", minimum=1)
    batch_size: int | None = option(None, "stage: 1024 pretrain, 128 finetune -- the GLOBAL batch (all ranks)",
                                    minimum=1)
    micro_batch_per_gpu: int | None = option(None, "None = batch_size / world_size / grad_accum", minimum=1)
    grad_accum: int = option(1, "gradient accumulation steps", minimum=1)
    lr: float | None = option(None, "stage: 5e-6 pretrain, 1e-6 finetune (peak, AdamW)", minimum=0.0)
    weight_decay: float | None = option(None, "stage: 0.05 pretrain, 0.2 finetune", minimum=0.0)
    betas: list = option([0.9, 0.98], "AdamW betas")
    eps: float = option(1e-6, "AdamW epsilon", minimum=0.0)
    warmup_ratio: float = option(0.01, "share of total steps with linear warm-up (at least 2 steps)",
                                 minimum=0.0, maximum=1.0)
    warmup_min_ratio: float = option(0.01, "lr ratio at step 1; 0 would make step 1 a no-op (WarmupCosineLR)",
                                     minimum=0.0, maximum=1.0)
    cos_min_ratio: float = option(0.0, "lr ratio at the end of the cosine decay", minimum=0.0, maximum=1.0)
    grad_clip: float | None = option(None, "stage: 5.0 pretrain, 1.0 finetune (global grad-norm clip)",
                                     minimum=0.0)
    # --- DeepSpeed
    zero_stage: int = option(2, "ZeRO stage 0-3", minimum=0, maximum=3)
    precision: str = option("auto", "auto (bf16 on GPU, fp32 on CPU) | fp16 | bf16 | fp32",
                            choices=("auto", "fp16", "bf16", "fp32"))
    deepspeed_config: str | None = option(None, "path to a DeepSpeed JSON merged over ours (user wins)")
    compile: bool = option(False, "torch.compile the vision tower (off by default until measured on the GPU: "
                           "benchmarks/gpu_train_step.py)")
    seed: int = option(42, "data order, jitter, caption sampling")
    # --- checkpoints, validation, logging
    checkpoint_every: int = option(500, "optimizer steps between DeepSpeed checkpoints (also at the end)",
                                   minimum=1)
    keep_checkpoints: int = option(2, "newest periodic checkpoints kept (the best-validation one is extra)",
                                   minimum=1)
    eval_every: int | str = option("epoch", "validation every N steps or at each 'epoch' end (needs --val-*)")
    eval_batch_size: int = option(32, "validation encoding batch", minimum=1)
    select_metric: str = option("t2v.R1", "validation metric (dotted path into evaluate_model's dict) to "
                                "maximise")
    log_every: int = option(1, "steps between metrics.jsonl lines", minimum=1)
    # --- launching
    launcher: str = option("local", "how ranks start (clipvip.registry.LAUNCHERS; see clipvip.distributed)",
                           choices=LAUNCHERS.names)
    nprocs: int = option(1, "launcher local: ranks on this machine", minimum=1)
    dist_backend: str = option("auto", "auto (nccl on GPU, gloo on CPU) | nccl | gloo",
                               choices=("auto", "nccl", "gloo"))
    submitit_cluster: str | None = option(None, "None = auto (slurm if available) | local (tests) | slurm",
                                          choices=("local", "slurm", "debug"))
    submitit_nodes: int = option(1, "submitit: nodes", minimum=1)
    submitit_tasks_per_node: int | None = option(None, "submitit: tasks per node; None = nprocs", minimum=1)
    submitit_gpus_per_node: int = option(0, "submitit: GPUs per node", minimum=0)
    submitit_cpus_per_task: int | None = option(None, "submitit: CPUs per task", minimum=1)
    submitit_timeout_min: int = option(60, "submitit: job time limit (minutes)", minimum=1)
    submitit_partition: str | None = option(None, "submitit: SLURM partition")
    submitit_slurm_args: dict = option({}, "extra sbatch options (slurm_additional_parameters)")
    # --- fault injection
    debug_nan_at_step: int | None = option(None, "fault injection: rank 0's loss becomes NaN at this step "
                                           "(1-based), to exercise the divergence stop", minimum=1)

    @classmethod
    def from_dict(cls, values: dict | None, stage: str, where: str = "--options") -> "TrainOptions":
        values = dict(values or {})
        task = values.get("task", "retrieval")
        for key, value in TASK_DEFAULTS.get(task, {}).items():  # an unknown task is refused by the choices
            values.setdefault(key, value)
        for key, value in METHOD_DEFAULTS.get(values.get("method", "clipvip"), {}).items():
            values.setdefault(key, value)
        if values.get("method") == "videoclip":
            values.setdefault("group_size", values.get("clips_per_video", 16))
        return super().from_dict(values, where, stage=stage)

    def check(self, where: str, stage: str) -> None:
        if stage not in STAGE_DEFAULTS:
            raise OptionError("--stage", f"{stage!r} is not one of {', '.join(STAGE_DEFAULTS)}")
        recognition = self.task == "recognition"
        if recognition and stage != "finetune":
            raise OptionError(f"{where}.task", f"recognition trains from a model (--stage finetune), not {stage!r}")
        if recognition and self.loss != "recognition_ce":
            raise OptionError(f"{where}.loss", f"{self.loss!r} is a retrieval loss; task recognition uses "
                              "recognition_ce")
        if not recognition and self.loss == "recognition_ce":
            raise OptionError(f"{where}.loss", "recognition_ce needs class labels: set task: recognition "
                              "(clipvip train --task recognition --class-list FILE)")
        if recognition and self.video_encoder != "vita":
            raise OptionError(f"{where}.video_encoder", f"{self.video_encoder!r}: task recognition trains the "
                              "Vita-CLIP prompts (video_encoder vita)")
        if self.vita:
            from clipvip.model.vita import VitaConfig

            for key in self.vita:
                if key in VITA_DERIVED:
                    raise OptionError(f"{where}.vita.{key}", f"set by the trainer ({'num_frames' if key == 'num_frames' else '--class-list'})")
            try:
                VitaConfig.from_dict({**self.vita, "num_frames": self.num_frames or 1})
            except (TypeError, ValueError) as exc:
                raise OptionError(f"{where}.vita", str(exc)) from None
        if self.method == "videoclip":
            if recognition:
                raise OptionError(f"{where}.method", "videoclip is a retrieval method, not task recognition")
            if self.loss != "videoclip":
                raise OptionError(f"{where}.loss", f"method videoclip trains with loss videoclip, not {self.loss!r}")
        elif self.loss == "videoclip":
            raise OptionError(f"{where}.loss", "videoclip (tau = 1, unnormalised) is method videoclip's loss")
        elif self.pair_sampling != "clip" and recognition:
            raise OptionError(f"{where}.pair_sampling", "overlapped / aligned pairs need timed subtitles; task "
                              "recognition trains on class labels (use clip)")
        if self.batching == "retrieval":
            if recognition:
                raise OptionError(f"{where}.batching", "retrieval clusters video-text pairs; task recognition "
                                  "trains on class labels (use random)")
            if self.shuffle_mode == "shard":
                raise OptionError(f"{where}.shuffle_mode", "shard orders the random sampler; with batching "
                                  "retrieval the clusters decide the order (leave it global)")
            if self.method != "videoclip" and self.group_size != 1:
                raise OptionError(f"{where}.group_size", f"{self.group_size}: with batching retrieval a batch is "
                                  "whole clusters of similar videos, not runs of annotation lines (leave it 1)")
        for key, value in STAGE_DEFAULTS[stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if isinstance(self.eval_every, str) and self.eval_every != "epoch":
            raise OptionError(f"{where}.eval_every", f"{self.eval_every!r} is neither a positive int nor 'epoch'")
        if isinstance(self.eval_every, int) and self.eval_every < 1:
            raise OptionError(f"{where}.eval_every", f"{self.eval_every} is not a positive number of steps")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise OptionError(f"{where}.betas", f"{self.betas!r} is not two numbers in [0, 1)")
        if self.batch_size % self.group_size:
            raise OptionError(f"{where}.batch_size", f"{self.batch_size} is not a multiple of group_size "
                              f"{self.group_size}: groups would straddle batches")
        pairs = self.clips_per_video if self.method == "videoclip" else 1
        if self.batching == "retrieval" and self.batch_size % (self.videos_per_cluster * pairs):
            raise OptionError(f"{where}.batch_size", f"{self.batch_size} is not a multiple of videos_per_cluster "
                              f"{self.videos_per_cluster} x {pairs} pair(s) per video: a batch is whole clusters")
