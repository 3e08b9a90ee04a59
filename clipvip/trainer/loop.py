"""One rank of ``clipvip train``: data, DeepSpeed engine, resume, steps, checkpoints, validation, export.

Usage (``clipvip.trainer.launch`` calls this in each rank): ``code = run(args, opts, launcher="none")``.

Set-up: ``build_model`` (init weights, tokenizer, optional ``torch.compile`` of the vision tower),
``build_data`` (datasets, sampler -- ``batching: retrieval``: ``build_retrieval_batches``, whose ``set_epoch`` may
run the embedding pass and cluster build before an epoch -- the run's ``clipvip.trainer.plan.TrainingPlan``,
loader), ``build_engine``
(the task's step module under DeepSpeed). What retrieval and recognition (Vita-CLIP) do differently -- model,
data, step module, optimizer groups, validation, export files -- is ``clipvip.trainer.tasks``. Collectives: ``clipvip.trainer.collectives`` only, on the engine's
device. Loss and terms stay on the device and reach the host once per logged step.

Order of a step (``grad_accum`` micro-batches): forward -> all ranks agree the loss is finite and whether a
stop signal arrived (one MAX all-reduce) -> backward/step -> clamp ``logit_scale`` (fp32 master and module
copy) -> log (rank 0) -> validation -> checkpoint. A non-finite loss aborts before backward, so the bad state
is never applied nor saved; SIGTERM/SIGUSR1 checkpoint at the next step boundary and exit 75.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

from clipvip.distributed import init_distributed_env
from clipvip.stage import UserError, atomic_path, write_text_atomic
from clipvip.trainer import checkpoints as ck
from clipvip.trainer import collectives as coll

_STOP = {"signal": None}


def _on_signal(signum, _frame):
    _STOP["signal"] = signum  # acted on collectively at the next step boundary


def _peak_mem_mb(device) -> float:
    """CUDA: peak allocated tensor memory; CPU: process RSS high-water mark (ru_maxrss is KiB on Linux)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _metric(result: dict, dotted: str) -> float:
    value = result
    for part in dotted.split("."):
        value = value[part]
    return float(value)


def compile_vision_tower(model) -> None:
    """``torch.compile`` the vision tower in place (parameter names, hence checkpoints, are unchanged):
    the image path (``forward``, used by per-frame encoders) and the video path (``video_forward``)."""
    import torch

    tower = model.vision_model
    tower.compile()
    if hasattr(tower, "video_forward"):
        tower.video_forward = torch.compile(tower.video_forward)


def _versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__}


def build_retrieval_batches(t):
    """``batching: retrieval``: the ``RetrievalBatches`` of trainer ``t`` (after ``task.build_data``) and a rank's
    samples per epoch for the plan (its micro-batches x the micro-batch size).

    A micro-batch is ``micro / (videos_per_cluster x pairs per video)`` whole clusters (official: 1 cluster of
    32 videos x 16 clips = 512 pairs per GPU); the task says what a video is (``retrieval_layout``: VideoCLIP:
    ``clips_per_video`` pairs per video; CLIP-ViP: one whole-clip item per video) and embeds them
    (``retrieval_embeddings``), here wrapped in eval mode and ``no_grad`` (the module's mode is restored after).
    """
    import torch

    from clipvip.data.retrieval_batches import RetrievalBatches
    from clipvip.trainer.plan import batch_geometry

    opts, world = t.opts, t.info.world_size
    num_videos, pairs = t.task.retrieval_layout(t)
    _, micro, _ = batch_geometry(opts.batch_size, opts.micro_batch_per_gpu, opts.grad_accum, world)
    per_cluster = opts.videos_per_cluster * pairs
    if micro % per_cluster:
        raise UserError(f"batching retrieval: a rank's micro-batch of {micro} pairs (batch_size {opts.batch_size} / "
                        f"{world} rank(s) / grad_accum {opts.grad_accum}) is not a whole number of clusters of "
                        f"videos_per_cluster {opts.videos_per_cluster} x {pairs} pair(s) per video")

    def embed(rows, epoch):
        module = t.engine.module
        mode = module.training
        module.eval()
        try:
            with torch.no_grad():
                return t.task.retrieval_embeddings(t, rows, epoch)
        finally:
            module.train(mode)  # the mode training had (from_pretrained models may come in eval mode)

    try:
        batches = RetrievalBatches(num_videos, embed, num_replicas=world, rank=t.info.rank,
                                   videos_per_cluster=opts.videos_per_cluster, clusters_per_batch=micro // per_cluster,
                                   clips_per_video=pairs, every=opts.retrieval_every, seed=opts.seed, nlist=opts.nlist,
                                   device=t.device)
    except ValueError as exc:
        raise UserError(f"batching retrieval: {exc} (--options.batch_size / videos_per_cluster)") from None
    return batches, batches.num_batches * micro


def cluster_loader(dataset, batches, plan, collate):
    """A DataLoader over ``batches`` (a ``batch_sampler``: cluster batches vary in size) with the plan's workers,
    forked and persistent as ``clipvip.data.loader.build_loader`` makes them."""
    import multiprocessing

    from torch.utils.data import DataLoader

    from clipvip.data.loader import worker_init_fn

    kwargs = {}
    if plan.workers > 0:
        kwargs = dict(persistent_workers=plan.persistent_workers, worker_init_fn=worker_init_fn,
                      prefetch_factor=plan.prefetch_factor or 2)
        if sys.platform.startswith("linux"):
            kwargs["multiprocessing_context"] = multiprocessing.get_context("fork")
    return DataLoader(dataset, batch_sampler=batches, num_workers=plan.workers, collate_fn=collate,
                      pin_memory=plan.pin_memory, **kwargs)


class Trainer:
    def __init__(self, args, opts, launcher: str):
        self.args, self.opts = args, opts
        self.info = init_distributed_env(launcher, opts.dist_backend)
        import deepspeed
        import torch

        self.torch, self.deepspeed = torch, deepspeed
        deepspeed.init_distributed(dist_backend=self.info.backend, verbose=False)
        self.main = self.info.rank == 0
        if torch.cuda.is_available():
            torch.cuda.set_device(self.info.local_rank)
            self.device = torch.device("cuda", self.info.local_rank)
        else:
            self.device = torch.device("cpu")
        self.out = Path(args.out)
        self.ckpt_dir = Path(args.checkpoint_dir)
        self.metrics_path = self.ckpt_dir / "metrics.jsonl"  # master copy; exported into --out at the end
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            fingerprint = ck.run_fingerprint(args.stage, opts.to_dict(), self._input_paths())
            if ck.claim_checkpoint_dir(self.ckpt_dir, fingerprint):
                print(f"[clipvip train] {self.ckpt_dir} held checkpoints of a different run (options or inputs "
                      f"changed): discarded, training from the start", flush=True)
        coll.barrier(self.device)  # nobody looks for checkpoints before rank 0 has claimed the folder

    def _input_paths(self) -> dict:
        a = self.args
        paths = {k: getattr(a, k) for k in ("frames_index", "annotations", "captions", "val_annotations",
                                            "val_frames_index", "init")}
        if getattr(a, "class_list", None):  # recognition only (absent keeps retrieval fingerprints unchanged)
            paths["class_list"] = a.class_list
        if getattr(a, "features_index", None):  # VideoCLIP only
            paths["features_index"] = a.features_index
        return paths

    # ------------------------------------------------------------------------------------------------ setup
    def build(self) -> None:
        """Model, then data (which fixes the plan: geometry, steps, workers), then the DeepSpeed engine."""
        self.build_model()
        self.build_data()
        self.build_engine()

    def build_model(self) -> None:
        from clipvip.trainer.tasks import make_task

        opts = self.opts
        if getattr(opts, "method", "clipvip") == "videoclip":  # VideoCLIP: clipvip.trainer.videoclip_task
            from clipvip.trainer.videoclip_task import VideoCLIPTask

            self.task = VideoCLIPTask()
        else:
            self.task = make_task(opts.task)  # clipvip.trainer.tasks: what retrieval and recognition do differently
        # Same seed on every rank: identical random init of new parameters (proxies, temporal embedding).
        self.torch.manual_seed(opts.seed)
        self.task.build_model(self)
        vision = getattr(getattr(self.model, "config", None), "vision_config", None)  # none: VideoCLIP features
        self.image_size = opts.image_size or (vision.image_size if vision is not None else None)
        if opts.compile and opts.video_encoder != "vita":  # Vita runs CLIP's layers itself: nothing to compile
            compile_vision_tower(self.model)

    def build_data(self) -> None:
        from clipvip.data.loader import build_loader
        from clipvip.data.sampler import ResumableDistributedSampler
        from clipvip.trainer.plan import make_plan

        opts = self.opts
        self.dataset, collate, self.val = self.task.build_data(self)
        world = self.info.world_size
        order = {}
        if opts.shuffle_mode == "shard":  # reads stay within a few shards (clipvip.data.sampler)
            order = dict(shuffle_mode="shard", shards=self.dataset.item_shards(), shard_buffer=opts.shard_buffer)
        if opts.batching == "retrieval":  # VideoCLIP's retrieval-augmented batches of whole clusters
            self.sampler, rank_samples = build_retrieval_batches(self)
        else:
            self.sampler = ResumableDistributedSampler(len(self.dataset), num_replicas=world, rank=self.info.rank,
                                                       shuffle=True, seed=opts.seed, group_size=opts.group_size,
                                                       **order)
            rank_samples = self.sampler.num_samples
        self.plan = plan = make_plan(opts, world, len(self.dataset), self.device, rank_samples=rank_samples)
        # What sampler.advance / position count per micro-batch: samples (random), micro-batches (retrieval).
        self.advance_unit = 1 if opts.batching == "retrieval" else plan.micro
        self.micro, self.accum = plan.micro, plan.accum
        self.steps_per_epoch, self.total_steps = plan.steps_per_epoch, plan.total_steps
        self.ds_config, self.manual_clip = plan.ds_config, plan.manual_clip
        if hasattr(self.task, "adjust_ds_config"):  # VideoCLIP: Adam + WarmupDecayLR
            self.ds_config = self.task.adjust_ds_config(self, self.ds_config)
        if opts.batching == "retrieval":
            self.loader = cluster_loader(self.dataset, self.sampler, plan, collate)
        else:
            self.loader = build_loader(self.dataset, self.sampler, plan.micro, plan.workers, collate,
                                       drop_last=True, prefetch_factor=plan.prefetch_factor,
                                       pin_memory=plan.pin_memory, persistent_workers=plan.persistent_workers)

    def build_engine(self) -> None:
        opts = self.opts
        step_module = self.task.step_module(self)
        if opts.zero_stage == 3:
            step_module.register_zero3_externals()
        groups = self.task.param_groups(self)
        trainable = sum(p.numel() for g in groups for p in g["params"])  # before DeepSpeed flattens the groups
        self.engine, _, _, _ = self.deepspeed.initialize(model=step_module, model_parameters=groups,
                                                         config=self.ds_config)
        self.dtype = next(self.model.parameters()).dtype
        self.derived = {
            **self.plan.derived(), "image_size": self.image_size, "train_clips": len(self.dataset),
            "missing_clips": len(self.dataset.missing), "backend": self.info.backend,
            "launcher": self.args.launcher_used, "video_encoder": opts.video_encoder, "task": opts.task,
            "compiled": bool(opts.compile and opts.video_encoder != "vita"),
            "trainable_params": trainable,
        }
        if opts.batching == "retrieval":
            self.derived["retrieval_batching"] = self.sampler.describe()

    def write_config(self) -> None:
        if not self.main:
            return
        a = self.args
        paths = {**self._input_paths(), "out": a.out, "checkpoint_dir": a.checkpoint_dir}
        ck.write_json_atomic(self.out / "deepspeed_config.json", self.ds_config)
        ck.write_json_atomic(self.out / "config.json", {
            "stage": a.stage, "task": self.opts.task, "paths": paths, "options": self.opts.to_dict(), "derived": self.derived,
            "deepspeed": self.ds_config, "versions": _versions()})

    # ------------------------------------------------------------------------------------------------ state
    def resume(self) -> None:
        self.stop = False
        self.grad_norm = None
        self.state = {"step": 0, "best_value": None, "best_step": None, "best_tag": None, "eval_step": None}
        tag = ck.latest_tag(self.ckpt_dir)
        if tag is None:
            # DeepSpeed's schedulers start at iteration -1 = lr 0, which would make step 1 a no-op; one
            # priming step gives step 1 the first warm-up lr (warmup_min_ratio). Resumes load the iteration.
            if self.engine.lr_scheduler is not None:
                self.engine.lr_scheduler.step()
            return
        path, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        if path is None:
            raise UserError(f"could not load checkpoint {self.ckpt_dir}/{tag} (remove --checkpoint-dir to train "
                            "from the start)")
        self.sampler.load_state_dict(client["sampler"])
        self.state.update(client["trainer"])
        if self.main:
            print(f"[clipvip train] resumed from {self.ckpt_dir}/{tag} at step {self.state['step']}", flush=True)
            self._truncate_metrics(self.state["step"])

    def _truncate_metrics(self, step: int) -> None:
        # Lines logged after the checkpoint we resumed from belong to the lost timeline: drop them.
        path = self.metrics_path
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in keep))

    def client_state(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "trainer": dict(self.state)}

    def save(self, tag: str, latest: bool = True) -> None:
        # DeepSpeed's rank 0 writes `latest` as soon as its own files are written, before the other ranks'
        # ZeRO shards (only a barrier follows): a rank killed mid-save left `latest` naming a tag without
        # that rank's shard, and the resume failed. `save_checkpoint` ends with that barrier, so `latest`
        # written here names a tag every rank has finished.
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=self.client_state(),
                                    save_latest=False)
        if latest and self.main:
            ck.write_latest(self.ckpt_dir, tag)
        if self.main:
            ck.prune(self.ckpt_dir, self.opts.keep_checkpoints, protect={tag, self.state["best_tag"] or ""})

    # ------------------------------------------------------------------------------------------------ step
    def clamp_logit_scale(self):
        """Clamp to [0, ln 200] in the fp32 master (ZeRO keeps its own copy) and in the module; return the value
        as a 0-dim device tensor (read on the host only when logged)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        if not hasattr(self.model, "logit_scale"):  # VideoCLIP: tau = 1, no learned scale
            return self.torch.ones((), device=self.device)
        param = self.model.logit_scale
        master = safe_get_full_fp32_param(param)  # collective at ZeRO 1-3; None at stage 0
        if master is not None:
            clamped = master.clamp(0.0, math.log(200.0))
            if not self.torch.equal(clamped, master):
                safe_set_full_fp32_param(param, clamped)
        with self.deepspeed.zero.GatheredParameters([param], modifier_rank=0,
                                                    enabled=self.opts.zero_stage == 3):
            self.model.clamp_logit_scale_()
            value = param.detach().float().clone()
        return value

    def _to_device(self, batch: dict) -> dict:
        # uint8 pixels are CLIP-normalised here, on the device, exactly once (clipvip.data.to_device).
        from clipvip.data import to_device

        return to_device(batch, self.device, self.dtype)

    def train_step(self, it):
        """One optimizer step; None when the loss was not finite (nothing applied).

        Returns ``(loss, terms)`` as 0-dim tensors on the device (means over the micro-batches): the host reads
        them only when a line is logged. Per micro-batch the one host sync is the agreement on the flags
        (non-finite loss anywhere, stop signal anywhere): one 2-element MAX all-reduce on the engine's device
        (``clipvip.trainer.collectives``; NCCL refuses CPU tensors), which must precede backward.
        """
        torch, step = self.torch, self.state["step"] + 1
        loss_sum, terms_sum = None, {}
        self.step_lr = self.engine.get_lr()[0]  # the lr this step uses (DeepSpeed advances it after the step)
        for _ in range(self.accum):
            batch = self._to_device(next(it))
            loss, terms = self.engine(batch)
            if self.opts.debug_nan_at_step == step and self.main:
                loss = loss * float("nan")  # TEST ONLY (option debug_nan_at_step)
            flags = coll.all_reduce_flags([~torch.isfinite(loss.detach()), _STOP["signal"] is not None],
                                          self.device)
            bad, stop = (bool(f) for f in flags.tolist())
            if bad:
                shown = {k: float(v.detach()) for k, v in terms.items()}
                print(f"[clipvip train] rank {self.info.rank}: loss {float(loss.detach())} at step {step}, terms {shown}",
                      file=sys.stderr, flush=True)
                return None
            if stop:
                self.stop = True  # agreed by all ranks; a signal arriving later waits for the next step
            self.engine.backward(loss)
            if self.manual_clip and self.engine.is_gradient_accumulation_boundary():
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.engine.module.parameters(), self.manual_clip)
            self.engine.step()
            self.sampler.advance(self.advance_unit)
            loss_sum = loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
            for k, v in terms.items():
                part = v.detach().float() / self.accum
                terms_sum[k] = part if k not in terms_sum else terms_sum[k] + part
        self.state["step"] = step
        return loss_sum / self.accum, terms_sum

    # ------------------------------------------------------------------------------------------------ loop
    def evaluate(self) -> dict:
        module = self.engine.module
        module.eval()
        try:
            with self.torch.no_grad():
                result = self.task.evaluate(self)
        finally:
            module.train()
        return result

    def validate_and_select(self, epoch: float) -> None:
        result = self.evaluate()  # every rank (ZeRO-3 forwards are collective); identical results
        value, step = _metric(result, self.opts.select_metric), self.state["step"]
        self.state["eval_step"] = step
        if self.main:
            self.log({"event": "val", "step": step, "epoch": epoch, "metrics": result,
                      "select_metric": self.opts.select_metric, "value": value})
        best = self.state["best_value"]
        if best is None or value > best:
            self.state.update(best_value=value, best_step=step, best_tag=ck.best_tag(step))
            self.save(self.state["best_tag"], latest=False)  # prune() drops the previous best

    def log_clusters(self, stats: dict) -> None:
        """Rank 0: one ``{"event": "clusters", ...}`` line per cluster build. Its ``step`` is the first step
        that trains on them, so a resume from the checkpoint just before a build drops it and logs its own."""
        if not self.main:
            return
        self.log({"event": "clusters", "step": self.state["step"] + 1, **stats})
        print(f"[clipvip train] epoch {stats['epoch']}: {stats['num_clusters']} clusters of {stats['mean_size']:.1f} "
              f"videos on average ({stats['index']} index over {stats['num_videos']} videos) in "
              f"{stats['seconds']:.1f} s", flush=True)

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def fit(self) -> int:
        from tqdm import tqdm

        opts, total = self.opts, self.total_steps
        spe = self.steps_per_epoch
        eval_steps = opts.eval_every if isinstance(opts.eval_every, int) else spe
        bar = tqdm(total=total, initial=self.state["step"], disable=not self.main, desc="train", dynamic_ncols=True)
        epoch = self.sampler.epoch
        last_save = None
        while self.state["step"] < total:
            clusters = self.sampler.set_epoch(epoch)  # batching retrieval: may run the embedding pass first
            if clusters is not None:
                self.log_clusters(clusters)
            self.dataset.set_epoch(epoch)
            micro_left = spe * self.accum - self.sampler.position // self.advance_unit
            steps_left = min(micro_left // self.accum, total - self.state["step"])
            it = iter(self.loader) if steps_left > 0 else None
            for _ in range(steps_left):
                t0 = time.perf_counter()
                out = self.train_step(it)
                if out is None:
                    return self.diverged()
                loss, terms = out
                step = self.state["step"]
                scale = self.clamp_logit_scale()
                bar.update(1)
                logged = step % opts.log_every == 0 or step == total
                if logged and self.task.local_loss:  # every rank: its loss is its own micro-batches' mean
                    loss, terms = coll.all_reduce_mean(loss.clone()), {k: coll.all_reduce_mean(v.clone())
                                                                       for k, v in terms.items()}
                if self.main and logged:
                    loss, terms = float(loss), {k: float(v) for k, v in terms.items()}  # the host sync
                    self.log({"step": step, "epoch": step / spe, "loss": loss, "terms": terms,
                              "lr": self.step_lr, "grad_norm": _float(self.grad_norm if self.manual_clip
                                                  else self.engine.get_global_grad_norm()),
                              "logit_scale": float(scale), "clips_per_s": opts.batch_size / (time.perf_counter() - t0),
                              "peak_mem_mb": _peak_mem_mb(self.device)})
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.val and (step % eval_steps == 0 or step == total):
                    self.validate_and_select(step / spe)
                if step % opts.checkpoint_every == 0 or step == total or self.stop:
                    self.save(ck.step_tag(step))
                    last_save = step
                if self.stop:
                    bar.close()
                    if self.main:
                        ck.write_status(self.ckpt_dir, "preempted", step)
                        print(f"[clipvip train] signal {_STOP['signal']}: checkpointed step {step}, exiting "
                              f"{ck.EXIT_PREEMPTED} (rerun resumes)", file=sys.stderr, flush=True)
                    return ck.EXIT_PREEMPTED
            epoch += 1
        bar.close()
        step = self.state["step"]
        if self.val and self.state["eval_step"] != step:
            self.validate_and_select(step / spe)
        if last_save != step and ck.latest_tag(self.ckpt_dir) != ck.step_tag(step):
            self.save(ck.step_tag(step))  # e.g. resumed a finished run: nothing new, keep idempotent
        self.export()
        return 0

    def diverged(self) -> int:
        step = self.state["step"] + 1
        if self.main:
            ck.write_status(self.ckpt_dir, "diverged", step)
            print(f"[clipvip train] ERROR: non-finite loss at step {step}; stopped without saving. Last good "
                  f"checkpoint: {self.ckpt_dir}/{ck.latest_tag(self.ckpt_dir)} (rerun resumes from it; lower lr "
                  "or check the data).", file=sys.stderr, flush=True)
        return ck.EXIT_DIVERGED

    def export(self) -> None:
        step = self.state["step"]
        tag = self.state["best_tag"] if self.val else ck.step_tag(step)
        if self.main and hasattr(self.task, "export_model"):  # VideoCLIP: its own folder format
            self.task.export_model(self, tag)
        if self.main:
            if not hasattr(self.task, "export_model"):
                ck.export_model(self.ckpt_dir, tag, self.opts.zero_stage, self.model.config, self.tokenizer,
                                self.out / "model", extra_files=self.task.export_files(self))
            self.metrics_path.touch()
            with atomic_path(self.out / "metrics.jsonl") as tmp:
                shutil.copyfile(self.metrics_path, tmp)
            if self.val:
                ck.write_json_atomic(self.out / "selection.json", {
                    "step": self.state["best_step"], "metric": self.opts.select_metric,
                    "value": self.state["best_value"], "split": "val", "checkpoint": tag})
            ck.write_status(self.ckpt_dir, "done", step)
        coll.barrier(self.device)


def _float(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def run(args, opts, launcher: str) -> int:
    """Train on this rank; returns the process exit code (0, ``EXIT_DIVERGED`` or ``EXIT_PREEMPTED``)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _on_signal)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.launcher_used = launcher
    try:
        trainer = Trainer(args, opts, launcher)
        trainer.build()
        trainer.write_config()
        trainer.resume()
        if trainer.main:
            ck.write_status(trainer.ckpt_dir, "running", trainer.state["step"])
        try:
            return trainer.fit()
        finally:
            from clipvip.data.loader import close_loader

            # Workers ignore SIGTERM (worker_init_fn), so one still running at interpreter exit is never joined.
            close_loader(trainer.loader)
    except UserError as exc:
        # Under torchrun/submitit the launching parent maps the ranks' generic failure through this status:
        # it re-raises the message as one line and exit 2 (clipvip.trainer.launch.rank_outcome).
        # The rank's own line comes from clipvip.stage.stage_main (torchrun children run `clipvip train`).
        ck.write_status(args.checkpoint_dir, "error", -1, message=str(exc))
        raise
