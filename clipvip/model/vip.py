"""Proxy-guided attention (CLIP-ViP) and joint space-time attention over CLIP's own encoder layers.

Token layout of a video sequence (length N = M + T·L):
    [proxy 0 (CLIP's CLS), proxy 1 … proxy M-1, frame-1 patches (L), …, frame-T patches (L)]

Rules (every layer): a proxy query attends to all N keys; a patch query of frame t attends to the M proxies
and the L patches of frame t. Instead of an (N×N) mask we run two structured
``scaled_dot_product_attention`` calls (proxy rows over all keys; patch rows batched per frame over
[proxies ‖ frame]) — the same computation the official code does with two batched matmuls.

Usage:
    from clipvip.model.vip import encoder_forward
    h = encoder_forward(vision_model.encoder, tokens, num_proxies=4, num_frames=T, mode="vip")

The functions take HF ``CLIPEncoderLayer``/``CLIPAttention`` modules and call their sub-modules
(layer_norm1, q/k/v/out_proj, layer_norm2, mlp) so no parameter is duplicated and HF CLIP weights apply as-is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

ATTENTION_MODES = ("vip", "full")


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """[..., S, D] -> [..., h, S, d] (a view; sdpa accepts the strided layout)."""
    *lead, s, dim = x.shape
    return x.view(*lead, s, num_heads, dim // num_heads).transpose(-2, -3)


def _merge(x: Tensor) -> Tensor:
    """[..., h, S, d] -> [..., S, h·d]."""
    *lead, h, s, d = x.shape
    return x.transpose(-2, -3).reshape(*lead, s, h * d)


def proxy_guided_attention(attn, hidden: Tensor, num_proxies: int, num_frames: int) -> Tensor:
    """Self-attention of ``attn`` (a ``CLIPAttention``) on ``hidden`` [B, M+T·L, D] under the ViP rules."""
    bsz, n, dim = hidden.shape
    m, t = num_proxies, num_frames
    length = (n - m) // t
    if m + t * length != n:
        raise ValueError(f"sequence of {n} tokens is not {m} proxies + {t} frames x L patches")
    h = attn.num_heads
    dropout = attn.dropout if attn.training else 0.0
    q, k, v = attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)

    # Proxy rows: M queries over every key.
    out_proxy = F.scaled_dot_product_attention(
        _heads(q[:, :m], h), _heads(k, h), _heads(v, h), dropout_p=dropout, scale=attn.scale
    )

    # Patch rows: one attention problem per (video, frame) with keys [M proxies ‖ L own patches].
    def per_frame_keys(x: Tensor) -> Tensor:
        proxies = x[:, :m].unsqueeze(1).expand(bsz, t, m, dim)
        frames = x[:, m:].view(bsz, t, length, dim)
        return torch.cat([proxies, frames], dim=2).view(bsz * t, m + length, dim)

    out_patch = F.scaled_dot_product_attention(
        _heads(q[:, m:].reshape(bsz * t, length, dim), h),
        _heads(per_frame_keys(k), h),
        _heads(per_frame_keys(v), h),
        dropout_p=dropout,
        scale=attn.scale,
    )
    out = torch.cat([_merge(out_proxy), _merge(out_patch).view(bsz, t * length, dim)], dim=1)
    return attn.out_proj(out)


def full_attention(attn, hidden: Tensor) -> Tensor:
    """Joint space-time attention: every token attends to every token (the ``full_attention`` ablation)."""
    h = attn.num_heads
    dropout = attn.dropout if attn.training else 0.0
    q, k, v = (_heads(proj(hidden), h) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=attn.scale)
    return attn.out_proj(_merge(out))


def layer_forward(layer, hidden: Tensor, num_proxies: int, num_frames: int, mode: str = "vip") -> Tensor:
    """One pre-LN ``CLIPEncoderLayer`` with the attention replaced according to ``mode``."""
    normed = layer.layer_norm1(hidden)
    if mode == "vip":
        attended = proxy_guided_attention(layer.self_attn, normed, num_proxies, num_frames)
    elif mode == "full":
        attended = full_attention(layer.self_attn, normed)
    else:
        raise ValueError(f"attention mode {mode!r}; choose from {ATTENTION_MODES}")
    hidden = hidden + attended
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def encoder_forward(encoder, hidden: Tensor, num_proxies: int, num_frames: int, mode: str = "vip") -> Tensor:
    """Run every layer of a HF ``CLIPEncoder``; honours ``encoder.gradient_checkpointing`` while training."""
    use_ckpt = getattr(encoder, "gradient_checkpointing", False) and torch.is_grad_enabled()
    for layer in encoder.layers:
        if use_ckpt:
            hidden = checkpoint(layer_forward, layer, hidden, num_proxies, num_frames, mode, use_reentrant=False)
        else:
            hidden = layer_forward(layer, hidden, num_proxies, num_frames, mode)
    return hidden


def vip_attention_mask(num_proxies: int, num_frames: int, num_patches: int, device=None) -> Tensor:
    """Dense boolean [N, N] mask (True = may attend) of the ViP rules; for references and benchmarks only."""
    m, t, length = num_proxies, num_frames, num_patches
    frame = torch.cat([torch.full((m,), -1), torch.arange(t).repeat_interleave(length)]).to(device)
    is_proxy = frame < 0
    # proxy rows see everything; patch rows see proxies and their own frame
    return is_proxy[:, None] | is_proxy[None, :] | (frame[:, None] == frame[None, :])
