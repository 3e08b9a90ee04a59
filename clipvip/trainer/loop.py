"""One rank of ``clipvip train``: data, DeepSpeed engine, resume, steps, checkpoints, validation, export.

Usage (``clipvip.train`` calls this after launching): ``code = run(args, opts, launcher="none")``.

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
from clipvip.trainer import checkpoints as ck

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


def _load_tokenizer(init: str):
    if Path(init).is_dir():
        from clipvip.data.text import load_tokenizer

        return load_tokenizer(init)
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast.from_pretrained(init)


def _versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__}


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
        torch.distributed.barrier()  # nobody looks for checkpoints before rank 0 has claimed the folder

    def _input_paths(self) -> dict:
        a = self.args
        return {k: getattr(a, k) for k in ("frames_index", "annotations", "captions", "val_annotations",
                                           "val_frames_index", "init")}

    # ------------------------------------------------------------------------------------------------ setup
    def build(self) -> None:
        torch, opts, args = self.torch, self.opts, self.args

        from clipvip.data.annotations import read_annotations, read_captions
        from clipvip.data.loader import build_loader
        from clipvip.data.datasets import FinetuneDataset, PretrainDataset
        from clipvip.data.sampler import ResumableDistributedSampler
        from clipvip.data.text import TokenizingCollator
        from clipvip.ds_config import build_ds_config, manual_clip, resolve_precision
        from clipvip.frames import FrameIndex
        from clipvip.model import CLIPViPModel
        from clipvip.trainer.step import ContrastiveStep

        # Same seed on every rank: identical random init of new parameters (proxies, temporal embedding).
        torch.manual_seed(opts.seed)
        loaded = CLIPViPModel.from_pretrained(args.init, video_encoder=opts.video_encoder,
                                              temporal_init_std=opts.temporal_init_std)
        self.model = loaded[0] if isinstance(loaded, tuple) else loaded
        self.tokenizer = _load_tokenizer(args.init)
        self.image_size = opts.image_size or self.model.config.vision_config.image_size

        anns = read_annotations(args.annotations, text_mode=opts.text_mode)
        index = FrameIndex(args.frames_index)
        if args.stage == "finetune":
            self.dataset = FinetuneDataset(index, anns, opts.num_frames, self.image_size, train=True, seed=opts.seed)
        else:
            captions = read_captions(args.captions) if args.captions else None
            self.dataset = PretrainDataset(index, anns, captions, opts.num_frames, self.image_size, seed=opts.seed)

        world = self.info.world_size
        on_gpu = self.device.type == "cuda"
        # Total steps before the config: the scheduler needs them. Batch geometry is validated in ds_config.
        from clipvip.ds_config import batch_geometry, warmup_steps

        _, self.micro, self.accum = batch_geometry(opts.batch_size, opts.micro_batch_per_gpu, opts.grad_accum, world)
        if opts.batch_size % opts.group_size:
            raise SystemExit(f"--options: batch_size {opts.batch_size} is not a multiple of group_size "
                             f"{opts.group_size}: groups would straddle batches")
        self.sampler = ResumableDistributedSampler(len(self.dataset), num_replicas=world, rank=self.info.rank,
                                                   shuffle=True, seed=opts.seed, group_size=opts.group_size)
        self.steps_per_epoch = self.sampler.num_samples // (self.micro * self.accum)
        if self.steps_per_epoch < 1:
            raise SystemExit(f"{len(self.dataset)} training clips cannot fill one global batch of {opts.batch_size}")
        self.total_steps = int(opts.max_steps or max(1, math.ceil(opts.epochs * self.steps_per_epoch)))
        self.ds_config = build_ds_config(opts, world, self.total_steps, on_gpu)
        self.manual_clip = manual_clip(self.ds_config)  # stage-0 fp32 workaround, see ds_config.manual_clip

        workers = opts.num_workers
        self.loader = build_loader(self.dataset, self.sampler, self.micro, workers,
                                   TokenizingCollator(self.tokenizer, opts.max_text_len), drop_last=True,
                                   pin_memory=on_gpu)

        step_module = ContrastiveStep(self.model, opts.loss, dedup_texts=opts.dedup_texts)
        if opts.zero_stage == 3:
            step_module.register_zero3_externals()
        groups = self.model.param_groups(weight_decay=opts.weight_decay, lr=opts.lr,
                                         temporal_lr_mult=opts.temporal_lr_mult)
        self.engine, _, _, _ = self.deepspeed.initialize(model=step_module, model_parameters=groups,
                                                         config=self.ds_config)
        self.dtype = next(self.model.parameters()).dtype

        self.val = None
        if args.val_annotations:
            self.val = dict(frame_index=FrameIndex(args.val_frames_index or args.frames_index),
                            annotations=read_annotations(args.val_annotations, text_mode=opts.text_mode))
        self.derived = {
            "world_size": world, "micro_batch_per_gpu": self.micro, "grad_accum": self.accum,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "warmup_steps": warmup_steps(self.total_steps, opts.warmup_ratio),
            "precision": resolve_precision(opts.precision, on_gpu), "image_size": self.image_size,
            "train_clips": len(self.dataset), "missing_clips": len(self.dataset.missing),
            "manual_grad_clip": self.manual_clip, "backend": self.info.backend, "launcher": self.args.launcher_used,
        }

    def write_config(self) -> None:
        if not self.main:
            return
        a = self.args
        paths = {**self._input_paths(), "out": a.out, "checkpoint_dir": a.checkpoint_dir}
        ck.write_json_atomic(self.out / "deepspeed_config.json", self.ds_config)
        ck.write_json_atomic(self.out / "config.json", {
            "stage": a.stage, "paths": paths, "options": self.opts.to_dict(), "derived": self.derived,
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
            raise SystemExit(f"could not load checkpoint {self.ckpt_dir}/{tag}")
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
        path.write_text("".join(line + "\n" for line in keep))

    def client_state(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "trainer": dict(self.state)}

    def save(self, tag: str, latest: bool = True) -> None:
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=self.client_state(),
                                    save_latest=latest)
        if self.main:
            ck.prune(self.ckpt_dir, self.opts.keep_checkpoints, protect={tag, self.state["best_tag"] or ""})

    # ------------------------------------------------------------------------------------------------ step
    def clamp_logit_scale(self) -> float:
        """Clamp to [0, ln 200] in the fp32 master (ZeRO keeps its own copy) and in the module; return value."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        param = self.model.logit_scale
        master = safe_get_full_fp32_param(param)  # collective at ZeRO 1-3; None at stage 0
        if master is not None:
            clamped = master.clamp(0.0, math.log(200.0))
            if not self.torch.equal(clamped, master):
                safe_set_full_fp32_param(param, clamped)
        with self.deepspeed.zero.GatheredParameters([param], modifier_rank=0,
                                                    enabled=self.opts.zero_stage == 3):
            self.model.clamp_logit_scale_()
            value = float(param.detach().float())
        return value

    def _to_device(self, batch: dict) -> dict:
        # uint8 pixels are CLIP-normalised here, on the device, exactly once (clipvip.data.to_device).
        from clipvip.data import to_device

        return to_device(batch, self.device, self.dtype)

    def train_step(self, it) -> tuple[float, dict] | None:
        """One optimizer step; None when the loss was not finite (nothing applied)."""
        torch, step = self.torch, self.state["step"] + 1
        losses, terms_sum = [], {}
        self.step_lr = self.engine.get_lr()[0]  # the lr this step uses (DeepSpeed advances it after the step)
        for _ in range(self.accum):
            batch = self._to_device(next(it))
            loss, terms = self.engine(batch)
            if self.opts.debug_nan_at_step == step and self.main:
                loss = loss * float("nan")  # TEST ONLY (option debug_nan_at_step)
            flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0,
                                  1.0 if _STOP["signal"] is not None else 0.0])
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            if flags[0] > 0:
                shown = {k: float(v.detach()) for k, v in terms.items()}
                print(f"[clipvip train] rank {self.info.rank}: loss {float(loss.detach())} at step {step}, terms {shown}",
                      file=sys.stderr, flush=True)
                return None
            if flags[1] > 0:
                self.stop = True  # agreed by all ranks; a signal arriving later waits for the next step
            self.engine.backward(loss)
            if self.manual_clip and self.engine.is_gradient_accumulation_boundary():
                self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.engine.module.parameters(),
                                                                      self.manual_clip))
            self.engine.step()
            self.sampler.advance(self.micro)
            losses.append(float(loss.detach()))
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / self.accum
        self.state["step"] = step
        return sum(losses) / len(losses), terms_sum

    # ------------------------------------------------------------------------------------------------ loop
    def evaluate(self) -> dict:
        from clipvip.evaluate import evaluate_model

        module = self.engine.module
        module.eval()
        try:
            with self.torch.no_grad():
                result = evaluate_model(self.model, self.tokenizer, self.val["frame_index"],
                                        self.val["annotations"], num_frames=self.opts.num_frames,
                                        max_text_len=self.opts.max_text_len, batch_size=self.opts.eval_batch_size,
                                        device=self.device, image_size=self.image_size, progress=False)
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
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            micro_left = spe * self.accum - self.sampler.position // self.micro
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
                if self.main and (step % opts.log_every == 0 or step == total):
                    self.log({"step": step, "epoch": step / spe, "loss": loss, "terms": terms,
                              "lr": self.step_lr, "grad_norm": _float(self.grad_norm if self.manual_clip
                                                  else self.engine.get_global_grad_norm()),
                              "logit_scale": scale, "clips_per_s": opts.batch_size / (time.perf_counter() - t0),
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
        if self.main:
            ck.export_model(self.ckpt_dir, tag, self.opts.zero_stage, self.model.config, self.tokenizer,
                            self.out / "model")
            tmp = self.out / "metrics.jsonl.tmp"
            self.metrics_path.touch()
            shutil.copyfile(self.metrics_path, tmp)
            os.replace(tmp, self.out / "metrics.jsonl")
            if self.val:
                ck.write_json_atomic(self.out / "selection.json", {
                    "step": self.state["best_step"], "metric": self.opts.select_metric,
                    "value": self.state["best_value"], "split": "val", "checkpoint": tag})
            ck.write_status(self.ckpt_dir, "done", step)
        self.torch.distributed.barrier()


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
    trainer = Trainer(args, opts, launcher)
    trainer.build()
    trainer.write_config()
    trainer.resume()
    if trainer.main:
        ck.write_status(trainer.ckpt_dir, "running", trainer.state["step"])
    return trainer.fit()
