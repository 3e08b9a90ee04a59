"""Benchmark: proxy-guided attention (ViP) vs dense masked attention vs per-frame MeanPool, fwd+bwd, CPU.

Usage:
    .venv/bin/python benchmarks/attention.py            # B/32 token geometry (T=12, L=49, M=4), width 256, 2 layers
    .venv/bin/python benchmarks/attention.py --quick    # ~1 minute
    .venv/bin/python benchmarks/attention.py --width 768 --layers 12 --threads 2

One CLIPViPModel's vision tower is timed three ways on the same weights: ``encode_video`` with ViP; the same
token sequence through the same layers with a dense (N×N) boolean mask in ``scaled_dot_product_attention``
(asserted equal to ViP); and ``video_encoder="meanpool"`` (each frame through HF's image path). Repetitions are
interleaved; per-round ratios and their medians are reported. The LAST line printed is one JSON object:
    {"benchmark": "vip_attention", "value": <vip/meanpool>, "unit": "x meanpool fwd+bwd time", "target": 1.15,
     "ok": <ratio <= 1.15 and vip faster than dense>}
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from clipvip.model import CLIPViPConfig, CLIPViPModel  # noqa: E402
from clipvip.model.vip import vip_attention_mask  # noqa: E402

TARGET = 1.15


def build(width: int, layers: int) -> CLIPViPModel:
    config = CLIPViPConfig(
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=max(1, width // 64), image_size=224, patch_size=32),
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=1),
        projection_dim=width, temporal_init_std=0.02,
    )
    torch.manual_seed(0)
    return CLIPViPModel(config).train()


def dense_masked_video(model: CLIPViPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The ViP rules as one dense masked attention per layer (the straightforward implementation)."""
    vm = model.vision_model
    hidden = vm.pre_layrnorm(vm.embeddings.video_embeddings(pixel_values))
    m, t = vm.embeddings.num_proxies, pixel_values.shape[1]
    mask = vip_attention_mask(m, t, (hidden.shape[1] - m) // t, hidden.device)
    b, n, d = hidden.shape
    for layer in vm.encoder.layers:
        attn = layer.self_attn
        h = layer.layer_norm1(hidden)
        q, k, v = (p(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(b, n, d))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return F.normalize(model.visual_projection(vm.post_layernorm(hidden[:, 0])), dim=-1)


def fwd_bwd(fn, model, x) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    fn(x).square().sum().backward()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~1 minute)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a busy 2-core machine multi-threaded timings are mostly scheduling noise)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 40, quick 12)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = args.reps or (12 if args.quick else 40)

    vip = build(args.width, args.layers)
    meanpool_sd = {k: v for k, v in vip.state_dict().items() if "added_cls" not in k and "temporal" not in k}
    meanpool = CLIPViPModel(CLIPViPConfig.from_dict({**vip.config.to_dict(), "video_encoder": "meanpool"})).train()
    meanpool.load_state_dict(meanpool_sd)
    x = torch.randn(args.batch, args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    variants = {
        "vip": (vip, vip.encode_video),
        "dense_masked": (vip, lambda px: dense_masked_video(vip, px)),
        "meanpool": (meanpool, meanpool.encode_video),
    }
    with torch.no_grad():
        diff = (vip.encode_video(x) - dense_masked_video(vip, x)).abs().max().item()
    assert diff < 1e-5, f"ViP and dense masked attention disagree: {diff}"
    tokens = vip.config.num_proxies + args.frames * (224 // 32) ** 2
    print(f"geometry: B={args.batch} T={args.frames} L=49 M={vip.config.num_proxies} N={tokens} "
          f"width={args.width} layers={args.layers} threads={torch.get_num_threads()} reps={reps}")
    print(f"max |vip - dense_masked| = {diff:.2e}")

    for name, (model, fn) in variants.items():  # warm-up (allocator, kernels)
        fwd_bwd(fn, model, x)
    times = {name: [] for name in variants}
    for _ in range(reps):  # interleaved so drift affects all variants alike
        for name, (model, fn) in variants.items():
            times[name].append(fwd_bwd(fn, model, x))
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, value in med.items():
        print(f"{name:>13}: median fwd+bwd {value * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f} ms)")
    # Ratios are taken per round (the three variants ran back to back) and then the median: robust to load
    # from other processes on a shared machine, which shifts whole rounds.
    ratio = statistics.median(v / m for v, m in zip(times["vip"], times["meanpool"]))
    dense_ratio = statistics.median(d / v for d, v in zip(times["dense_masked"], times["vip"]))
    print(f"ratio of medians: vip / meanpool = {med['vip'] / med['meanpool']:.3f}, "
          f"dense_masked / vip = {med['dense_masked'] / med['vip']:.2f}")
    print(f"median per-round ratios: vip / meanpool = {ratio:.3f} (target <= {TARGET}); "
          f"dense_masked / vip = {dense_ratio:.2f}x")
    ok = ratio <= TARGET and dense_ratio > 1.0
    print(json.dumps({"benchmark": "vip_attention", "value": round(ratio, 4), "unit": "x meanpool fwd+bwd time",
                      "target": TARGET, "ok": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
