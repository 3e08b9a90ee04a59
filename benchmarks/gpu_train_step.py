"""GPU training-step throughput of CLIP-ViP: clips/s, step time, peak memory and MFU, ViP vs MeanPool.

Usage:
    python benchmarks/gpu_train_step.py                 # ViT-B/32 and ViT-B/16, vip and meanpool (one H200)
    python benchmarks/gpu_train_step.py --quick         # fewer timed steps, B/16 only
    python benchmarks/gpu_train_step.py --dry-run       # CPU, tiny config, 2 steps: checks the script itself

What is timed: one optimizer step through the real trainer pieces -- ``ContrastiveStep`` (loss ``vs``, in
fp32) wrapped by a one-rank DeepSpeed engine built from ``clipvip.trainer.plan.build_ds_config`` (ZeRO-2,
bf16, fused AdamW, overlap_comm) -- on random pixels [B, T=12, 3, 224, 224] and random token ids of length
70, already on the GPU (the input pipeline has its own benchmark). Models are randomly initialised from a
``CLIPConfig`` with the B/32 or B/16 vision shapes (width 768, 12 layers, 12 heads, MLP 3072) and CLIP's
text tower (width 512, 12 layers, 8 heads, MLP 2048), projection 512, M=4 proxies.

Batch: the largest per-GPU batch up to ``--max-batch`` (256) whose forward+backward fits, found by halving
on CUDA OOM (before the engine exists, so an OOM leaves no half-reduced ZeRO buckets behind).

MFU = model FLOPs per step / step time / 989 TFLOP/s (H100/H200 dense bf16). Model FLOPs count the matmuls
of the architecture, forward x 3 for forward + backward: per layer 8·n·d² (q, k, v, out projections) +
4·n·d·f (MLP) + 4·d·(query-key pairs) (scores and weighted values), the patch embedding (2·3·p²·d per
patch) and the projections. ViP's pairs are the structured ones it computes (M proxies over all M+T·L
keys, each frame's L patches over M+L keys), MeanPool's are T independent frames of 1+L tokens, the text
tower's are 70² (causal masking is not subtracted, as usual). Targets: MFU >= 40 % for B/16 ViP and a
ViP / MeanPool step-time ratio <= 1.10 (the proxies cost almost nothing).

Last line: ``{"benchmark": "gpu_train_step", "value": <B/16 ViP MFU %>, "unit": "% MFU (B/16 ViP, bf16)",
"target": 40, "ok": ...}`` (``--dry-run``: ok false and a note).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_FLOPS = 989e12  # H100 / H200 SXM dense bf16
VISION = {"b32": dict(patch_size=32), "b16": dict(patch_size=16)}
TEXT_LEN = 70
PROXIES = 4


def clip_config(patch_size: int, image_size: int = 224, tiny: bool = False):
    from transformers import CLIPConfig

    if tiny:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=image_size, patch_size=patch_size)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=77, vocab_size=49408)
        proj = 32
    else:
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=image_size, patch_size=patch_size)
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                    max_position_embeddings=77, vocab_size=49408)
        proj = 512
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=proj)


def layer_flops(tokens: int, pairs: int, d: int, f: int) -> float:
    """Forward matmul FLOPs of one pre-LN transformer layer: projections, MLP, scores and weighted values."""
    return 8 * tokens * d * d + 4 * tokens * d * f + 4 * pairs * d


def model_flops(cfg, encoder: str, batch: int, frames: int, text_len: int, proxies: int = PROXIES) -> float:
    """Training FLOPs (forward x 3) of one step of ``batch`` videos of ``frames`` frames and ``batch`` texts."""
    v, t = cfg.vision_config, cfg.text_config
    d, f, layers, p = v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.patch_size
    patches = (v.image_size // p) ** 2
    embed = 2 * 3 * p * p * d * patches * frames  # the patch convolution, every frame
    if encoder in ("vip", "full_attention"):
        tokens = proxies + frames * patches
        if encoder == "vip":
            pairs = proxies * tokens + frames * patches * (proxies + patches)
        else:
            pairs = tokens * tokens
        vision = layers * layer_flops(tokens, pairs, d, f)
    else:  # per-frame image path: T independent sequences of CLS + L patches
        tokens = 1 + patches
        vision = frames * layers * layer_flops(tokens, tokens * tokens, d, f)
    vision += embed + 2 * d * cfg.projection_dim * (1 if encoder in ("vip", "full_attention") else frames)
    td, tf, tl = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    text = tl * layer_flops(text_len, text_len * text_len, td, tf) + 2 * td * cfg.projection_dim
    return 3.0 * batch * (vision + text)


def _batch(batch: int, frames: int, image: int, text_len: int, device, dtype):
    import torch

    return {"pixel_values": torch.randn(batch, frames, 3, image, image, device=device, dtype=dtype),
            "input_ids": torch.randint(1, 49000, (batch, text_len), device=device),
            "attention_mask": torch.ones(batch, text_len, dtype=torch.long, device=device)}


def largest_batch(step_module, max_batch: int, frames: int, image: int, text_len: int, device, dtype) -> int:
    """The largest batch (max_batch, max_batch/2, ...) whose forward + backward fits in GPU memory, with the
    memory ZeRO-2's optimizer will hold (fp32 master, Adam moments, fp32 gradient partition: 16 B/param)
    reserved meanwhile."""
    import torch

    params = sum(p.numel() for p in step_module.parameters())
    reserve = torch.empty(params * 16, dtype=torch.uint8, device=device)
    batch = max_batch
    try:
        while batch >= 1:
            try:
                loss, _ = step_module(_batch(batch, frames, image, text_len, device, dtype))
                loss.backward()
                return batch
            except torch.cuda.OutOfMemoryError:
                batch //= 2
            finally:
                loss = None
                step_module.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
        raise RuntimeError("not even a batch of 1 fits")
    finally:
        del reserve


def measure(name: str, encoder: str, args, device, dry: bool) -> dict:
    import deepspeed
    import torch

    from clipvip.model import CLIPViPConfig, CLIPViPModel
    from clipvip.trainer.options import TrainOptions
    from clipvip.trainer.plan import build_ds_config
    from clipvip.trainer.step import ContrastiveStep

    on_gpu = device.type == "cuda"
    image = 32 if dry else 224
    frames, text_len = (4, 16) if dry else (args.frames, TEXT_LEN)
    cfg = CLIPViPConfig.from_clip_config(clip_config(16 if dry else VISION[name]["patch_size"], image, tiny=dry),
                                         video_encoder=encoder, num_proxies=PROXIES, temporal_size=frames)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = CLIPViPModel(cfg).to(device=device, dtype=dtype)  # DeepSpeed bf16 would cast it the same way
    step_module = ContrastiveStep(model, "vs", dedup_texts=False)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        batch = largest_batch(step_module, args.max_batch, frames, image, text_len, device, dtype)
    else:
        batch = 4
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    opts = TrainOptions.from_dict({"batch_size": batch, "zero_stage": 2, "precision": "bf16" if on_gpu else "fp32",
                                   "lr": 1e-5, "grad_clip": 1.0, "warmup_ratio": 0.0}, "finetune")
    steps = 2 if dry else args.steps
    ds_config = build_ds_config(opts, world_size=1, total_steps=steps + args.warmup + 2, on_gpu=on_gpu)
    engine, *_ = deepspeed.initialize(model=step_module, model_parameters=model.param_groups(0.2, 1e-5),
                                      config=ds_config)
    data = _batch(batch, frames, image, text_len, device, dtype)

    def one_step():
        loss, _ = engine(data)
        engine.backward(loss)
        engine.step()
        return loss

    for _ in range(0 if dry else args.warmup):
        one_step()
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    if on_gpu:
        torch.cuda.synchronize(device)
    step_s = (time.perf_counter() - t0) / steps
    flops = model_flops(cfg, encoder, batch, frames, text_len)
    result = {"model": name, "encoder": encoder, "batch": batch, "frames": frames, "text_len": text_len,
              "step_s": round(step_s, 4), "clips_per_s": round(batch / step_s, 1),
              "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_gpu else None,
              "tflops_per_step": round(flops / 1e12, 2), "mfu_pct": round(100 * flops / step_s / PEAK_FLOPS, 2),
              "loss": float(loss)}
    print(json.dumps(result), flush=True)
    return result  # the engine and model die with this frame; main() collects before the next one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="B/16 only, 3 timed steps")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny config, 2 steps (checks the script)")
    p.add_argument("--models", default=None, help="comma list of b32,b16 (default both; --quick: b16)")
    p.add_argument("--encoders", default="vip,meanpool")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10, --quick 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 10)
    models = (args.models or ("b16" if args.quick or args.dry_run else "b32,b16")).split(",")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import deepspeed
    import torch

    from clipvip.distributed import init_distributed_env

    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if not dry:
        torch.cuda.set_device(device)
    info = init_distributed_env("none", "gloo" if dry else "nccl")
    deepspeed.init_distributed(dist_backend=info.backend, verbose=False)

    results = []
    for m in models:
        for e in args.encoders.split(","):
            results.append(measure(m, e, args, device, dry))
            gc.collect()
            if not dry:
                torch.cuda.empty_cache()
    by = {(r["model"], r["encoder"]): r for r in results}
    ratios = {m: round(by[(m, "vip")]["step_s"] / by[(m, "meanpool")]["step_s"], 3)
              for m in models if (m, "vip") in by and (m, "meanpool") in by}
    headline = by.get(("b16", "vip"), {}).get("mfu_pct")
    summary = {"benchmark": "gpu_train_step", "value": headline, "unit": "% MFU (B/16 ViP, bf16)", "target": 40,
               "ok": bool(not dry and headline is not None and headline >= 40
                          and all(r <= 1.10 for r in ratios.values())),
               "vip_over_meanpool": ratios, "ratio_target": 1.10}
    if dry:
        summary["note"] = ("dry run on CPU with a tiny config (fp32, gloo): checks the script end to end; the "
                           "numbers mean nothing")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
