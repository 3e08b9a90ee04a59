"""Peak memory per rank, ZeRO-2 vs ZeRO-0, for a ViT-B/32-sized CLIP-ViP training step (2 CPU ranks, gloo).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/zero_memory.py --quick     # ~1-2 min: 1 step, 2 clips x 2 frames per rank
    python benchmarks/zero_memory.py                               # 3 steps, 4 clips x 4 frames per rank

The model is built from a default ``CLIPConfig`` (ViT-B/32 geometry, ~151 M parameters, random weights, no hub)
with the real trainer pieces: ``ContrastiveStep`` + ``clipvip.trainer.plan.build_ds_config`` (AdamW). Headline =
``precision: bf16`` -- the configuration the GPU path uses (``auto`` -> bf16 on GPU): bf16 weights and
gradients, fp32 master weights + AdamW moments held by DeepSpeed. It runs on CPU (slowly, and drifting, which
does not matter for memory). fp32 (the CPU default) is measured too and printed first, for transparency.
Per stage one ``torchrun`` launch with 2 ranks (the two launches run concurrently; RSS is per process);
inside it fp32 then bf16, each with a freshly built model.

What is measured (per rank, per precision): the kernel's RSS high-water mark (``VmHWM`` in
``/proc/self/status``, the same counter ``getrusage(RUSAGE_SELF).ru_maxrss`` reports, but resettable: writing
``5`` to ``/proc/self/clear_refs`` resets it to the current RSS), so short transients inside backward/step
are caught exactly -- a sampling thread could miss them. Baseline = RSS after imports, ``init_distributed``
and a barrier, just BEFORE the model is built; the HWM is reset there. So "peak" = the most memory the rank
held for model construction + ``deepspeed.initialize`` + the training step(s): weights, gradients, master
copies, AdamW moments, ZeRO buckets, activations. That is the quantity ZeRO's 16P -> 2P+14P/N arithmetic is
about (it includes the weights). Workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so every tensor larger than
64 KiB is its own mmap and freed memory leaves RSS at once (no glibc heap reuse blurring peak or the second
measurement in the process); ``malloc_trim`` runs between the two precisions.

Analytic per-rank model states (P params, N = 2 ranks, B = bucket elements; printed next to the measurement):
    fp32 ZeRO-0: 4P weights + 4P grads + 8P AdamW                        = 16P
    fp32 ZeRO-2: 4P weights + 4P/N fp32 partition copy (DeepSpeed keeps one even for fp32 models)
                 + 4P/N grad partition + 8P/N AdamW                     = 12P (+4B bucket)  -> >= 0.75
    bf16 ZeRO-0: 2P weights + 2P grads + 4P master + 8P AdamW            = 16P (+4P fp32 master grads at step)
    bf16 ZeRO-2: 2P weights + 2P/N grad partition + 4P/N master + 8P/N AdamW = 9P (+2B bucket in backward,
                 +4P/N fp32 partition grads at step)                                          -> ~0.56

The trainer's DeepSpeed config (``clipvip/trainer/plan.py``) is measured as is. Two of its defaults come from
this benchmark:

AdamW ``"fused": true`` for torch's AdamW (the trainer uses ``torch_adam``;
DeepSpeed passes extra optimizer params through to ``torch.optim.AdamW``). The default single-tensor /
foreach AdamW builds ``exp_avg_sq.sqrt() / bc`` temporaries the size of the tensor it updates; ZeRO-2 hands
the optimizer ONE flat fp32 partition (P/N elements), so that is a 2 x 4P/N transient at the step (~580 MB
here) that ZeRO-0's per-parameter updates never have. Fused AdamW (CPU and CUDA) has no temporaries and is
also the fastest torch implementation (the step here is ~2x faster).

Bounded ZeRO-2 buckets: DeepSpeed's default ``reduce_bucket_size`` / ``allgather_bucket_size`` are 5e8 elements, larger than this whole
model, so with ``contiguous_gradients`` the reduce bucket becomes a full second copy of the gradients during
backward (autograd's ``.grad`` is copied into the bucket; only when the bucket fills is it reduced, the rank's
own slice copied into its partition and the rest dropped). Bounding the buckets to 5e7 elements (~100 MB bf16,
the range DeepSpeed's docs and HF examples use for ZeRO-2) makes ZeRO-2 free gradients progressively during
backward (measured, --quick: backward HWM bf16 1187 -> 935 MB, fp32 2065 -> 1560 MB; the per-rank peak is
at the optimizer step either way, so this matters for larger models / activations). ``overlap_comm`` stays off (it double-buffers the bucket: 2x memory, and gloo on CPU has no overlap
to gain); ``round_robin_gradients`` only affects CPU-offload gradient copies, so it is left at its default.
The LAST line printed is one JSON object (``value`` = max over ranks ZeRO-2 peak / ZeRO-0 peak, bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.6
PRECISIONS = ("fp32", "bf16")
# Both stages: torch's fused AdamW (see the module docstring; recommended as a trainer default).
MB = 1024 * 1024


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current VmRSS


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure(precision: str, stage: int, steps: int, clips: int, frames: int, user_json: str | None) -> dict:
    import deepspeed
    import torch
    from transformers import CLIPConfig

    from clipvip.trainer.plan import build_ds_config
    from clipvip.model import CLIPViPConfig, CLIPViPModel
    from clipvip.trainer.options import TrainOptions
    from clipvip.trainer.step import ContrastiveStep

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    _trim()
    torch.distributed.barrier()
    base = _rss_mb("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    hwm = {}
    torch.manual_seed(0)
    model = CLIPViPModel(CLIPViPConfig.from_clip_config(CLIPConfig().to_dict()))
    n_params = sum(p.numel() for p in model.parameters())
    hwm["model"] = _rss_mb("VmHWM") - base
    opts = TrainOptions.from_dict({"zero_stage": stage, "batch_size": clips * world, "lr": 1e-5,
                                   "grad_clip": 0.0, "precision": precision, "deepspeed_config": user_json},
                                  stage="finetune")
    # No clipping: DeepSpeed's stage-0 fp32 clip fails on the 0-dim logit_scale (clipvip.trainer.plan.manual_clip),
    # and clipping does not change what is stored.
    cfg = build_ds_config(opts, world_size=world, total_steps=steps + 1, on_gpu=False)
    step_module = ContrastiveStep(model, "vs", dedup_texts=False)
    groups = model.param_groups(weight_decay=opts.weight_decay, lr=opts.lr)
    engine, *_ = deepspeed.initialize(model=step_module, model_parameters=groups, config=cfg)
    hwm["init"] = _rss_mb("VmHWM") - base
    dtype = next(model.parameters()).dtype
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        batch = {"pixel_values": torch.randn(clips, frames, 3, size, size, generator=g).to(dtype),
                 "input_ids": torch.randint(0, 49406, (clips, 32), generator=g),
                 "attention_mask": torch.ones(clips, 32, dtype=torch.long)}
        loss, _ = engine(batch)
        engine.backward(loss)
        hwm["backward"] = max(hwm.get("backward", 0), _rss_mb("VmHWM") - base)
        engine.step()
        hwm["step"] = max(hwm.get("step", 0), _rss_mb("VmHWM") - base)
    result = {"rank": rank, "stage": stage, "precision": precision, "params": n_params, "base_mb": base,
              "peak_mb": _rss_mb("VmHWM") - base, "end_mb": _rss_mb("VmRSS") - base, "hwm": hwm,
              "seconds": time.perf_counter() - t0, "loss": float(loss.detach().float()),
              "model_dtype": str(dtype), "optimizer": type(engine.optimizer).__name__,
              "fused_adamw": bool(engine.basic_optimizer.defaults.get("fused")),
              "zero": cfg["zero_optimization"]}
    engine.destroy()
    del engine, step_module, model, groups, batch, loss, _
    _trim()
    return result


def worker(stage: int, steps: int, clips: int, frames: int, out: str, user_json: str | None) -> None:
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    rank = torch.distributed.get_rank()
    rows = [measure(p, stage, steps, clips, frames, user_json) for p in PRECISIONS]
    Path(f"{out}.rank{rank}").write_text(json.dumps(rows))


def launch_stage(stage: int, quick: bool, tmp: Path, user_json: str | None):
    steps, clips, frames = (1, 2, 2) if quick else (3, 4, 4)
    out = tmp / f"zero{stage}"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           "--worker", "--stage", str(stage), "--steps", str(steps), "--clips", str(clips), "--frames",
           str(frames), "--out", str(out)] + (["--deepspeed-config", user_json] if user_json else [])
    err = open(tmp / f"zero{stage}.stderr", "w+")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True), err, out


def collect(stage: int, proc, err, out: Path) -> list[dict]:
    if proc.wait():
        err.seek(0)
        sys.exit(f"ZeRO-{stage} workers failed:\n{err.read()[-4000:]}")
    return [row for r in range(2) for row in json.loads(Path(f"{out}.rank{r}").read_text())]


def analytic_mb(precision: str, stage: int, p: int, world: int, bucket: int) -> tuple[float, float]:
    """(steady model states, peak incl. transient buffers) in MB per rank, see the module docstring."""
    if precision == "fp32":
        steady = 16 * p if stage == 0 else 4 * p + 16 * p / world
        peak = steady + (4 * min(bucket, p) if stage == 2 else 0)
    else:
        steady = 16 * p if stage == 0 else 2 * p + 14 * p / world
        peak = steady + 4 * p if stage == 0 else steady + max(2 * min(bucket, p), 4 * p / world)
    return steady / MB, peak / MB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--deepspeed-config", help="DeepSpeed JSON merged over the trainer's (both stages)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--clips", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--out")
    a = p.parse_args()
    if a.worker:
        worker(a.stage, a.steps, a.clips, a.frames, a.out, a.deepspeed_config)
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Both stages at once (4 processes): RSS is per process, so they do not disturb each other's numbers,
        # and the ranks spend much of their time waiting on each other -- this halves the wall time.
        jobs = {stage: launch_stage(stage, a.quick, Path(tmp), a.deepspeed_config)
                for stage in (0, 2)}
        rows = [r for stage, job in jobs.items() for r in collect(stage, *job)]
    n_params = rows[0]["params"]
    z2 = next(r["zero"] for r in rows if r["stage"] == 2)
    print(f"model parameters: {n_params / 1e6:.1f} M; fused AdamW: {rows[0]['fused_adamw']}; "
          f"ZeRO-2 settings: {json.dumps(z2)}")
    print("metric: VmHWM (RSS high-water, reset at baseline) minus RSS before model construction, per rank; "
          "MB")
    print(f"{'prec':>4} {'stage':>5} {'rank':>4} {'optimizer':>22} {'peak':>6} {'model':>6} {'init':>6} "
          f"{'bwd':>6} {'step':>6} {'end':>6} {'s':>5}")
    peaks: dict[tuple[str, int], float] = {}
    for prec in PRECISIONS:
        for r in (r for r in rows if r["precision"] == prec):
            h = r["hwm"]
            print(f"{prec:>4} {r['stage']:>5} {r['rank']:>4} {r['optimizer']:>22} {r['peak_mb']:>6.0f} "
                  f"{h['model']:>6.0f} {h['init']:>6.0f} {h['backward']:>6.0f} {h['step']:>6.0f} "
                  f"{r['end_mb']:>6.0f} {r['seconds']:>5.1f}")
            key = (prec, r["stage"])
            peaks[key] = max(peaks.get(key, 0.0), r["peak_mb"])
    bucket = int(z2.get("reduce_bucket_size", 5e8))
    for prec in PRECISIONS:
        (s0, p0), (s2, p2) = (analytic_mb(prec, st, n_params, 2, bucket) for st in (0, 2))
        print(f"{prec}: measured peak ZeRO-0 {peaks[(prec, 0)]:.0f} MB, ZeRO-2 {peaks[(prec, 2)]:.0f} MB -> "
              f"{peaks[(prec, 2)] / peaks[(prec, 0)]:.3f}x | analytic model states {s0:.0f} -> {s2:.0f} MB "
              f"({s2 / s0:.3f}x), with transient buffers {p0:.0f} -> {p2:.0f} MB ({p2 / p0:.3f}x)")
    ratio = peaks[("bf16", 2)] / peaks[("bf16", 0)]
    print(json.dumps({"benchmark": "zero_memory", "value": round(ratio, 4),
                      "unit": "x ZeRO-0 peak memory per rank (bf16, 2 ranks)", "target": TARGET,
                      "ok": ratio <= TARGET}))


if __name__ == "__main__":
    main()
