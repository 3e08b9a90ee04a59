"""Tiny randomly initialised HF ``CLIPModel`` + the real CLIP tokenizer, saved like a hub checkpoint.

(The demo then pre-trains it on still images: ``clipvip.tiny_models.pretrain_tiny_clip``.)

Usage:
    from clipvip.model.tiny import build_tiny_clip
    build_tiny_clip("results/pretrained/clip", image_size=64, patch_size=16, hidden_size=64)
    CLIPViPModel.from_pretrained("results/pretrained/clip")        # as if it were "openai/clip-vit-base-32"
    CLIPTokenizerFast.from_pretrained("results/pretrained/clip")

The folder holds a plain ``model_type="clip"`` config, ``model.safetensors`` and the tokenizer files; the
vocabulary size is the real 49408 so tokenised text indexes it directly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

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


def build_tiny_clip(out_dir, image_size=64, patch_size=16, hidden_size=64, layers=2, heads=2, text_hidden=64,
                    text_layers=2, projection_dim=64, max_position_embeddings=77, seed=0) -> Path:
    """Write a seeded random tiny ``CLIPModel`` and the CLIP tokenizer to ``out_dir``; returns the path."""
    out = Path(out_dir)
    config = tiny_clip_config(image_size, patch_size, hidden_size, layers, heads, text_hidden, text_layers,
                              projection_dim, max_position_embeddings)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(out)
    build_clip_tokenizer(model_max_length=max_position_embeddings).save_pretrained(out)
    return out
