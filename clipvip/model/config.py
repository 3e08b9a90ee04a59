"""``CLIPViPConfig``: a ``CLIPConfig`` plus the few fields CLIP-ViP adds.

Usage:
    from clipvip.model import CLIPViPConfig
    cfg = CLIPViPConfig.from_clip_config(CLIPConfig.from_pretrained(d), video_encoder="meanpool")
    cfg = CLIPViPConfig(vision_config={...}, text_config={...}, temporal_init_std=0.02)

A plain CLIP checkpoint's config (``model_type == "clip"``) is converted with :meth:`from_clip_config`; our own
folders store ``model_type == "clipvip"`` and round-trip through ``save_pretrained`` / ``from_pretrained``.
"""
from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

# Fields CLIP-ViP adds to CLIPConfig; ``CLIPViPModel.from_pretrained`` routes these keywords to the config.
VIDEO_FIELDS = (
    "video_encoder",
    "num_proxies",
    "temporal_size",
    "temporal_init_std",
    "seq_transformer_layers",
    "logit_scale_init",
)


@strict
class CLIPViPConfig(CLIPConfig):
    """CLIPConfig + video fields.

    - ``video_encoder``: a name registered in ``clipvip.registry.VIDEO_ENCODERS``.
    - ``num_proxies``: M video proxy tokens = CLIP's CLS + (M-1) learned ``added_cls`` vectors.
    - ``temporal_size``: rows of the learned temporal embedding (12 in the paper; resized for other T).
    - ``temporal_init_std``: 0.0 = the paper's zero init (preserves CLIP at step 0); a from-scratch demo
      needs e.g. 0.02 or the model stays order-blind (REFERENCE C, "Learnability").
    - ``seq_transformer_layers``: depth of CLIP4Clip's seqTransf head (``video_encoder="seqtransformer"``).
    - ``logit_scale_init``: ln 100, the paper's start value; applied on fresh init and when converting a plain
      CLIP checkpoint (HF's default init is ln(1/0.07) = 2.6592). A CLIP-ViP folder keeps its stored value.
    """

    model_type = "clipvip"

    video_encoder: str = "vip"
    num_proxies: int = 4
    temporal_size: int = 12
    temporal_init_std: float = 0.0
    seq_transformer_layers: int = 4
    logit_scale_init: float = math.log(100.0)

    def validate_video_fields(self):
        """Part of ``@strict`` validation (every ``validate_*`` method runs after ``__init__``)."""
        from clipvip.registry import VIDEO_ENCODERS

        if self.video_encoder not in VIDEO_ENCODERS:
            raise ValueError(f"video_encoder={self.video_encoder!r}; choose from {VIDEO_ENCODERS.names()}")
        if self.num_proxies < 1:
            raise ValueError(f"num_proxies must be >= 1 (CLIP's CLS is proxy 0), got {self.num_proxies}")
        if self.temporal_size < 1:
            raise ValueError(f"temporal_size must be >= 1, got {self.temporal_size}")

    @classmethod
    def from_clip_config(cls, clip_config: CLIPConfig | dict, **overrides) -> "CLIPViPConfig":
        """Convert a plain ``CLIPConfig`` (or its dict) to a ``CLIPViPConfig``; ``overrides`` set video fields."""
        data = clip_config.to_dict() if isinstance(clip_config, CLIPConfig) else dict(clip_config)
        # The dict's own model_type ("clip") would otherwise win over the class attribute.
        for key in ("model_type", "architectures", "transformers_version"):
            data.pop(key, None)
        data.update(overrides)
        return cls(**data)
