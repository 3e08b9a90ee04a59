"""CLIP's image transform applied to a stack of frames, in torch (no torchvision).

Usage:
    >>> x = video_transform(frames_uint8_THW3, 224)      # -> torch.float32 [T, 3, 224, 224]

Bicubic resize of the short side to ``size`` (antialiased, like PIL / torchvision; skipped when the short
side already equals ``size``, which is the normal case because frame stores hold short-side-resized
frames), centre crop ``size`` x ``size`` (torchvision's rounding), scale to [0, 1], CLIP mean/std.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Fold /255 and the normalisation into one multiply-add: x * scale + shift.
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(1, 3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(1, 3, 1, 1)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Short side -> ``size``, long side scaled and truncated (torchvision ``Resize(int)`` semantics)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size} from a {height}x{width} frame")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))  # torchvision's rounding


def video_transform(frames, size: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (numpy or torch) -> normalised float32 ``[T, 3, size, size]``."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(x.shape)} {x.dtype}")
    height, width = x.shape[1:3]
    if min(height, width) != size:
        x = F.interpolate(
            x.permute(0, 3, 1, 2).float(), size=resized_shape(height, width, size), mode="bicubic",
            antialias=True, align_corners=False,
        ).clamp_(0.0, 255.0)  # bicubic overshoots; PIL clamps to the uint8 range too
        top, left = _crop_box(*x.shape[-2:], size)
        x = x[..., top : top + size, left : left + size].contiguous()
    else:
        # The usual case (stores hold short-side-resized frames): crop and go channels-first while still
        # uint8 -- 4x fewer bytes to move than after the float conversion (measured ~4x faster overall).
        top, left = _crop_box(height, width, size)
        x = x[:, top : top + size, left : left + size, :].permute(0, 3, 1, 2).contiguous().float()
    return x.mul_(_SCALE).add_(_SHIFT)
