"""The CUDA path (``pytest -m gpu tests/test_gpu.py``; skipped without a GPU): NCCL, bf16, fused attention.

Every other test runs on CPU with gloo and fp32. These run on one GPU (``scripts/gpu_check.sh`` on the GPU
machine):
(a) one-rank NCCL training under ZeRO-2 in bf16 through the real ``clipvip train`` entry: loss finite and
    decreasing, a checkpoint, the divergence stop through the NCCL flag all-reduce, resume;
(b) ViP / full attention on CUDA equal to the dense-mask reference of ``tests/test_model.py`` (fp32 ≤ 1e-5,
    bf16 ≤ 2e-2 of the output scale) with SDPA restricted to the fused kernels (flash / memory-efficient): a
    layout the fused kernels refuse raises instead of silently taking the math path; the same for the
    meanpool / ViP video towers and the text tower against their CPU fp32 outputs;
(c) ``clipvip evaluate`` and ``clipvip captions`` with ``device: cuda``.
Data: tests/test_train.py's ``data`` fixture (imported) and a copy of the evaluate/captions tests' setup
(tiny CLIP, tiny BLIP, the synthetic demo corpus decoded into real frame stores).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")]

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling test modules' fixtures and references

from test_model import M, _dense_layer, _layer_and_input, _rule_mask  # noqa: E402
from test_train import BASE, ENV, _lines, train_cmd  # noqa: E402
from test_train import data  # noqa: E402,F401  (module fixture: demo corpus, tiny CLIP, frame stores)


def fused_only():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


GPU_OPTS = dict(BASE, nprocs=1, precision="bf16", zero_stage=2, dist_backend="nccl", num_workers=2,
                max_steps=8, checkpoint_every=2, eval_every=4, lr=2e-3)


def _train(data, run, options, expect=0, val=True):
    proc = subprocess.run(train_cmd(data, run, options, val=val), env=ENV, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == expect, proc.stderr[-6000:]
    return proc


# ------------------------------------------------------------------------------------------------ (a) training
def test_nccl_zero2_bf16_trains_checkpoints_and_resumes(data, tmp_path):
    run = tmp_path / "run"
    _train(data, run, GPU_OPTS)
    rows = _lines(run / "out" / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    loss = [r["loss"] for r in steps]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(isinstance(x, float) and x == x and abs(x) < 1e4 for x in loss), loss
    assert sum(loss[-3:]) / 3 < 0.9 * loss[0], loss
    assert all(r["peak_mem_mb"] > 0 for r in steps)
    val = [r for r in rows if r.get("event") == "val"]
    assert [r["step"] for r in val] == [4, 8]
    config = json.loads((run / "out" / "config.json").read_text())
    derived, ds = config["derived"], config["deepspeed"]
    assert derived["precision"] == "bf16" and derived["backend"] == "nccl" and derived["device"] == "cuda"
    assert ds["bf16"] == {"enabled": True} and ds["zero_optimization"]["overlap_comm"] is True
    assert (run / "out" / "model" / "model.safetensors").exists()

    # divergence stop through the NCCL flag all-reduce, then resume from the last good checkpoint
    nan_run = tmp_path / "nan"
    opts = dict(GPU_OPTS, max_steps=6, eval_every=100)
    proc = _train(data, nan_run, dict(opts, debug_nan_at_step=5), expect=3, val=False)
    assert "non-finite loss at step 5" in proc.stderr
    assert (nan_run / "ckpt" / "latest").read_text() == "global_step4"
    again = _train(data, nan_run, opts, val=False)
    assert "resumed from" in again.stdout + again.stderr and "at step 4" in again.stdout + again.stderr
    resumed = [r["step"] for r in _lines(nan_run / "out" / "metrics.jsonl")]
    assert resumed == list(range(1, 7))


# ------------------------------------------------------------------------------------------- (b) fused attention
@pytest.mark.parametrize("mode", ["vip", "full"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_structured_attention_on_cuda_fused_kernels_equals_dense_reference(mode, dtype, tol):
    from clipvip.model.vip import layer_forward

    t, length = 4, 6
    layer, x = _layer_and_input(t, length, width=64, heads=4)  # head_dim 16: flash and mem-efficient apply
    layer = layer.float().cuda()
    x = x.detach().float().cuda()
    mask = _rule_mask(M, t, length).cuda() if mode == "vip" else None
    with torch.no_grad():
        ref = _dense_layer(layer, x, mask)  # fp32 matmul reference
        with fused_only():
            ours = layer_forward(layer.to(dtype), x.to(dtype), M, t, mode).float()
    scale = 1.0 if dtype == torch.float32 else float(ref.abs().max())
    assert float((ours - ref).abs().max()) <= tol * scale, float((ours - ref).abs().max())
    # backward through the fused kernels too
    xg = x.to(dtype).requires_grad_(True)
    with fused_only():
        out = layer_forward(layer.to(dtype), xg, M, t, mode)
    (g,) = torch.autograd.grad(out.float().sum(), xg)
    assert torch.isfinite(g).all()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from clipvip.model.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("gpu-clip"), image_size=32, patch_size=16, hidden_size=64,
                           layers=2, heads=4, text_hidden=64, text_layers=2, projection_dim=32, seed=0)


@pytest.mark.parametrize("encoder", ["meanpool", "vip"])
def test_towers_on_cuda_fused_kernels_match_cpu(tiny_clip, encoder):
    from clipvip.model import CLIPViPModel

    torch.manual_seed(0)
    model = CLIPViPModel.from_pretrained(tiny_clip, video_encoder=encoder, temporal_init_std=0.02).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    ids = torch.randint(1, 90, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding: the text tower's SDPA gets a mask (memory-efficient kernel)
    with torch.no_grad():
        cpu_v, cpu_t = model.encode_video(video), model.encode_text(ids, mask)
        gpu = model.cuda()
        with fused_only():
            v, t = gpu.encode_video(video.cuda()), gpu.encode_text(ids.cuda(), mask.cuda())
        assert float((v.cpu() - cpu_v).abs().max()) <= 1e-4 and float((t.cpu() - cpu_t).abs().max()) <= 1e-4
        with fused_only(), torch.autocast("cuda", dtype=torch.bfloat16):
            vb, tb = gpu.encode_video(video.cuda()), gpu.encode_text(ids.cuda(), mask.cuda())
        assert float((vb.float().cpu() - cpu_v).abs().max()) <= 5e-2
        assert float((tb.float().cpu() - cpu_t).abs().max()) <= 5e-2


# --------------------------------------------------------------------------------- (c) evaluate, captions
NUM_FRAMES = 4
CLIPS = [f"msr_{i:05d}" for i in range(6)]


@pytest.fixture(scope="module")
def stage_setup(tmp_path_factory):
    """What tests/test_evaluate.py and tests/test_captions.py build: 6 demo clips in one shard, tiny models."""
    from clipvip.demo_data import write_corpus
    from clipvip.frames import build_index, extract_shard
    from clipvip.model.tiny import build_tiny_clip
    from clipvip.tiny_models import build_tiny_captioner

    root = tmp_path_factory.mktemp("gpu-stages")
    write_corpus(root / "demo", {"frame_size": 32, "num_frames": 8, "pretrain_clips": 2,
                                 "msrvtt_clips": {"test": 6}, "didemo_clips": {"test": 2}, "workers": 1})
    extract_shard(root / "demo" / "videos", CLIPS, root / "frames" / "00000.h5",
                  {"num_frames": NUM_FRAMES, "pool_size": 8, "short_side": 32}, progress=False)
    build_index([root / "frames" / "00000.h5"], root / "frames" / "index.json")
    build_tiny_clip(root / "clip", image_size=32, patch_size=16, hidden_size=32, text_hidden=32, projection_dim=32)
    build_tiny_captioner(root / "blip", kind="blip")
    return root


def test_evaluate_stage_on_cuda_matches_cpu(stage_setup, tmp_path):
    from clipvip.evaluate import main as evaluate_main

    rows = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        code = evaluate_main([
            "--model", str(stage_setup / "clip"), "--frames-index", str(stage_setup / "frames" / "index.json"),
            "--annotations", str(stage_setup / "demo" / "annotations" / "demo_msrvtt_test.jsonl"), "--out", str(out),
            "--options", json.dumps({"num_frames": NUM_FRAMES, "max_text_len": 16, "video_encoder": "meanpool",
                                     "device": device})])
        assert code == 0
        rows[device] = json.loads(out.read_text())
    assert rows["cuda"]["num_videos"] == 6 and rows["cuda"]["t2v"]["R1"] == rows["cpu"]["t2v"]["R1"]


def test_captions_stage_on_cuda(stage_setup, tmp_path):
    from clipvip.captions import caption_shard

    out = tmp_path / "00000.jsonl"
    stats = caption_shard(stage_setup / "frames" / "00000.h5", out,
                          {"model": str(stage_setup / "blip"), "batch_size": 2, "num_beams": 2,
                           "max_new_tokens": 6, "device": "cuda"})
    assert stats["captioned"] == 6
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["caption"].strip() for line in lines)
