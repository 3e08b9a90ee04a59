"""CLIP vision tower with CLIP-ViP's video tokens: proxy tokens and a temporal embedding.

``CLIPViPVisionEmbeddings`` extends HF's ``CLIPVisionEmbeddings`` (same parameter names, so CLIP weights load
by name) with ``added_cls`` [M-1, D] and ``temporal_embedding`` [1, temporal_size, D];
``CLIPViPVisionModel`` extends ``CLIPVisionModel`` with ``video_forward`` (image forward is unchanged).

Usage:
    vm = CLIPViPVisionModel._from_config(config.vision_config, num_proxies=4, temporal_size=12)
    pooled = vm.video_forward(pixel_values)            # [B, T, 3, H, W] -> [B, D] (post_layernorm'd CLS)
    pooled = vm(pixel_values=images).pooler_output     # plain CLIP image path, [B, 3, H, W]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings, CLIPVisionModel

from .vip import encoder_forward


class InitAsBuiltinMixin:
    """Initialise every submodule like a model inside transformers.

    transformers treats classes outside its package as "custom code" and then skips modules without direct
    parameters (CLIPAttention, CLIPMLP, our encoders), leaving their children at the generic init. Our
    ``_init_weights`` only uses ``transformers.initialization``, which already skips loaded tensors, so opt out.
    """

    def _initialize_weights(self, module, is_custom_code: bool = False):
        super()._initialize_weights(module, is_custom_code=False)


class CLIPViPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP patch/position embeddings + proxies and temporal embedding (when ``video_tokens``)."""

    def __init__(self, config, num_proxies: int = 4, temporal_size: int = 12, temporal_init_std: float = 0.0,
                 video_tokens: bool = True):
        super().__init__(config)
        self.num_proxies = num_proxies
        self.temporal_init_std = temporal_init_std
        self.video_tokens = video_tokens
        if video_tokens:
            # Standard-normal like the official release; the real init happens in _init_weights (see there).
            self.added_cls = nn.Parameter(torch.randn(num_proxies - 1, self.embed_dim))
            self.temporal_embedding = nn.Parameter(torch.zeros(1, temporal_size, self.embed_dim))

    def temporal_for(self, num_frames: int) -> Tensor:
        """Temporal embedding for T frames, [1, T, D]; linearly resized (align_corners=False) when T != rows."""
        temporal = self.temporal_embedding
        if temporal.shape[1] == num_frames:
            return temporal
        return F.interpolate(temporal.transpose(1, 2), size=num_frames, mode="linear").transpose(1, 2)

    def video_embeddings(self, pixel_values: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> tokens [B, M + T·L, D] (before pre_layrnorm)."""
        if not self.video_tokens:
            raise RuntimeError("this vision tower was built without video tokens (video_encoder has none)")
        bsz, num_frames, _, height, width = pixel_values.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(f"frame size {height}x{width} != model image size {self.image_size}")
        patches = self.patch_embedding(pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [B·T, L, D]
        length, dim = patches.shape[1], patches.shape[2]
        pos = self.position_embedding.weight
        # Every patch: its spatial position (1..L) + its frame's temporal row.
        patches = patches.view(bsz, num_frames, length, dim) + pos[1:] + self.temporal_for(num_frames)[:, :, None]
        # Every proxy: CLIP's CLS position (index 0), no temporal embedding.
        proxies = torch.cat([self.class_embedding[None], self.added_cls], dim=0) + pos[0]
        return torch.cat([proxies.expand(bsz, -1, -1), patches.reshape(bsz, num_frames * length, dim)], dim=1)


class CLIPViPVisionModel(InitAsBuiltinMixin, CLIPVisionModel):
    """``CLIPVisionModel`` whose embeddings carry video tokens; adds :meth:`video_forward`."""

    def __init__(self, config, num_proxies: int = 4, temporal_size: int = 12, temporal_init_std: float = 0.0,
                 video_tokens: bool = True):
        super().__init__(config)
        # Replacing the (small) embeddings module keeps every HF name; _init_weights below initialises it.
        self.embeddings = CLIPViPVisionEmbeddings(config, num_proxies, temporal_size, temporal_init_std,
                                                  video_tokens)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # transformers' init functions skip tensors flagged as loaded, so from_pretrained never clobbers
        # checkpoint values; only genuinely missing proxies/temporal rows get the paper's init.
        if isinstance(module, CLIPViPVisionEmbeddings) and module.video_tokens:
            init.normal_(module.added_cls, mean=0.0, std=1.0)
            if module.temporal_init_std > 0:
                init.normal_(module.temporal_embedding, mean=0.0, std=module.temporal_init_std)
            else:
                init.zeros_(module.temporal_embedding)

    def video_forward(self, pixel_values: Tensor, mode: str = "vip") -> Tensor:
        """[B, T, 3, H, W] -> post_layernorm'd hidden state of token 0 (CLIP's CLS), [B, D]."""
        hidden = self.pre_layrnorm(self.embeddings.video_embeddings(pixel_values))
        hidden = encoder_forward(self.encoder, hidden, self.embeddings.num_proxies, pixel_values.shape[1], mode)
        return self.post_layernorm(hidden[:, 0])
