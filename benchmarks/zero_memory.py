"""Peak memory per rank, ZeRO-2 vs ZeRO-0, for a ViT-B/32-sized CLIP-ViP training step (2 CPU ranks, gloo).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/zero_memory.py --quick     # ~1 min: 1 step, 2 clips x 2 frames per rank
    python benchmarks/zero_memory.py                               # 3 steps, 4 clips x 4 frames per rank

The model is built from a default ``CLIPConfig`` (ViT-B/32 geometry, ~151 M parameters, random weights, no hub)
with the real trainer pieces: ``ContrastiveStep`` + ``clipvip.ds_config.build_ds_config`` (AdamW, fp32 on CPU).
For each stage the script starts 2 ranks with torchrun, one stage after the other.

What is measured: per rank, the process RSS high-water mark (Linux ``VmHWM``) over ``deepspeed.initialize`` +
the training steps, minus the RSS just before ``initialize`` (model already built). The high-water mark is
reset right before (``/proc/self/clear_refs`` = 5), so model-construction transients do not count. That is
the memory DeepSpeed training adds on top of the fp32 weights: gradients, AdamW moments, fp32 master
partitions, communication buckets and activations. ZeRO-2 shards moments/master/gradients over the ranks.
The LAST line printed is one JSON object (``value`` = max over ranks ZeRO-2 / max over ranks ZeRO-0).
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


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(stage: int, steps: int, clips: int, frames: int, out: str, ds_json: str | None) -> None:
    import deepspeed
    import torch
    from transformers import CLIPConfig

    from clipvip.ds_config import build_ds_config
    from clipvip.model import CLIPViPConfig, CLIPViPModel
    from clipvip.trainer.options import TrainOptions
    from clipvip.trainer.step import ContrastiveStep

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(0)
    model = CLIPViPModel(CLIPViPConfig.from_clip_config(CLIPConfig().to_dict()))
    n_params = sum(p.numel() for p in model.parameters())
    opts = TrainOptions.from_dict({"zero_stage": stage, "batch_size": clips * world, "lr": 1e-5,
                                   "grad_clip": 0.0, "deepspeed_config": ds_json}, stage="finetune")
    # No clipping: DeepSpeed's stage-0 fp32 clip fails on the 0-dim logit_scale (clipvip.ds_config.manual_clip),
    # and clipping does not change what is stored.
    cfg = build_ds_config(opts, world_size=world, total_steps=steps + 1, on_gpu=False)
    step_module = ContrastiveStep(model, "vs", dedup_texts=False)
    groups = model.param_groups(weight_decay=opts.weight_decay, lr=opts.lr)
    torch.distributed.barrier()
    base = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    engine, *_ = deepspeed.initialize(model=step_module, model_parameters=groups, config=cfg)
    init_peak = _rss_mb("VmHWM")
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(rank)
    phases = {}
    for _ in range(steps):
        batch = {"pixel_values": torch.randn(clips, frames, 3, size, size, generator=g),
                 "input_ids": torch.randint(0, 49406, (clips, 32), generator=g),
                 "attention_mask": torch.ones(clips, 32, dtype=torch.long)}
        loss, _ = engine(batch)
        engine.backward(loss)
        phases["backward"] = max(phases.get("backward", 0), _rss_mb("VmHWM") - base)
        engine.step()
        phases["step"] = max(phases.get("step", 0), _rss_mb("VmHWM") - base)
    peak = _rss_mb("VmHWM")
    result = {"rank": rank, "stage": stage, "params": n_params, "base_rss_mb": base, "peak_rss_mb": peak,
              "delta_mb": peak - base, "init_delta_mb": init_peak - base, "after_mb": _rss_mb("VmRSS") - base, "seconds": time.perf_counter() - t0, "phases": phases, "loss": float(loss.detach())}
    with open(f"{out}.rank{rank}", "w") as fh:
        json.dump(result, fh)


def run_stage(stage: int, quick: bool, tmp: Path, ds_json: str | None) -> list[dict]:
    steps, clips, frames = (1, 2, 2) if quick else (3, 4, 4)
    out = tmp / f"zero{stage}"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           "--worker", "--stage", str(stage), "--steps", str(steps), "--clips", str(clips), "--frames",
           str(frames), "--out", str(out)] + (["--deepspeed-config", ds_json] if ds_json else [])
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"ZeRO-{stage} workers failed:\n{proc.stderr[-4000:]}")
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--deepspeed-config", help="DeepSpeed JSON merged over the trainer's (e.g. bucket sizes)")
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
        results = {stage: run_stage(stage, a.quick, Path(tmp), a.deepspeed_config) for stage in (0, 2)}
    peaks = {}
    print(f"{'stage':>5} {'rank':>4} {'base RSS MB':>12} {'peak RSS MB':>12} {'added MB':>9} {'s':>6}  "
          "(added MB: peak after init / after backward / after step; RSS at the end)")
    for stage, rows in results.items():
        for r in rows:
            print(f"{stage:>5} {r['rank']:>4} {r['base_rss_mb']:>12.0f} {r['peak_rss_mb']:>12.0f} "
                  f"{r['delta_mb']:>9.0f} {r['seconds']:>6.1f}  ({r['init_delta_mb']:.0f} / {r['phases']['backward']:.0f} / "
                  f"{r['phases']['step']:.0f}; end {r['after_mb']:.0f})")
        peaks[stage] = max(r["delta_mb"] for r in rows)
    print(f"model parameters: {results[0][0]['params'] / 1e6:.1f} M; metric: RSS high-water added by "
          "deepspeed.initialize + training steps, max over ranks")
    ratio = peaks[2] / peaks[0]
    print(json.dumps({"benchmark": "zero_memory", "value": round(ratio, 4), "unit": "x ZeRO-0 peak memory per rank",
                      "target": TARGET, "ok": ratio <= TARGET}))


if __name__ == "__main__":
    main()
