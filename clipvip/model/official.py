"""Load the released CLIP-ViP weights (``pretrain_clipvip_base_32.pt`` / ``_16.pt``) into ``CLIPViPModel``.

The release is a flat state dict: ``clipmodel.`` + HF ``CLIPModel`` names, plus
``clipmodel.vision_model.embeddings.added_cls`` [3, D] and ``…temporal_embedding`` [1, 12, D]; tensors may be
fp16 and old persistent ``position_ids`` buffers may be present (dropped here).

Usage:
    from clipvip.model import load_official_checkpoint
    model = load_official_checkpoint("pretrain_clipvip_base_32.pt")                   # infer from shapes
    model = load_official_checkpoint(path, base="openai/clip-vit-base-patch32")     # config from a folder/name
    model = load_official_checkpoint(path, video_encoder="vip", temporal_init_std=0.0)  # config overrides
    model.save_pretrained("results/pretrained/clipvip_b32")
"""
from __future__ import annotations

import re

import torch
from transformers import PretrainedConfig

from clipvip.stage import UserError, stage_main

from .config import CLIPViPConfig
from .modeling import CLIPViPModel

PREFIX = "clipmodel."
HEAD_DIM = 64  # CLIP convention: num_heads = width / 64
# Parameters a CLIP-ViP release cannot contain: the seqTransf ablation head keeps its own init.
MAY_BE_MISSING = ("video_encoder.",)


def _unwrap(obj) -> dict:
    """Accept a flat state dict or one nested under a common wrapper key."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError("expected a flat {name: tensor} state dict (the official release format)")
    return obj


def normalise_official_keys(state_dict: dict) -> dict:
    """Strip ``clipmodel.``, drop ``position_ids`` buffers, cast floating tensors to fp32."""
    out = {}
    for key, value in state_dict.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name.endswith("position_ids"):
            continue
        out[name] = value.float() if value.is_floating_point() else value
    return out


def _num_layers(state_dict: dict, tower: str) -> int:
    pattern = re.compile(rf"^{tower}\.encoder\.layers\.(\d+)\.")
    found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if not found:
        raise ValueError(f"no {tower}.encoder.layers.* keys in the checkpoint")
    return max(found) + 1


def infer_config_from_state_dict(state_dict: dict, **overrides) -> CLIPViPConfig:
    """Architecture from tensor shapes of a (normalised) HF-named CLIP / CLIP-ViP state dict."""
    sd = state_dict
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]  # [D, C, p, p]
        vpos = sd["vision_model.embeddings.position_embedding.weight"]  # [L+1, D]
        tok = sd["text_model.embeddings.token_embedding.weight"]  # [V, Dt]
        tpos = sd["text_model.embeddings.position_embedding.weight"]  # [77, Dt]
        proj = sd["visual_projection.weight"]  # [P, D]
        v_fc1 = sd["vision_model.encoder.layers.0.mlp.fc1.weight"]
        t_fc1 = sd["text_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise ValueError(f"cannot infer the architecture: checkpoint lacks {exc.args[0]!r}") from None
    width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = round((vpos.shape[0] - 1) ** 0.5)
    if grid * grid != vpos.shape[0] - 1:
        raise ValueError(f"vision position embedding has {vpos.shape[0]} rows, not 1 + a square number")
    text_width = tok.shape[1]
    vision = dict(
        hidden_size=width, intermediate_size=v_fc1.shape[0], num_hidden_layers=_num_layers(sd, "vision_model"),
        num_attention_heads=max(1, width // HEAD_DIM), num_channels=channels, image_size=grid * patch_size,
        patch_size=patch_size,
    )
    text = dict(
        vocab_size=tok.shape[0], hidden_size=text_width, intermediate_size=t_fc1.shape[0],
        num_hidden_layers=_num_layers(sd, "text_model"), num_attention_heads=max(1, text_width // HEAD_DIM),
        max_position_embeddings=tpos.shape[0],
    )
    fields = dict(text_config=text, vision_config=vision, projection_dim=proj.shape[0])
    fields.update(_video_fields_from_shapes(sd))
    fields.update(overrides)
    return CLIPViPConfig(**fields)


def _video_fields_from_shapes(sd: dict) -> dict:
    fields = {}
    if "vision_model.embeddings.added_cls" in sd:
        fields["num_proxies"] = sd["vision_model.embeddings.added_cls"].shape[0] + 1
    if "vision_model.embeddings.temporal_embedding" in sd:
        fields["temporal_size"] = sd["vision_model.embeddings.temporal_embedding"].shape[1]
    return fields


def _config_from_base(base, sd: dict, overrides: dict) -> CLIPViPConfig:
    if base is None:
        return infer_config_from_state_dict(sd, **overrides)
    if isinstance(base, CLIPViPConfig):
        config = CLIPViPConfig.from_dict(base.to_dict())  # a copy: never mutate the caller's config
    else:
        raw, _ = PretrainedConfig.get_config_dict(str(base))
        config = CLIPViPConfig.from_clip_config(raw)
    for key, value in {**_video_fields_from_shapes(sd), **overrides}.items():
        setattr(config, key, value)
    return config


class CheckpointError(UserError, ValueError):
    """A file that is not a (matching) CLIP-ViP checkpoint: one line naming the file and the reason."""


def _load_state(path):
    """``torch.load`` of a released checkpoint; anything unreadable is a ``CheckpointError`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, not a .pt file (a model folder is used as "
                              "base_model directly, no conversion needed)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises IndexError/KeyError/UnpicklingError/RuntimeError
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load: {type(exc).__name__}: "
                              f"{first}); expected the released pretrain_clipvip_base_*.pt") from None


def load_official_checkpoint(path, base=None, **overrides) -> CLIPViPModel:
    """Build a ``CLIPViPModel`` and load a released CLIP-ViP ``.pt`` into it (fp32, strict key check).

    ``base``: None (infer the architecture from shapes), an HF name/folder (its config), or a
    ``CLIPViPConfig``. ``overrides``: config fields, e.g. ``video_encoder``. Raises ``ValueError`` listing
    missing / unexpected / mis-shaped keys.
    """
    sd = normalise_official_keys(_unwrap(_load_state(path)))
    config = _config_from_base(base, sd, overrides)
    model = CLIPViPModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in sd and not k.startswith(MAY_BE_MISSING))
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sd
        if k in expected and sd[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"{path}: checkpoint does not match CLIPViPModel(video_encoder={config.video_encoder!r})"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))
    model.load_state_dict(sd, strict=False)
    if hasattr(model.video_encoder, "init_from_text_tower"):
        model.video_encoder.init_from_text_tower(model.text_model)
    return model


@stage_main("convert-official")
def main(argv: list[str] | None = None) -> int:
    """``clipvip convert-official --checkpoint pretrain_clipvip_base_32.pt --tokenizer-from openai/clip-vit-base-patch32
    --out DIR``: a released checkpoint as a model folder (config + safetensors + tokenizer) that
    ``base_model`` and ``from_pretrained`` take, so fine-tuning can start from the official post-pretraining."""
    import argparse

    from transformers import CLIPTokenizerFast

    parser = argparse.ArgumentParser(prog="clipvip convert-official", description=main.__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="released .pt (flat state dict, 'clipmodel.' keys)")
    parser.add_argument("--base", default=None, help="HF CLIP name/folder for the config (default: infer from shapes)")
    parser.add_argument("--tokenizer-from", default=None,
                        help="HF CLIP name/folder whose tokenizer to save (default: the real CLIP BPE, built locally)")
    parser.add_argument("--out", required=True, help="model folder to write")
    args = parser.parse_args(argv)
    try:
        model = load_official_checkpoint(args.checkpoint, base=args.base)
    except ValueError as exc:  # not a flat state dict, keys or shapes do not match: one line
        if isinstance(exc, UserError):
            raise
        text = " ".join(str(exc).split())
        raise CheckpointError(text if text.startswith(str(args.checkpoint)) else f"{args.checkpoint}: {text}") from None
    if args.tokenizer_from:
        tokenizer = CLIPTokenizerFast.from_pretrained(args.tokenizer_from)
    else:
        from clipvip.tokenizer import build_clip_tokenizer

        tokenizer = build_clip_tokenizer()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0
