"""Shared pytest fixtures: small real videos (H.264 MP4 and other containers) written with PyAV.

Usage in a test:
    def test_something(make_video):
        path = make_video(num_frames=40, width=96, height=64, fps=8)        # cached per session
        path = make_video(num_frames=30, width=64, height=128, fps=25, ext="mkv", name="tall")

    def test_other(sample_videos):
        sample_videos["wide_8fps"]  # a few standard clips, see the fixture

Frame content (``synthetic_frames``) is smooth (gradients + a moving block + a frame-number bar code) so
JPEG round trips stay high-PSNR, and every frame differs from every other one.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from clipvip.video_io import write_video

# Workflow rules and relaunched ranks call the `clipvip` console script and `torchrun`: the interpreter's
# bin folder (the venv) comes first on PATH however pytest was started. DeepSpeed's JIT-built CPU op is
# cached in the repo so only the first run on a machine pays for the build.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [N,H,W,3]: a drifting colour gradient, a moving block and an 8-bit frame-number bar code."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    block = max(4, min(height, width) // 6)
    for t in range(num_frames):
        image = np.empty((height, width, 3), np.float32)
        image[..., 0] = base[0] + 40 * np.sin((xs + 2 * t) / width * np.pi)
        image[..., 1] = base[1] + 40 * np.cos((ys - t) / height * np.pi)
        image[..., 2] = base[2] + 30 * np.sin((xs + ys + 3 * t) / (width + height) * 2 * np.pi)
        x0 = int((t * 3) % max(1, width - block))
        y0 = int((t * 2) % max(1, height - block))
        image[y0:y0 + block, x0:x0 + block] = (250, 250, 60)
        bar = max(2, width // 16)
        for bit in range(8):  # frame number as black/white bars along the bottom edge
            image[-4:, bit * bar:(bit + 1) * bar] = 255 if (t >> bit) & 1 else 0
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="session")
def make_video(tmp_path_factory):
    """Factory writing (and caching) a real video: make_video(num_frames, width, height, fps, ext, name)."""
    folder = tmp_path_factory.mktemp("videos")
    cache: dict[tuple, Path] = {}

    def make(num_frames: int = 24, width: int = 96, height: int = 64, fps: int = 8, ext: str = "mp4",
             name: str | None = None, seed: int = 0, gop: int | None = None) -> Path:
        key = (num_frames, width, height, fps, ext, name, seed, gop)
        if key not in cache:
            stem = name or f"v{num_frames}_{width}x{height}_{fps}fps_s{seed}_g{gop}"
            path = folder / f"{stem}.{ext}"
            write_video(path, synthetic_frames(num_frames, height, width, seed), fps, gop=gop)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def sample_videos(make_video) -> dict[str, Path]:
    """A few standard clips of different sizes and frame rates."""
    return {
        "wide_8fps": make_video(num_frames=40, width=96, height=64, fps=8),
        "tall_25fps": make_video(num_frames=30, width=64, height=128, fps=25),
        "short_8fps": make_video(num_frames=9, width=64, height=64, fps=8),
    }
