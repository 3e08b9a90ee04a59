"""Video encoder registry: CLIP-ViP and its ablations, selected by ``CLIPViPConfig.video_encoder``.

Each encoder is an ``nn.Module`` built from the config and called as ``encoder(model, pixel_values)`` with
the owning ``CLIPViPModel`` (for its ``vision_model`` and ``visual_projection``) and pixel values
[B, T, 3, H, W]; it returns L2-normalised video features [B, P]. Only ``seqtransformer`` owns parameters
(stored under ``video_encoder.*`` in the model's state dict).

- ``vip``: proxy tokens + temporal embedding + proxy-guided attention (the paper).
- ``full_attention``: the same token layout, every token attends to every token (joint space-time).
- ``meanpool``: CLIP4Clip meanP — each frame through the plain CLIP image path, normalise, average, normalise.
- ``seqtransformer``: CLIP4Clip seqTransf — frame features + frame position embeddings → small transformer →
  residual add to the frame features → normalise → mean → normalise.

Usage (names live in ``clipvip.registry.VIDEO_ENCODERS``, the single source the config schema, the trainer
and evaluation read):
    from clipvip.model.encoders import register_video_encoder
    @register_video_encoder("mine", video_tokens=False)
    class Mine(nn.Module): ...
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextConfig
from transformers.models.clip.modeling_clip import CLIPEncoder

from clipvip.registry import VIDEO_ENCODERS


def register_video_encoder(name: str, video_tokens: bool):
    """Class decorator; ``video_tokens`` says whether the vision tower needs proxies + temporal embedding."""

    def wrap(cls):
        cls.video_tokens = video_tokens
        return VIDEO_ENCODERS.register(name, cls)

    return wrap


def build_video_encoder(config) -> nn.Module:
    return VIDEO_ENCODERS.get(config.video_encoder)(config)


def frame_features(model, pixel_values: Tensor) -> Tensor:
    """Per-frame CLIP image features through the unchanged HF image path: [B, T, 3, H, W] -> [B, T, P]."""
    bsz, num_frames = pixel_values.shape[:2]
    pooled = model.vision_model(pixel_values=pixel_values.flatten(0, 1)).pooler_output
    return model.visual_projection(pooled).view(bsz, num_frames, -1)


@register_video_encoder("vip", video_tokens=True)
class ViPEncoder(nn.Module):
    mode = "vip"

    def __init__(self, config):
        super().__init__()

    def forward(self, model, pixel_values: Tensor) -> Tensor:
        pooled = model.vision_model.video_forward(pixel_values, mode=self.mode)
        return F.normalize(model.visual_projection(pooled), dim=-1)


@register_video_encoder("full_attention", video_tokens=True)
class FullAttentionEncoder(ViPEncoder):
    mode = "full"


@register_video_encoder("meanpool", video_tokens=False)
class MeanPoolEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()

    def forward(self, model, pixel_values: Tensor) -> Tensor:
        frames = F.normalize(frame_features(model, pixel_values), dim=-1)
        return F.normalize(frames.mean(dim=1), dim=-1)


def seq_transformer_config(config) -> CLIPTextConfig:
    """Config of the seqTransf transformer: CLIP-text-style layers of width = projection_dim.

    CLIP4Clip builds it with the text tower's width and heads (width/64) so it can start from the text
    transformer's first layers; we mirror that when the text width equals the projection width.
    """
    text = config.text_config
    width = config.projection_dim
    heads = text.num_attention_heads if text.hidden_size == width else max(1, width // 64)
    seq = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=config.seq_transformer_layers,
        num_attention_heads=heads,
        max_position_embeddings=text.max_position_embeddings,
        hidden_act=text.hidden_act,
        layer_norm_eps=text.layer_norm_eps,
        initializer_factor=text.initializer_factor,
    )
    seq._attn_implementation = "sdpa"
    return seq


@register_video_encoder("seqtransformer", video_tokens=False)
class SeqTransformerEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.seq_config = seq_transformer_config(config)
        self.frame_position_embeddings = nn.Embedding(self.seq_config.max_position_embeddings, config.projection_dim)
        self.transformer = CLIPEncoder(self.seq_config)

    def forward(self, model, pixel_values: Tensor) -> Tensor:
        frames = frame_features(model, pixel_values)  # [B, T, P], unnormalised like CLIP4Clip's visual_output
        num_frames = frames.shape[1]
        if num_frames > self.frame_position_embeddings.num_embeddings:
            raise ValueError(f"{num_frames} frames > {self.frame_position_embeddings.num_embeddings} positions")
        positions = torch.arange(num_frames, device=frames.device)
        hidden = self.transformer(frames + self.frame_position_embeddings(positions)).last_hidden_state
        hidden = F.normalize(hidden + frames, dim=-1)  # residual to the original frame features
        return F.normalize(hidden.mean(dim=1), dim=-1)

    @torch.no_grad()
    def init_from_text_tower(self, text_model) -> bool:
        """CLIP4Clip init: copy the text tower's first layers ("cut from the beginning") and its position
        embeddings when widths match; layers beyond the text tower's depth keep their random init."""
        text = text_model.config
        if text.hidden_size != self.seq_config.hidden_size or text.intermediate_size != self.seq_config.intermediate_size:
            return False
        for mine, theirs in zip(self.transformer.layers, text_model.encoder.layers):
            mine.load_state_dict(theirs.state_dict())
        self.frame_position_embeddings.weight.copy_(text_model.embeddings.position_embedding.weight)
        return True


# Vita-CLIP (prompts around a frozen CLIP) registers itself as ``vita``; imported last (it uses the above).
from . import vita  # noqa: E402,F401
