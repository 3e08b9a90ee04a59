"""Per-second video features for VideoCLIP-style models, in the ``FEATURE_EXTRACTORS`` registry.

Usage:
    from clipvip.registry import FEATURE_EXTRACTORS
    ex = FEATURE_EXTRACTORS["clip"](model_dir="results/pretrained/clip", device="cpu")
    feats = ex.extract(frames, timestamps, duration=12.4)   # float16 [seconds, D], rows L2-normalised
    ex = FEATURE_EXTRACTORS["s3d"](weights="s3d_howto100m.pth", device="cuda")
    feats = ex.extract(frames_30fps)                         # float16 [N // 30, 512]
    ex.wants_gpu, ex.dim, ex.fps                             # what a stage needs to schedule and decode

Entries (each a class; ``wants_gpu`` says whether a stage should ask for a GPU):
  * ``clip``: the frozen image tower of a HF CLIP folder (vision model + visual projection) on the middle
    frame of each second: for second s of S = max(1, floor(duration)) the decoded frame whose timestamp is
    nearest to s + 0.5 (``frames`` uint8 [N, H, W, 3] with ``timestamps`` float [N] seconds, e.g. a 2-fps pool);
    frames are resized/centre-cropped to the tower's ``image_size`` and CLIP-normalised
    (``clipvip.data.crop_uint8`` / ``normalize_pixels``). Output: ``get_image_features``, L2-normalised,
    float16 [S, projection_dim].
  * ``s3d``: the MIL-NCE S3D-G network (Miech et al., CVPR 2020; the layer structure and parameter names of
    antoine77340/S3D_HowTo100M ``s3dg.py``, written anew here) on frames decoded at 30 fps: every 30
    consecutive frames give one 512-d ``video_embedding`` (= one feature per second), a trailing partial
    chunk is dropped. Frames are resized (short side) and centre-cropped to ``size`` (224) and scaled to
    [0, 1]. Output L2-normalised float16 [N // 30, 512] (VideoCLIP's stored features). Weights: the official
    ``s3d_howto100m.pth`` from a path the user gives (its ``text_module.*`` entries are ignored; any other
    missing or unexpected key is refused by name); nothing is downloaded. ``weights=None`` keeps a seeded
    random initialisation (tests, shape checks) and says so in ``ex.random_weights``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipvip.registry import FEATURE_EXTRACTORS
from clipvip.stage import UserError


def _seconds(duration: float) -> int:
    return max(1, int(math.floor(float(duration) + 1e-6)))


def _check_frames(frames) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [N, H, W, 3], got {getattr(x, 'shape', None)} "
                         f"{getattr(x, 'dtype', type(x))}")
    if x.shape[0] == 0:
        raise ValueError("no frames")
    return x


def middle_frame_positions(timestamps, duration: float) -> np.ndarray:
    """For each second s, the index of the frame nearest to s + 0.5 (ties: the earlier frame)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError("timestamps must be a non-empty 1-D array")
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    wanted = np.arange(_seconds(duration)) + 0.5
    right = np.clip(np.searchsorted(sorted_ts, wanted), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    take_left = np.abs(wanted - sorted_ts[left]) <= np.abs(sorted_ts[right] - wanted)
    return order[np.where(take_left, left, right)]


@FEATURE_EXTRACTORS.register("clip")
class CLIPFrameFeatures:
    wants_gpu = True
    fps = None  # any frame rate: timestamps select the middle frame of each second

    def __init__(self, model_dir, device: str = "cpu", batch_size: int = 64, dtype: torch.dtype = torch.float32):
        from transformers import CLIPModel

        path = Path(str(model_dir))
        if not path.exists():
            raise UserError(f"CLIP model folder not found: {path}")
        clip = CLIPModel.from_pretrained(str(path))
        self.vision, self.projection = clip.vision_model, clip.visual_projection
        del clip
        self.device, self.batch_size, self.dtype = torch.device(device), int(batch_size), dtype
        for module in (self.vision, self.projection):
            module.to(self.device, dtype).eval().requires_grad_(False)
        self.image_size = int(self.vision.config.image_size)
        self.dim = int(self.projection.out_features)

    @torch.no_grad()
    def extract(self, frames, timestamps, duration: float | None = None) -> np.ndarray:
        from clipvip.data.transforms import crop_uint8, normalize_pixels

        x = _check_frames(frames)
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.shape != (x.shape[0],):
            raise ValueError(f"timestamps {ts.shape} must give one time per frame ({x.shape[0]})")
        if duration is None:
            step = float(np.median(np.diff(np.sort(ts)))) if len(ts) > 1 else 1.0
            duration = float(ts.max()) + step
        picks = middle_frame_positions(ts, duration)
        out = []
        for start in range(0, len(picks), self.batch_size):
            chosen = x[torch.as_tensor(picks[start:start + self.batch_size])]
            pixels = normalize_pixels(crop_uint8(chosen, self.image_size).contiguous(), self.device, self.dtype)
            feats = self.projection(self.vision(pixel_values=pixels).pooler_output)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float16)


# ------------------------------------------------------------------------------------------------ S3D-G
class STConv3D(nn.Module):
    """Conv3d + BN + ReLU; ``separable`` splits a k×k×k kernel into 1×k×k then k×1×1 (each with BN + ReLU)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, separable=False):
        super().__init__()
        self.separable = separable and kernel[0] != 1
        self.relu = nn.ReLU(inplace=True)

        def triple(v):
            return list(v) if isinstance(v, (list, tuple)) else [v, v, v]

        k, s, p = triple(kernel), triple(stride), triple(padding)
        if self.separable:
            self.conv1 = nn.Conv3d(cin, cout, [1, k[1], k[2]], [1, s[1], s[2]], [0, p[1], p[2]], bias=False)
            self.bn1 = nn.BatchNorm3d(cout)
            self.conv2 = nn.Conv3d(cout, cout, [k[0], 1, 1], [s[0], 1, 1], [p[0], 0, 0], bias=False)
            self.bn2 = nn.BatchNorm3d(cout)
        else:
            self.conv1 = nn.Conv3d(cin, cout, k, s, p, bias=False)
            self.bn1 = nn.BatchNorm3d(cout)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = self.relu(self.bn2(self.conv2(x)))
        return x


class SelfGating(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return weights[:, :, None, None, None] * x


class InceptionBlock(nn.Module):
    def __init__(self, cin, b0, b1a, b1b, b2a, b2b, b3b, gating=True):
        super().__init__()
        self.conv_b0 = STConv3D(cin, b0, [1, 1, 1])
        self.conv_b1_a = STConv3D(cin, b1a, [1, 1, 1])
        self.conv_b1_b = STConv3D(b1a, b1b, [3, 3, 3], padding=1, separable=True)
        self.conv_b2_a = STConv3D(cin, b2a, [1, 1, 1])
        self.conv_b2_b = STConv3D(b2a, b2b, [3, 3, 3], padding=1, separable=True)
        self.maxpool_b3 = nn.MaxPool3d(3, stride=1, padding=1)
        self.conv_b3_b = STConv3D(cin, b3b, [1, 1, 1])
        self.use_gating = gating
        self.output_dim = b0 + b1b + b2b + b3b
        if gating:
            self.gating_b0, self.gating_b1 = SelfGating(b0), SelfGating(b1b)
            self.gating_b2, self.gating_b3 = SelfGating(b2b), SelfGating(b3b)

    def forward(self, x):
        b0 = self.conv_b0(x)
        b1 = self.conv_b1_b(self.conv_b1_a(x))
        b2 = self.conv_b2_b(self.conv_b2_a(x))
        b3 = self.conv_b3_b(self.maxpool_b3(x))
        if self.use_gating:
            b0, b1, b2, b3 = self.gating_b0(b0), self.gating_b1(b1), self.gating_b2(b2), self.gating_b3(b3)
        return torch.cat([b0, b1, b2, b3], dim=1)


class MaxPool3dSame(nn.Module):
    """TensorFlow "SAME" max pooling: zero padding (depth padded like the spatial dims), ceil mode."""

    def __init__(self, kernel, stride):
        super().__init__()
        pads = []
        for k, s in zip(kernel, stride):
            total = max(k - s, 0)
            pads.append((total // 2, total - total // 2))
        (dt, db), (ht, hb), (wt, wb) = pads
        self.pad = nn.ConstantPad3d((wt, wb, ht, hb, dt, db), 0.0)
        self.pool = nn.MaxPool3d(kernel, stride, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.pad(x))


class S3DG(nn.Module):
    """The MIL-NCE HowTo100M S3D-G video network (space-to-depth stem); ``forward(x [B,3,T,H,W] in [0,1])``
    -> ``{"video_embedding": [B, 512], "mixed_5c": [B, 1024]}``. Parameter names follow the official
    ``s3dg.py`` so its ``state_dict`` loads as is (minus the text module)."""

    def __init__(self, num_classes: int = 512, gating: bool = True):
        super().__init__()
        self.conv1 = STConv3D(24, 64, [2, 4, 4], stride=1, padding=(1, 2, 2))
        self.conv_2b = STConv3D(64, 64, [1, 1, 1])
        self.conv_2c = STConv3D(64, 192, [3, 3, 3], padding=1, separable=True)
        self.gating = SelfGating(192)
        self.maxpool_2a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.maxpool_3a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.mixed_3b = InceptionBlock(192, 64, 96, 128, 16, 32, 32, gating)
        self.mixed_3c = InceptionBlock(self.mixed_3b.output_dim, 128, 128, 192, 32, 96, 64, gating)
        self.maxpool_4a = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.mixed_4b = InceptionBlock(self.mixed_3c.output_dim, 192, 96, 208, 16, 48, 64, gating)
        self.mixed_4c = InceptionBlock(self.mixed_4b.output_dim, 160, 112, 224, 24, 64, 64, gating)
        self.mixed_4d = InceptionBlock(self.mixed_4c.output_dim, 128, 128, 256, 24, 64, 64, gating)
        self.mixed_4e = InceptionBlock(self.mixed_4d.output_dim, 112, 144, 288, 32, 64, 64, gating)
        self.mixed_4f = InceptionBlock(self.mixed_4e.output_dim, 256, 160, 320, 32, 128, 128, gating)
        self.maxpool_5a = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.mixed_5b = InceptionBlock(self.mixed_4f.output_dim, 256, 160, 320, 32, 128, 128, gating)
        self.mixed_5c = InceptionBlock(self.mixed_5b.output_dim, 384, 192, 384, 48, 128, 128, gating)
        self.fc = nn.Linear(self.mixed_5c.output_dim, num_classes)

    @staticmethod
    def space_to_depth(x):
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
        return x.contiguous().view(b, 8 * c, t // 2, h // 2, w // 2)

    def forward(self, x):
        if x.shape[2] % 2 or x.shape[3] % 2 or x.shape[4] % 2:
            raise ValueError(f"S3D's space-to-depth stem needs even T, H, W; got {tuple(x.shape[2:])}")
        net = self.conv1(self.space_to_depth(x))[:, :, 1:, 1:, 1:]  # replicate TF "SAME" padding
        net = self.maxpool_2a(net)
        net = self.gating(self.conv_2c(self.conv_2b(net)))
        net = self.mixed_3c(self.mixed_3b(self.maxpool_3a(net)))
        net = self.maxpool_4a(net)
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            net = block(net)
        net = self.mixed_5c(self.mixed_5b(self.maxpool_5a(net)))
        pooled = net.mean(dim=(2, 3, 4))
        return {"video_embedding": self.fc(pooled), "mixed_5c": pooled}


def load_s3d_weights(model: S3DG, path) -> None:
    """Load the official ``s3d_howto100m.pth`` (a plain state dict); ``text_module.*`` is ignored."""
    path = Path(str(path))
    if not path.is_file():
        raise UserError(f"S3D weights not found: {path} (the official s3d_howto100m.pth; nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("text_module.")}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{path}: not an S3D-G HowTo100M state dict: missing {missing[:12] or 'none'}"
                        f"{' ...' if len(missing) > 12 else ''}; unexpected {unexpected[:12] or 'none'}"
                        f"{' ...' if len(unexpected) > 12 else ''}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        raise UserError(f"{path}: shape mismatch for {bad[:10]}")
    model.load_state_dict(state)


@FEATURE_EXTRACTORS.register("s3d")
class S3DFeatures:
    wants_gpu = True
    fps = 30.0
    frames_per_feature = 30
    dim = 512

    def __init__(self, weights=None, device: str = "cpu", size: int = 224, batch_size: int = 8, seed: int = 0):
        torch.manual_seed(seed)
        self.model = S3DG(self.dim)
        self.random_weights = weights is None
        if weights is not None:
            load_s3d_weights(self.model, weights)
        self.device, self.size, self.batch_size = torch.device(device), int(size), int(batch_size)
        if self.size % 2:
            raise UserError(f"s3d size must be even (space-to-depth stem), got {size}")
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def extract(self, frames, timestamps=None, duration: float | None = None) -> np.ndarray:
        """uint8 [N, H, W, 3] at 30 fps -> float16 [N // 30, 512] (``timestamps``/``duration`` unused)."""
        from clipvip.data.transforms import crop_uint8

        x = _check_frames(frames)
        chunks = x.shape[0] // self.frames_per_feature
        if chunks == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        x = x[: chunks * self.frames_per_feature]
        out = []
        for start in range(0, chunks, self.batch_size):
            part = x[start * self.frames_per_feature:(start + self.batch_size) * self.frames_per_feature]
            pixels = crop_uint8(part, self.size).contiguous()              # [n*30, 3, S, S] uint8
            clips = pixels.view(-1, self.frames_per_feature, 3, self.size, self.size).permute(0, 2, 1, 3, 4)
            clips = clips.to(self.device).float().div_(255.0)
            out.append(F.normalize(self.model(clips)["video_embedding"].float(), dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float16)
