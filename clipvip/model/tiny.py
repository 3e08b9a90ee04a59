"""Tiny randomly initialised HF ``CLIPModel`` + the real CLIP tokenizer, saved like a hub checkpoint.

(The demo then pre-trains it on still images: ``clipvip.tiny_models.pretrain_tiny_clip``.)

Usage:
    from clipvip.model.tiny import build_tiny_clip
    build_tiny_clip("results/pretrained/clip", image_size=64, patch_size=16, hidden_size=64)
    CLIPViPModel.from_pretrained("results/pretrained/clip")        # as if it were "openai/clip-vit-base-32"
    CLIPTokenizerFast.from_pretrained("results/pretrained/clip")

The folder holds a plain ``model_type="clip"`` config, ``model.safetensors`` and the tokenizer files; the
vocabulary size is the real 49408 so tokenised text indexes it directly.

``position_init="sincos"`` starts the vision tower's (still learnt) position embeddings from the fixed 2D
sine-cosine table of MAE / MoCo v3 (half the channels encode the patch column, half its row), scaled to
``position_scale`` per channel, instead of N(0, 0.02): a from-scratch tiny ViT otherwise keeps positions at
norm ~0.4 next to patch tokens of norm ~13 and learns no *where* within the demo's budget (docs/demo.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from clipvip.tiny_models import POSITION_INITS
from clipvip.tokenizer import build_clip_tokenizer

CLIP_VOCAB_SIZE = 49408


def tiny_clip_config(image_size=64, patch_size=16, hidden_size=64, layers=2, heads=2, text_hidden=64,
                     text_layers=2, projection_dim=64, max_position_embeddings=77) -> CLIPConfig:
    """CLIP geometry with every size a parameter; MLPs are 4x wide and text heads follow ``heads``."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=text_hidden, intermediate_size=4 * text_hidden,
            num_hidden_layers=text_layers, num_attention_heads=heads, max_position_embeddings=max_position_embeddings,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )


def sincos_position_table(grid: int, dim: int, scale: float = 1.0, base: float = 100.0) -> torch.Tensor:
    """[grid*grid, dim] 2D sine-cosine position table (MAE's ``get_2d_sincos_pos_embed``, row-major patches):
    the first ``dim/2`` channels encode the column, the rest the row; ``dim`` must be a multiple of 4.
    ``base`` 100, not MAE's 10000 (made for 14x14 grids): on the demo's 4x4 grid most of 10000's frequencies
    would be constant channels."""
    if dim % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(positions):
        angles = positions.flatten()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], 1)

    return (scale * torch.cat([encode(cols), encode(rows)], 1)).float()


def build_tiny_clip(out_dir, image_size=64, patch_size=16, hidden_size=64, layers=2, heads=2, text_hidden=64,
                    text_layers=2, projection_dim=64, max_position_embeddings=77, seed=0,
                    position_init="random", position_scale=2.0) -> Path:
    """Write a seeded random tiny ``CLIPModel`` and the CLIP tokenizer to ``out_dir``; returns the path."""
    if position_init not in POSITION_INITS:
        raise ValueError(f"position_init {position_init!r}; choose from {POSITION_INITS}")
    out = Path(out_dir)
    config = tiny_clip_config(image_size, patch_size, hidden_size, layers, heads, text_hidden, text_layers,
                              projection_dim, max_position_embeddings)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    if position_init == "sincos":
        table = model.vision_model.embeddings.position_embedding.weight
        with torch.no_grad():
            table[0] = 0.0  # the class token has no grid position
            table[1:] = sincos_position_table(image_size // patch_size, hidden_size, position_scale)
    model.save_pretrained(out)
    build_clip_tokenizer(model_max_length=max_position_embeddings).save_pretrained(out)
    return out
