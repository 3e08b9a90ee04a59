"""Convert the released Vita-CLIP checkpoint (github TalalWasim/Vita-CLIP, ``Vita-CLIP-B``) into our layout.

The release is ``torch.save({"model": DDP(VitaCLIP).state_dict(), ...})`` (keys prefixed ``module.``; a bare
state dict, with or without the prefix, is accepted too). Official names -> ours:

  vision (EVL-style ViT, separate q/k/v):
    visual.patch_embed.proj.weight / .bias    -> vision_model.embeddings.patch_embedding.weight; the conv *bias*
                                                 (HF CLIP has none) is folded into position rows 1..L (exact:
                                                 every patch token gets bias + its position embedding)
    visual.cls_token [D]                      -> vision_model.embeddings.class_embedding
    visual.pos_embed [1+L, D]                 -> vision_model.embeddings.position_embedding.weight
    visual.ln_pre / ln_post                   -> vision_model.pre_layrnorm / post_layernorm
    visual.proj [D, E]                        -> visual_projection.weight (transposed)
    visual.blocks.i.attn.{q,k,v,out}_proj     -> vision_model.encoder.layers.i.self_attn.{q,k,v,out}_proj
    visual.blocks.i.norm1 / norm2             -> ….layer_norm1 / layer_norm2
    visual.blocks.i.mlp.fc1 / fc2             -> ….mlp.fc1 / fc2
  Vita's own:
    visual.time_embed [T, D]                  -> video_encoder.temporal_embedding
    visual.global_prompts [layers, G, D]      -> video_encoder.global_prompts
    visual.blocks.i.local_prompts [1, T, D]   -> video_encoder.layers.i.local_prompts [T, D]
    visual.blocks.i.cls_proj                  -> video_encoder.layers.i.cls_proj
    visual.blocks.i.summary_ln                -> video_encoder.layers.i.summary_ln
    visual.blocks.i.summary_attn_layer.{q,k,v,out}_proj -> video_encoder.layers.i.summary_attn.{…}
    prompt_learner.ctx [n_cls, n_ctx, W] (CSC) or [n_ctx, W] -> video_encoder.text.ctx
    prompt_learner.token_prefix / token_suffix (buffers: token embeddings of the prompts) -> dropped (rebuilt
                                                 from the class names and the frozen token embedding)
    logit_scale                               -> logit_scale
  text (OpenAI CLIP layout, fused q/k/v):
    textual.token_embedding.weight / positional_embedding -> text_model.embeddings.{token,position}_embedding
    textual.transformer.resblocks.i.attn.in_proj_weight/bias [3W, …] -> ….self_attn.{q,k,v}_proj (split in 3)
    textual.transformer.resblocks.i.attn.out_proj -> ….self_attn.out_proj
    textual.transformer.resblocks.i.ln_1 / ln_2 / mlp.c_fc / mlp.c_proj -> layer_norm1 / layer_norm2 / mlp.fc1 / fc2
    textual.ln_final                          -> text_model.final_layer_norm
    textual.text_projection [W, E]            -> text_projection.weight (transposed)

The architecture is read from the shapes (heads default to width / 64, CLIP's convention). The class names
(rows of a CSC context) are not in the checkpoint: pass the class list the model was trained with (K400:
the release's ``classes/k400_classes.txt``). ``train_cls_proj`` defaults to False here: the release's
``cls_proj`` was never trained (frozen at its random init). A checkpoint with missing, unexpected or
mis-shaped keys is refused with ``UserError`` listing them.

Usage:
    from clipvip.model.vita_official import load_vita_official_checkpoint
    model = load_vita_official_checkpoint("vita_clip_b16.pth", class_names=read_class_list("k400_classes.txt"))
    model.save_pretrained(out); tokenizer.save_pretrained(out)
"""
from __future__ import annotations

import re

import torch

from clipvip.stage import UserError, stage_main

from .config import CLIPViPConfig
from .vita import CONFIG_KEY, VitaConfig, freeze_for_vita

HEAD_DIM = 64
_DROPPED = ("prompt_learner.token_prefix", "prompt_learner.token_suffix")

_VISION_LAYER = {
    "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
    "attn.out_proj": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_VITA_LAYER = {
    "cls_proj": "cls_proj", "summary_ln": "summary_ln", "summary_attn_layer.q_proj": "summary_attn.q_proj",
    "summary_attn_layer.k_proj": "summary_attn.k_proj", "summary_attn_layer.v_proj": "summary_attn.v_proj",
    "summary_attn_layer.out_proj": "summary_attn.out_proj",
}
_TEXT_LAYER = {
    "attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_SIMPLE = {
    "visual.cls_token": "vision_model.embeddings.class_embedding",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.time_embed": "video_encoder.temporal_embedding",
    "visual.global_prompts": "video_encoder.global_prompts",
    "visual.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "textual.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "textual.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "textual.ln_final.weight": "text_model.final_layer_norm.weight",
    "textual.ln_final.bias": "text_model.final_layer_norm.bias",
    "prompt_learner.ctx": "video_encoder.text.ctx",
    "logit_scale": "logit_scale",
}


def unwrap_official(obj) -> dict:
    """The flat state dict of a release file: ``{"model": …}`` / ``{"state_dict": …}``, ``module.`` stripped."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError("expected a Vita-CLIP checkpoint: a {name: tensor} state dict, optionally under 'model'")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def _count(sd: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _need(sd: dict, key: str):
    if key not in sd:
        raise UserError(f"not a Vita-CLIP checkpoint: missing {key!r}")
    return sd[key]


def infer_vita_config(sd: dict, class_names=None, vision_heads: int | None = None, text_heads: int | None = None,
                      **vita_overrides) -> CLIPViPConfig:
    """``CLIPViPConfig`` (``video_encoder="vita"``, ``config.vita``) from an official (unwrapped) state dict."""
    pos = _need(sd, "visual.pos_embed")
    patch = _need(sd, "visual.patch_embed.proj.weight")
    width, grid2 = pos.shape[1], pos.shape[0] - 1
    grid = round(grid2 ** 0.5)
    if grid * grid != grid2:
        raise UserError(f"visual.pos_embed has {pos.shape[0]} rows, not 1 + a square number")
    layers = _count(sd, "visual.blocks.")
    text_layers = _count(sd, "textual.transformer.resblocks.")
    tok = _need(sd, "textual.token_embedding.weight")
    tpos = _need(sd, "textual.positional_embedding")
    t_width = tok.shape[1]
    if layers == 0 or text_layers == 0:
        raise UserError("not a Vita-CLIP checkpoint: no visual.blocks.* or textual.transformer.resblocks.* keys")
    vision = dict(
        hidden_size=width, intermediate_size=_need(sd, "visual.blocks.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=layers, num_attention_heads=vision_heads or max(1, width // HEAD_DIM),
        image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], num_channels=patch.shape[1],
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = dict(
        vocab_size=tok.shape[0], hidden_size=t_width,
        intermediate_size=_need(sd, "textual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_hidden_layers=text_layers, num_attention_heads=text_heads or max(1, t_width // HEAD_DIM),
        max_position_embeddings=tpos.shape[0], hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    ctx = sd.get("prompt_learner.ctx")
    csc = ctx is None or ctx.dim() == 3
    names = list(class_names or [])
    if ctx is not None and csc and len(names) != ctx.shape[0]:
        raise UserError(f"the checkpoint's class-specific context has {ctx.shape[0]} classes; "
                        f"{len(names)} class names were given (pass the training class list)")
    vita = dict(
        num_frames=_need(sd, "visual.time_embed").shape[0],
        num_global_prompts=sd["visual.global_prompts"].shape[1] if "visual.global_prompts" in sd else 0,
        use_global_prompts="visual.global_prompts" in sd,
        use_local_prompts="visual.blocks.0.local_prompts" in sd,
        use_summary_token="visual.blocks.0.summary_ln.weight" in sd,
        train_cls_proj=False,
        text_num_context=ctx.shape[-2] if ctx is not None else 8,
        csc=csc,
        class_names=names if ctx is not None else [],
    )
    vita.update(vita_overrides)
    config = CLIPViPConfig(text_config=text, vision_config=vision,
                           projection_dim=_need(sd, "visual.proj").shape[1], video_encoder="vita")
    setattr(config, CONFIG_KEY, VitaConfig.from_dict(vita).to_dict())
    return config


def convert_vita_state_dict(sd: dict) -> tuple[dict, list[str]]:
    """(our state dict, official keys that were not understood)."""
    out, unexpected = {}, []
    vis = re.compile(r"^visual\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
    txt = re.compile(r"^textual\.transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in sd.items():
        if key in _SIMPLE:
            out[_SIMPLE[key]] = value
        elif key in _DROPPED or key == "visual.patch_embed.proj.bias" or key == "visual.pos_embed":
            continue  # handled below / rebuilt from names
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T.contiguous()
        elif key == "textual.text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif m := re.match(r"^visual\.blocks\.(\d+)\.local_prompts$", key):
            out[f"video_encoder.layers.{m.group(1)}.local_prompts"] = value.reshape(value.shape[-2:])
        elif m := re.match(r"^textual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{m.group(1)}.self_attn.{name}.{m.group(2)}"] = part.contiguous()
        elif (m := vis.match(key)) and m.group(2) in _VISION_LAYER:
            out[f"vision_model.encoder.layers.{m.group(1)}.{_VISION_LAYER[m.group(2)]}.{m.group(3)}"] = value
        elif (m := vis.match(key)) and m.group(2) in _VITA_LAYER:
            out[f"video_encoder.layers.{m.group(1)}.{_VITA_LAYER[m.group(2)]}.{m.group(3)}"] = value
        elif (m := txt.match(key)) and m.group(2) in _TEXT_LAYER:
            out[f"text_model.encoder.layers.{m.group(1)}.{_TEXT_LAYER[m.group(2)]}.{m.group(3)}"] = value
        else:
            unexpected.append(key)
    if "visual.pos_embed" in sd:
        pos = sd["visual.pos_embed"].clone()
        bias = sd.get("visual.patch_embed.proj.bias")
        if bias is not None:
            pos[1:] += bias  # conv bias folded into the patch positions
        out["vision_model.embeddings.position_embedding.weight"] = pos
    return out, unexpected


def load_vita_official_checkpoint(checkpoint, class_names=None, vision_heads: int | None = None,
                                  text_heads: int | None = None, **vita_overrides):
    """A frozen ``CLIPViPModel`` (``video_encoder="vita"``) holding the official weights.

    ``checkpoint``: a path or an already loaded object (the release dict or a state dict).
    """
    from .modeling import CLIPViPModel

    obj = checkpoint
    if not isinstance(checkpoint, dict):
        try:
            obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except OSError as exc:
            raise UserError(f"{checkpoint}: cannot read: {exc.strerror or exc}") from None
    sd = unwrap_official(obj)
    config = infer_vita_config(sd, class_names, vision_heads, text_heads, **vita_overrides)
    converted, unexpected = convert_vita_state_dict(sd)
    model = CLIPViPModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in converted and not k.endswith("position_ids"))
    unexpected = sorted(unexpected + [k for k in converted if k not in expected])
    mismatched = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                        for k, v in converted.items() if k in expected and v.shape != expected[k].shape)
    if missing or unexpected or mismatched:
        where = checkpoint if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__") else "checkpoint"
        lines = [f"{where}: does not match the Vita-CLIP layout"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
        raise UserError("\n".join(lines))
    model.load_state_dict(converted, strict=False)
    freeze_for_vita(model)
    return model.eval()


@stage_main("convert-vita")
def main(argv: list[str] | None = None) -> int:
    """``clipvip convert-vita --checkpoint vita_clip_b16.pth --classes k400_classes.txt --out DIR``: the released
    Vita-CLIP weights as a model folder (config + safetensors + the CLIP tokenizer)."""
    import argparse

    from clipvip.data.recognition import read_class_list
    from clipvip.tokenizer import build_clip_tokenizer

    parser = argparse.ArgumentParser(prog="clipvip convert-vita", description=main.__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="released .pth ({'model': state dict})")
    parser.add_argument("--classes", default=None, help="class list the checkpoint was trained on (CSC context)")
    parser.add_argument("--out", required=True, help="model folder to write")
    args = parser.parse_args(argv)
    names = read_class_list(args.classes) if args.classes else None
    model = load_vita_official_checkpoint(args.checkpoint, class_names=names)
    model.save_pretrained(args.out)
    build_clip_tokenizer(model_max_length=model.config.text_config.max_position_embeddings).save_pretrained(args.out)
    print(f"wrote {args.out}")
    return 0
