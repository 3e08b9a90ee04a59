"""``clipvip train`` end to end: real DeepSpeed, real ranks (torchrun / submitit over gloo), real frame stores.

Data: the synthetic demo corpus (``clipvip.demo_data``) at 32 px, decoded by the real ``clipvip frames`` into
an HDF5 store + index, and a tiny CLIP (``build_tiny_clip``). Every run is a subprocess ``python -m clipvip
train ...`` exactly as the workflow starts it. The ZeRO-2 fine-tuning run is shared by several tests.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS="1",
           TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                               str(Path(__file__).resolve().parents[1] / ".torch_extensions")))
# A fixed small set that fits one global batch: every step sees the same 8 clips (overfitting is visible).
BASE = {"batch_size": 8, "num_frames": 4, "max_steps": 8, "lr": 2e-3, "warmup_ratio": 0.25, "grad_clip": 1.0,
        "num_workers": 0, "checkpoint_every": 2, "eval_every": 4, "eval_batch_size": 8, "max_text_len": 16,
        "temporal_init_std": 0.02, "nprocs": 2}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from clipvip.cli import main as cli
    from clipvip.demo_data import write_corpus
    from clipvip.model.tiny import build_tiny_clip

    root = tmp_path_factory.mktemp("train-data")
    write_corpus(root / "demo", {"seed": 0, "frame_size": 32, "num_frames": 8, "pretrain_clips": 8,
                                 "msrvtt_clips": {"train": 8, "val": 4, "test": 2},
                                 "didemo_clips": {"train": 2, "val": 2, "test": 2}, "workers": 1})
    ann = root / "demo" / "annotations"
    out = {"root": root, "clip": build_tiny_clip(root / "clip", image_size=32, patch_size=16, hidden_size=32,
                                                 layers=1, heads=2, text_hidden=32, text_layers=1,
                                                 projection_dim=32)}
    for name, files in {"msrvtt": ["demo_msrvtt_train", "demo_msrvtt_val"], "pretrain": ["demo_pretrain_train"]}.items():
        ids = [row["clip_id"] for f in files for row in _lines(ann / f"{f}.jsonl")]
        (root / f"{name}.ids").write_text("\n".join(ids) + "\n")
        shard = root / f"{name}.h5"
        assert cli(["frames", "--video-dir", str(root / "demo" / "videos"), "--ids", str(root / f"{name}.ids"),
                    "--out", str(shard), "--failures", str(root / f"{name}.failures.tsv"),
                    "--options", json.dumps({"short_side": 32, "num_frames": 4, "pool_size": 8})]) == 0
        assert cli(["frames-index", "--shards", str(shard), "--out", str(root / f"{name}_index.json")]) == 0
        out[f"{name}_index"] = root / f"{name}_index.json"
    out["train"], out["val"] = ann / "demo_msrvtt_train.jsonl", ann / "demo_msrvtt_val.jsonl"
    out["pretrain"] = ann / "demo_pretrain_train.jsonl"
    pre = _lines(out["pretrain"])
    out["captions"] = _write_lines(root / "captions.jsonl", [
        {"clip_id": r["clip_id"], "caption": f"a frame of clip {i}", "model": "test"} for i, r in enumerate(pre)])
    return out


def train_cmd(data, run: Path, options: dict, stage="finetune", val=True) -> list[str]:
    cmd = [sys.executable, "-m", "clipvip", "train", "--stage", stage, "--init", str(data["clip"]),
           "--out", str(run / "out"), "--checkpoint-dir", str(run / "ckpt"), "--options", json.dumps(options)]
    if stage == "finetune":
        cmd += ["--frames-index", str(data["msrvtt_index"]), "--annotations", str(data["train"])]
        if val:
            cmd += ["--val-annotations", str(data["val"])]
    else:
        cmd += ["--frames-index", str(data["pretrain_index"]), "--annotations", str(data["pretrain"]),
                "--captions", str(data["captions"])]
    return cmd


def train(data, run: Path, options: dict, expect: int = 0, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(data, run, options, **kw), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, proc.stderr[-5000:]
    return proc


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in _lines(run / "out" / "metrics.jsonl") if "event" not in r]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from clipvip.model import CLIPViPModel

    return CLIPViPModel.from_pretrained(run / "out" / "model").state_dict()


@pytest.fixture(scope="module")
def zero2_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("zero2")
    t0 = time.time()
    train(data, run, dict(BASE, zero_stage=2))
    run.joinpath("seconds").write_text(f"{time.time() - t0:.1f}")
    return run


def test_zero2_two_ranks_overfits_logs_and_exports(data, zero2_run):
    from clipvip.trainer.checkpoints import consolidated_state_dict

    rows = _lines(zero2_run / "out" / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert set(steps[0]) >= {"step", "epoch", "loss", "terms", "lr", "grad_norm", "logit_scale", "clips_per_s",
                             "peak_mem_mb"}
    assert list(steps[0]["terms"]) == ["L(V,S)"]
    loss = [r["loss"] for r in steps]
    assert sum(loss[-3:]) / 3 < 0.8 * loss[0], loss  # overfits the fixed 8 clips
    # Linear warm-up from warmup_min_ratio (step 1 is not a no-op), then cosine down.
    lrs = [r["lr"] for r in steps]
    assert lrs[0] == pytest.approx(BASE["lr"] * 0.01)
    peak = lrs.index(max(lrs))
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(lrs) > 0.8 * BASE["lr"] and lrs[-1] < 0.2 * BASE["lr"]
    assert all(r["grad_norm"] is not None for r in steps)
    # logit_scale (a 0-dim parameter) trains under ZeRO-2.
    assert abs(steps[-1]["logit_scale"] - steps[0]["logit_scale"]) > 1e-4

    val = [r for r in rows if r.get("event") == "val"]
    assert [r["step"] for r in val] == [4, 8] and "t2v" in val[0]["metrics"]
    selection = json.loads((zero2_run / "out" / "selection.json").read_text())
    best = max(val, key=lambda r: r["value"])  # first maximum wins (strict improvement)
    assert selection["step"] == best["step"] and selection["metric"] == "t2v.R1" and selection["split"] == "val"

    config = json.loads((zero2_run / "out" / "config.json").read_text())
    assert config["derived"]["world_size"] == 2 and config["derived"]["micro_batch_per_gpu"] == 4
    ds = config["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["scheduler"]["type"] == "WarmupCosineLR" and "bf16" not in ds and "fp16" not in ds

    # model/ is the selected checkpoint, consolidated to fp32, loadable with the tokenizer.
    weights = final_weights(zero2_run)
    ckpt = consolidated_state_dict(zero2_run / "ckpt", selection["checkpoint"], zero_stage=2)
    assert all(torch.equal(weights[k], v) for k, v in ckpt.items())
    assert (zero2_run / "out" / "model" / "tokenizer.json").exists()
    assert not (zero2_run / "out" / "model.tmp").exists()
    tags = sorted(p.name for p in (zero2_run / "ckpt").iterdir() if p.is_dir() and "step" in p.name)
    assert tags == sorted(["global_step6", "global_step8", selection["checkpoint"]])  # keep_checkpoints=2 + best


def test_zero0_matches_zero2(data, zero2_run, tmp_path):
    # grad_clip 1.0 triggers here (grad norms >> 1), exercising the stage-0 fp32 manual clip as well.
    train(data, tmp_path, dict(BASE, zero_stage=0))
    a, b = losses(zero2_run), losses(tmp_path)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-4, (a, b)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["derived"]["manual_grad_clip"] == 1.0 and config["deepspeed"]["gradient_clipping"] == 0.0


def test_zero3_trains_logit_scale_and_exports(data, zero2_run, tmp_path):
    train(data, tmp_path, dict(BASE, zero_stage=3, max_steps=3, eval_every=3), val=False)
    steps = _lines(tmp_path / "out" / "metrics.jsonl")
    assert abs(steps[-1]["logit_scale"] - steps[0]["logit_scale"]) > 1e-4
    assert max(abs(x - y) for x, y in zip(losses(tmp_path), losses(zero2_run)[:1])) <= 1e-4
    weights = final_weights(tmp_path)
    assert weights["logit_scale"].shape == () and float(weights["logit_scale"]) == pytest.approx(
        steps[-1]["logit_scale"], abs=1e-6)


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_sigkill_a_rank_then_resume_equals_uninterrupted(data, tmp_path):
    opts = dict(BASE, max_steps=10, checkpoint_every=2, eval_every=100)
    full = tmp_path / "full"
    train(data, full, opts, val=False)

    run = tmp_path / "killed"
    kill_after = random.Random().randint(3, 8)
    proc = subprocess.Popen(train_cmd(data, run, opts, val=False), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "ckpt" / "metrics.jsonl"  # the live log; --out gets its copy when the run completes
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(_lines(metrics)) >= kill_after:
            break
        time.sleep(0.02)
    ranks = [p for p in _descendants(proc.pid) if "clipvip" in " ".join(p.cmdline()) and "torch.distributed.run"
             not in " ".join(p.cmdline())]
    assert proc.poll() is None and len(ranks) == 2, "run ended before the kill"
    random.choice(ranks).send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    killed_at = len(_lines(metrics))
    assert killed_at < 10, "killed after the end"

    again = train(data, run, opts, val=False)
    assert "resumed from" in again.stdout + again.stderr
    resumed = [r["step"] for r in _lines(run / "out" / "metrics.jsonl")]
    assert resumed == list(range(1, 11))  # lines after the checkpoint were replaced, none duplicated
    a, b = final_weights(full), final_weights(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert losses(full) == pytest.approx(losses(run), abs=1e-6)


def test_sigterm_checkpoints_and_exits_preempted(data, tmp_path):
    opts = dict(BASE, max_steps=40, checkpoint_every=100, eval_every=100)
    proc = subprocess.Popen(train_cmd(data, tmp_path, opts, val=False), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(_lines(metrics)) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    status = json.loads((tmp_path / "ckpt" / "status.json").read_text())
    assert status["status"] == "preempted" and 2 <= status["step"] < 40
    assert (tmp_path / "ckpt" / "latest").read_text() == f"global_step{status['step']}"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    opts = dict(BASE, max_steps=6, checkpoint_every=2, eval_every=100)
    proc = train(data, tmp_path, dict(opts, debug_nan_at_step=5), val=False, expect=3)
    assert "non-finite loss at step 5" in proc.stderr and "global_step4" in proc.stderr
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step4"
    assert not (tmp_path / "ckpt" / "global_step5").exists() and not (tmp_path / "out" / "model").exists()
    # The checkpoint is usable: a clean rerun resumes from it and finishes.
    again = train(data, tmp_path, opts, val=False)
    assert "resumed from" in again.stdout + again.stderr and "at step 4" in again.stdout + again.stderr
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_submitit_local_executor_two_tasks_matches_torchrun(data, zero2_run, tmp_path):
    train(data, tmp_path, dict(BASE, zero_stage=2, launcher="submitit", submitit_cluster="local"))
    assert losses(tmp_path) == pytest.approx(losses(zero2_run), abs=1e-6)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["derived"]["launcher"] == "submitit" and config["derived"]["world_size"] == 2
    assert (tmp_path / "out" / "model" / "config.json").exists()


def test_pretrain_vsc_fc_uses_video_subtitle_frame_caption(data, tmp_path):
    train(data, tmp_path, {"batch_size": 4, "num_frames": 4, "max_steps": 2, "lr": 1e-4, "num_workers": 0,
                           "max_text_len": 16, "nprocs": 1, "zero_stage": 2}, stage="pretrain")
    steps = _lines(tmp_path / "out" / "metrics.jsonl")
    assert len(steps) == 2 and set(steps[0]["terms"]) == {"L(V,S,C)", "L(F,C)"}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["options"]["loss"] == "vsc_fc" and config["options"]["lr"] == 1e-4
    assert (tmp_path / "out" / "model" / "model.safetensors").exists() and not (tmp_path / "out" / "selection.json").exists()


PLUGIN = '''
"""A user's own video encoder in one file: max-pool over the frames' CLIP image features."""
import torch.nn.functional as F
from torch import nn

from clipvip.model.encoders import frame_features, register_video_encoder


@register_video_encoder("toy", video_tokens=False)
class ToyMaxPool(nn.Module):
    def __init__(self, config):
        super().__init__()

    def forward(self, model, pixel_values):
        frames = F.normalize(frame_features(model, pixel_values), dim=-1)
        return F.normalize(frames.max(dim=1).values, dim=-1)
'''


def test_plugin_video_encoder_trains_through_the_cli(data, tmp_path):
    """CLIPVIP_PLUGINS makes an encoder registered in the user's own module selectable by `clipvip train`."""
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    env = dict(ENV, CLIPVIP_PLUGINS="toy_plugin",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), ENV.get("PYTHONPATH")])))
    opts = dict(BASE, video_encoder="toy", max_steps=2, nprocs=1, eval_every=100, num_workers=None)
    run = tmp_path / "run"
    proc = subprocess.run(train_cmd(data, run, opts, val=False), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    config = json.loads((run / "out" / "config.json").read_text())
    assert config["options"]["video_encoder"] == "toy" and config["derived"]["video_encoder"] == "toy"
    assert isinstance(config["derived"]["num_workers"], int)  # num_workers None -> resolved from the CPUs
    assert [r["step"] for r in _lines(run / "out" / "metrics.jsonl")] == [1, 2]
    exported = json.loads((run / "out" / "model" / "config.json").read_text())
    assert exported.get("video_encoder") == "toy"


def test_bad_input_in_the_ranks_is_one_line_and_exit_2(data, tmp_path):
    """A UserError raised inside torchrun's ranks (a batch the data cannot fill) reaches the parent as exit 2."""
    proc = train(data, tmp_path, dict(BASE, batch_size=64, max_steps=2), val=False, expect=2)
    assert "clipvip train: error:" in proc.stderr and "cannot fill one global batch of 64" in proc.stderr
    assert "Traceback" not in proc.stderr.split("clipvip train: error:")[-1]
    assert json.loads((tmp_path / "ckpt" / "status.json").read_text())["status"] == "error"
