"""CLIP's image transform applied to a stack of frames, in torch (no torchvision), split in two halves:
the uint8 geometry (DataLoader workers) and the float normalisation (on the training device).

Usage:
    >>> u8 = crop_uint8(frames_uint8_THW3, 224)           # worker side -> torch.uint8 [T, 3, 224, 224]
    >>> x = normalize_pixels(batch_u8, device)             # main process -> float32 [..., 3, 224, 224] on device
    >>> x = video_transform(frames_uint8_THW3, 224)        # both at once (== normalize_pixels(crop_uint8(...)))
    >>> video_transform(frames_uint8_THW3, 224, normalize=False)   # same as crop_uint8

``crop_uint8``: bicubic resize of the short side to ``size`` (antialiased, like PIL / torchvision, rounded
back to uint8 as PIL does; skipped when the short side already equals ``size``, which is the normal case
because frame stores hold short-side-resized frames), centre crop ``size`` x ``size`` (torchvision's
rounding), channels first. ``normalize_pixels``: scale to [0, 1] and CLIP mean/std, as one multiply-add.

Why the split: dataset items carry uint8 pixels, so a worker hands 4x fewer bytes through shared memory
than float32 (1.8 MB instead of 7.2 MB per 12x224x224 clip) and skips the float pass; the main process
normalises once per batch right where the batch meets the model (``clipvip.data.to_device``, used by the
trainer; ``clipvip.evaluate.encode_videos``). On a GPU that runs after the uint8 copy to the device.
``normalize_pixels`` refuses non-uint8 input, so pixels cannot be normalised twice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Batch keys holding uint8 pixels [..., 3, S, S] that ``to_device`` normalises (V and F of the datasets).
PIXEL_KEYS = ("pixel_values", "frame_pixel_values")

# Fold /255 and the normalisation into one multiply-add: x * scale + shift.
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
_ON_DEVICE: dict = {}  # (device) -> (scale, shift) copies, so a GPU does not re-upload them per batch


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Short side -> ``size``, long side scaled and truncated (torchvision ``Resize(int)`` semantics)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size} from a {height}x{width} frame")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))  # torchvision's rounding


def crop_uint8(frames, size: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (numpy or torch) -> uint8 ``[T, 3, size, size]`` (resized if needed, centre crop).

    Without a resize the result is a (non-contiguous) view of ``frames``; call ``.contiguous()`` to own it.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(x.shape)} {x.dtype}")
    height, width = x.shape[1:3]
    if min(height, width) != size:
        x = F.interpolate(
            x.permute(0, 3, 1, 2).float(), size=resized_shape(height, width, size), mode="bicubic",
            antialias=True, align_corners=False,
        )
        top, left = _crop_box(*x.shape[-2:], size)
        # bicubic overshoots: clamp, and round back to uint8 like PIL does
        return x[..., top : top + size, left : left + size].round_().clamp_(0.0, 255.0).to(torch.uint8).contiguous()
    # The usual case (stores hold short-side-resized frames): a cropped channels-first *view*, no copy. The
    # one copy happens when the collate stacks items (in a worker: straight into shared memory); stacking
    # permuted uint8 views measured ~2.5x cheaper than a .contiguous() per item followed by the stack.
    top, left = _crop_box(height, width, size)
    return x[:, top : top + size, left : left + size, :].permute(0, 3, 1, 2)


def normalize_pixels(pixels: torch.Tensor, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> CLIP-normalised float ``[..., 3, H, W]`` on ``device`` (default: where it is).

    The uint8 tensor is moved first (``non_blocking``: 4x fewer bytes than float32 over PCIe), then converted
    and normalised in float32 there; ``dtype`` (e.g. bf16 for a bf16 model) casts the result afterwards.
    Raises ``TypeError`` on non-uint8 input: already-normalised pixels must not be normalised again.
    """
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8:
        raise TypeError(f"normalize_pixels expects uint8 pixels, got {getattr(pixels, 'dtype', type(pixels))} "
                        "(already normalised? items carry uint8 and are normalised exactly once)")
    if pixels.ndim < 3 or pixels.shape[-3] != 3:
        raise ValueError(f"expected pixels [..., 3, H, W], got {tuple(pixels.shape)}")
    x = pixels if device is None else pixels.to(device, non_blocking=True)
    constants = _ON_DEVICE.get(x.device)
    if constants is None:
        constants = _ON_DEVICE.setdefault(x.device, (_SCALE.to(x.device), _SHIFT.to(x.device)))
    scale, shift = constants
    out = x.to(torch.float32, memory_format=torch.contiguous_format).mul_(scale).add_(shift)
    return out if dtype is None or dtype == torch.float32 else out.to(dtype)


def video_transform(frames, size: int, normalize: bool = True) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> normalised float32 ``[T, 3, size, size]`` (``normalize=False``: uint8)."""
    pixels = crop_uint8(frames, size)
    return normalize_pixels(pixels) if normalize else pixels
