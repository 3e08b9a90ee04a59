"""VideoCLIP's contrastive loss (fairseq MMPT ``MMContraLoss``), registered as ``LOSSES["videoclip"]``.

Usage:
    import clipvip.videoclip_loss                      # registers "videoclip" (clipvip.model.videoclip does too)
    from clipvip.registry import LOSSES
    total, terms = LOSSES["videoclip"]({"V": pooled_video, "S": pooled_text}, None)   # terms: {"L(V,S)": total}

CE(V·Sᵀ, diag) + CE(S·Vᵀ, diag) with tau = 1 on the raw pooled features (no normalisation, no scale):
``logit_scale`` is accepted for the ``LOSSES`` calling convention ``loss(features, logit_scale, groups=None)``
and ignored. ``T`` is accepted for ``S``; ``groups={"S": ids}`` makes equal texts extra positives, as in
``clipvip.losses``. Features are all-gathered with gradients (``clipvip.losses.gather_features``), so the
negatives are the global batch -- the official code uses only each GPU's local batch (512 pairs). With DDP /
DeepSpeed gradient averaging the result equals the single-process full-batch gradient (see clipvip.losses).
This module imports no transformers, so it is cheap to import in every process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipvip.losses import _same, gather_features, pair_loss
from clipvip.registry import LOSSES


class VideoCLIPLoss:
    """``MMContraLoss`` over the global (all-gathered) batch: CE(V·Sᵀ) + CE(S·Vᵀ), tau = 1, raw dot products."""

    name = "videoclip"
    keys = ["S", "V"]

    def __repr__(self):
        return "VideoCLIPLoss('videoclip': CE(V·Sᵀ) + CE(S·Vᵀ), tau=1, unnormalised)"

    def __call__(self, features: dict[str, Tensor], logit_scale: Tensor | None = None,
                 groups: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        text_key = "S" if "S" in features else "T"
        if "V" not in features or text_key not in features:
            raise KeyError(f"loss 'videoclip' needs features ['S', 'V']; got {sorted(features)}")
        groups = groups or {}
        same = groups.get("S", groups.get("T"))
        v, s = gather_features(features["V"]), gather_features(features[text_key])
        same = _same(gather_features(same)) if same is not None else None
        total = pair_loss(v, s, torch.ones((), dtype=v.dtype, device=v.device), same)
        return total, {"L(V,S)": total}


LOSSES.register("videoclip", VideoCLIPLoss())


def contrastive_reference(v: Tensor, t: Tensor) -> Tensor:
    """The official formula on local rows (no gather), for checks."""
    target = torch.arange(v.shape[0], device=v.device)
    return F.cross_entropy(v @ t.T, target) + F.cross_entropy(t @ v.T, target)
