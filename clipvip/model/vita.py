"""Vita-CLIP (Wasim et al., CVPR 2023) as the video encoder ``vita``: prompts around a frozen CLIP.

Follows the official code (github TalalWasim/Vita-CLIP, ``training/VitaCLIP_*.py``) over HF CLIP's own
modules: the vision tower is ``model.vision_model`` (embeddings, ``pre_layrnorm``, ``encoder.layers``,
``post_layernorm``) + ``model.visual_projection``, the text tower ``model.text_model`` + ``text_projection``;
both stay frozen. Everything Vita adds lives in ``model.video_encoder`` (state-dict prefix ``video_encoder.``).

Vision forward for a video of T frames (B videos; frames are processed as B·T images, frame-major per video):
  1. ``x = vision_model.embeddings(frame)`` = [CLS | L patches] + CLIP's position embedding;
     ``x += temporal_embedding[t]`` on **every** token of frame t (CLS included; [T_train, D], N(0, 0.02);
     nearest interpolation for another T); ``x = pre_layrnorm(x)``.
  2. Every layer i (a HF ``CLIPEncoderLayer``, pre-LN), with ``c_t = cls_proj_i(x_t[CLS])`` computed from the
     layer's *input* CLS token of every frame t of the video:
       a. global prompts ``G_i`` [8, D] (shared by every frame) inserted after CLS:   [CLS | G | P]
       b. summary token ``s_t = c_t + MHSA_i(LN_i(c))`` (self-attention over the T projected CLS tokens of
          the video, heads = vision heads) appended to frame t:                     [CLS | G | P | s_t]
       c. local prompts ``l_i + c`` ([T, D] + [T, D]); all T inserted after CLS in every frame of the video:
                                                                                   [CLS | l_1..l_T | G | P | s_t]
          -> attention (``layer_norm1`` + CLIP's q/k/v/out, full attention) over 1 + T + 8 + L + 1 tokens
          (214 for B/16, T = 8; 67 for B/32)
       d. summary token and local prompts removed:                                 [CLS | G | P]
          -> MLP (``layer_norm2`` + ``mlp``) over 1 + 8 + L tokens (205 for B/16)
       e. global prompts removed:                                                   [CLS | P]
     (The official order: summary appended first, then local prompts inserted after CLS; both removed after
     attention; global prompts inserted before the block and removed after it.)
  3. Per frame ``post_layernorm(CLS) @ visual_projection``, averaged over T; L2-normalised (cosine logits).

Class logits: ``exp(logit_scale) · cos(video, class text)`` with ``logit_scale`` the model's own (init
ln(1/0.07) = 2.659 by ``build_vita_model``); class text features come from ``clipvip.model.vita_text``.

Initialisation (official): global and local prompts xavier-uniform ``U(±sqrt(6 / (3·p² + D)))``; summary
attention xavier-uniform weights, zero biases; summary LayerNorm 1/0; ``cls_proj`` PyTorch's default Linear
init; temporal embedding N(0, ``temporal_init_std`` = 0.02); text context N(0, 0.02).

Quirks of the official code, and what we do (``VitaConfig`` fields):
  - ``train_cls_proj`` (default True): the official freeze rule keeps only parameter names containing
    summary/local/global/time_embed, so ``cls_proj`` stays at its random init forever (their open issue calls
    it a bug). ``train_cls_proj=False`` reproduces that (frozen at init).
  - Another frame count at test time: the official layers always regroup the B·T frames into groups of
    T_train consecutive frames (``B = BT // num_frames``), i.e. T = 16 is run as two 8-frame "videos" inside the
    blocks (and its local-prompt resize branch is dead code). We support any T properly: the summary
    attention and the local prompts span the whole video, local prompts and temporal embedding are resized by
    nearest interpolation. ``regroup_like_official=True`` reproduces the official regrouping (B·T must be a
    multiple of T_train; temporal embedding still interpolated to T, as officially).
  - Horizontal flip: the official ``--no_mirror`` flag is parsed but never applied, so training never flips;
    we have no flip either (augmentation is the data pipeline's business).

Usage:
    from clipvip.model.vita import build_vita_model, class_text_features, recognition_logits
    model = build_vita_model("results/pretrained/clip", class_names=names, vita={"num_frames": 8})
    opt = torch.optim.AdamW(vita_param_groups(model, lr=4e-4, weight_decay=0.05))
    text = class_text_features(model, tokenizer, names)        # [C, P], grads reach the context only
    logits = recognition_logits(model, pixel_values, text)      # [B, C]
    model.save_pretrained(out)   # config.json carries ``vita`` (VitaConfig as a dict) -> from_pretrained works
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel

from .config import CLIPViPConfig
from .encoders import register_video_encoder
from .video_embeddings import InitAsBuiltinMixin
from .vip import _heads, _merge, full_attention
from .vita_text import UNSEEN_TEMPLATE, VitaTextPrompts

logger = logging.getLogger(__name__)
VITA_LOGIT_SCALE_INIT = math.log(1 / 0.07)
CONFIG_KEY = "vita"  # CLIPViPConfig attribute holding VitaConfig as a dict (saved in config.json)


@dataclasses.dataclass
class VitaConfig:
    """Vita-CLIP settings (defaults = the official K400 run ``train_scripts/k400_train.sh``)."""

    num_frames: int = 8               # T_train: rows of the temporal embedding and of each layer's local prompts
    num_global_prompts: int = 8
    use_global_prompts: bool = True
    use_local_prompts: bool = True
    use_summary_token: bool = True
    train_cls_proj: bool = True       # official: False in effect (never trained); see the module docstring
    regroup_like_official: bool = False
    temporal_init_std: float = 0.02
    text_num_context: int = 8
    csc: bool = True                  # class-specific context (official K400 run); False = one shared context
    class_names: list = dataclasses.field(default_factory=list)   # training classes (rows of the CSC context)
    unseen_template: str = UNSEEN_TEMPLATE                          # zero-shot prompt for non-training classes (CSC)

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"vita.num_frames must be >= 1, got {self.num_frames}")
        if self.num_global_prompts < 0 or self.text_num_context < 0:
            raise ValueError("vita.num_global_prompts and vita.text_num_context must be >= 0")
        if "{}" not in self.unseen_template:
            raise ValueError(f"vita.unseen_template needs a '{{}}' for the class name: {self.unseen_template!r}")
        self.class_names = [str(n) for n in self.class_names]

    @classmethod
    def from_dict(cls, values: dict | None) -> "VitaConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown vita config keys {unknown}; valid: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def vita_config(config) -> VitaConfig:
    """The ``VitaConfig`` stored on a ``CLIPViPConfig`` (``config.vita``; defaults when absent)."""
    value = getattr(config, CONFIG_KEY, None)
    if isinstance(value, VitaConfig):
        return value
    return VitaConfig.from_dict(value)


# ------------------------------------------------------------------------------------------------ modules
class VitaAttention(nn.Module):
    """The official generalised ``Attention`` (q/k/v/out Linear with biases, softmax over keys) as self-attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.num_heads
        q, k, v = (_heads(p(x), h) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class VitaLayerPrompts(nn.Module):
    """Per-layer parameters: ``cls_proj``, local prompts [T, D], summary LayerNorm + attention."""

    def __init__(self, dim: int, num_heads: int, num_frames: int, local: bool, summary: bool):
        super().__init__()
        self.use_local, self.use_summary = local, summary
        self.cls_proj = nn.Linear(dim, dim) if (local or summary) else None
        self.local_prompts = nn.Parameter(torch.empty(num_frames, dim)) if local else None
        self.summary_ln = nn.LayerNorm(dim) if summary else None
        self.summary_attn = VitaAttention(dim, num_heads) if summary else None

    def local_for(self, num_frames: int) -> Tensor:
        """Local prompts for T frames [T, D]; nearest interpolation when T differs from the trained rows."""
        p = self.local_prompts
        if p.shape[0] == num_frames:
            return p
        return F.interpolate(p.T[None], size=num_frames, mode="nearest")[0].T

    def forward(self, layer, x: Tensor, group: int) -> Tensor:
        """Run CLIP ``layer`` on ``x`` [N·group, S, D] with this layer's summary token and local prompts
        (a module call, so ZeRO-3 gathers ``local_prompts`` like every other parameter)."""
        n_frames_total, _, dim = x.shape
        num_videos = n_frames_total // group
        num_local = 0
        if self.cls_proj is not None:
            c = self.cls_proj(x[:, 0].reshape(num_videos, group, dim))  # [N, T, D], from the layer's input CLS
        if self.use_summary:
            s = c + self.summary_attn(self.summary_ln(c))
            x = torch.cat([x, s.reshape(n_frames_total, 1, dim)], dim=1)
        if self.use_local:
            local = self.local_for(group).to(c.dtype) + c  # [N, T, D]
            local = local.repeat_interleave(group, dim=0)  # every frame of video n gets all T of video n
            num_local = local.shape[1]
            x = torch.cat([x[:, :1], local, x[:, 1:]], dim=1)
        x = x + full_attention(layer.self_attn, layer.layer_norm1(x))
        if self.use_summary:
            x = x[:, :-1]
        if num_local:
            x = torch.cat([x[:, :1], x[:, 1 + num_local:]], dim=1)
        return x + layer.mlp(layer.layer_norm2(x))


def vita_layer_forward(layer, prompts: VitaLayerPrompts, x: Tensor, group: int) -> Tensor:
    """One HF ``CLIPEncoderLayer`` with Vita's summary token and local prompts; ``x`` [N·group, S, D]."""
    return prompts(layer, x, group)


def _block(layer, prompts, global_prompts, x, group):
    if global_prompts is not None:
        g = global_prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], g, x[:, 1:]], dim=1)
    x = vita_layer_forward(layer, prompts, x, group)
    if global_prompts is not None:
        x = torch.cat([x[:, :1], x[:, 1 + global_prompts.shape[0]:]], dim=1)
    return x


@register_video_encoder("vita", video_tokens=False)
class VitaEncoder(InitAsBuiltinMixin, CLIPPreTrainedModel):
    """The ``vita`` video encoder; a (nested) PreTrainedModel so ``from_pretrained`` initialises its new
    parameters with ``_init_weights`` below (checkpoint values are never overwritten)."""

    config_class = CLIPViPConfig

    def __init__(self, config):
        super().__init__(config)
        self.vita = v = vita_config(config)
        vision, text = config.vision_config, config.text_config
        dim, layers, heads = vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads
        self.patch_size = vision.patch_size
        self.temporal_embedding = nn.Parameter(torch.empty(v.num_frames, dim))
        use_global = v.use_global_prompts and v.num_global_prompts > 0
        self.global_prompts = nn.Parameter(torch.empty(layers, v.num_global_prompts, dim)) if use_global else None
        self.layers = nn.ModuleList(
            VitaLayerPrompts(dim, heads, v.num_frames, v.use_local_prompts, v.use_summary_token) for _ in range(layers)
        )
        self.text = VitaTextPrompts(v.class_names, v.text_num_context, text.hidden_size, csc=v.csc,
                                    unseen_template=v.unseen_template, max_len=text.max_position_embeddings)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        dim = self.config.vision_config.hidden_size
        bound = math.sqrt(6.0 / float(3 * self.patch_size * self.patch_size + dim))
        if isinstance(module, VitaEncoder):
            init.normal_(module.temporal_embedding, mean=0.0, std=module.vita.temporal_init_std)
            if module.global_prompts is not None:
                init.uniform_(module.global_prompts, -bound, bound)
        elif isinstance(module, VitaLayerPrompts):
            if module.local_prompts is not None:
                init.uniform_(module.local_prompts, -bound, bound)
            if module.cls_proj is not None:  # torch's nn.Linear default
                init.kaiming_uniform_(module.cls_proj.weight, a=math.sqrt(5))
                fan_in = module.cls_proj.weight.shape[1]
                init.uniform_(module.cls_proj.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            if module.summary_ln is not None:
                init.ones_(module.summary_ln.weight)
                init.zeros_(module.summary_ln.bias)
        elif isinstance(module, VitaAttention):
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(proj.weight)
                init.zeros_(proj.bias)
        elif isinstance(module, VitaTextPrompts):
            if module.ctx is not None:
                init.normal_(module.ctx, mean=0.0, std=0.02)

    def temporal_for(self, num_frames: int) -> Tensor:
        """Temporal embedding for T frames [T, D] (nearest interpolation, as officially, when T != rows)."""
        t = self.temporal_embedding
        if t.shape[0] == num_frames:
            return t
        return F.interpolate(t.T[None], size=num_frames, mode="nearest")[0].T

    def group_size(self, batch: int, num_frames: int) -> int:
        """Frames per group inside the layers: T, or T_train with ``regroup_like_official``."""
        if not self.vita.regroup_like_official or num_frames == self.vita.num_frames:
            return num_frames
        if (batch * num_frames) % self.vita.num_frames:
            raise ValueError(f"regroup_like_official: {batch}x{num_frames} frames cannot be regrouped into "
                             f"{self.vita.num_frames}-frame groups (the official code fails here too)")
        return self.vita.num_frames

    def frame_embeddings(self, model, pixel_values: Tensor) -> Tensor:
        """Per-frame projected CLS ``[B, T, P]`` (before the mean over T)."""
        check_frozen(model)
        bsz, num_frames = pixel_values.shape[:2]
        vision = model.vision_model
        x = vision.embeddings(pixel_values.flatten(0, 1).to(vision.embeddings.patch_embedding.weight.dtype))
        x = x.view(bsz, num_frames, *x.shape[1:]) + self.temporal_for(num_frames).to(x.dtype)[None, :, None]
        x = vision.pre_layrnorm(x.flatten(0, 1))
        group = self.group_size(bsz, num_frames)
        use_ckpt = getattr(vision.encoder, "gradient_checkpointing", False) and torch.is_grad_enabled()
        for i, (layer, prompts) in enumerate(zip(vision.encoder.layers, self.layers)):
            g = None if self.global_prompts is None else self.global_prompts[i]
            if use_ckpt:
                x = checkpoint(_block, layer, prompts, g, x, group, use_reentrant=False)
            else:
                x = _block(layer, prompts, g, x, group)
        cls = model.visual_projection(vision.post_layernorm(x[:, 0]))
        return cls.view(bsz, num_frames, -1)

    def forward(self, model, pixel_values: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> L2-normalised video features [B, P] (mean of the per-frame features)."""
        return F.normalize(self.frame_embeddings(model, pixel_values).mean(dim=1), dim=-1)


# ------------------------------------------------------------------------------------------------ API
def _encoder(model) -> VitaEncoder:
    enc = getattr(model, "video_encoder", None)
    if not isinstance(enc, VitaEncoder):
        raise TypeError(f"model.video_encoder is {type(enc).__name__}, not the Vita-CLIP encoder (video_encoder='vita')")
    return enc


def vita_trainable_names(model) -> list[str]:
    """Names of exactly the parameters Vita trains: prompts, summary LN + attention, temporal embedding,
    ``cls_proj`` (unless ``train_cls_proj=False``), text context, ``logit_scale``."""
    enc = _encoder(model)
    names = []
    for name, _ in model.named_parameters():
        if name == "logit_scale":
            names.append(name)
        elif name.startswith("video_encoder."):
            if ".cls_proj." in name and not enc.vita.train_cls_proj:
                continue
            names.append(name)
    return names


def vita_trainable_parameters(model) -> list[tuple[str, nn.Parameter]]:
    """``[(name, parameter)]`` of the trainable set (see ``vita_trainable_names``)."""
    wanted = set(vita_trainable_names(model))
    return [(n, p) for n, p in model.named_parameters() if n in wanted]


def freeze_for_vita(model) -> list[str]:
    """Freeze everything except the trainable set (CLIP's vision and text towers, projections); returns
    the trainable names. ``build_vita_model`` calls it; call it after any other ``from_pretrained``."""
    wanted = set(vita_trainable_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    return sorted(wanted)


def check_frozen(model) -> None:
    """Raise ``RuntimeError`` when, with autograd on, a parameter outside the trainable set requires grad."""
    if not torch.is_grad_enabled():
        return
    enc = _encoder(model)
    towers = [model.vision_model, model.text_model, model.visual_projection, model.text_projection]
    bad = [n for m in towers for n, p in m.named_parameters() if p.requires_grad]
    if enc.vita.use_local_prompts or enc.vita.use_summary_token:
        if not enc.vita.train_cls_proj:
            bad += [f"layers.{i}.cls_proj" for i, lp in enumerate(enc.layers) if lp.cls_proj.weight.requires_grad]
    if bad:
        raise RuntimeError(f"Vita-CLIP keeps CLIP frozen but {len(bad)} frozen parameters require grad "
                           f"(first: {bad[:3]}); call clipvip.model.vita.freeze_for_vita(model)")


def vita_param_groups(model, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable set. Official: ``AdamW(model.parameters(), lr, weight_decay)``, i.e. the
    same decay on every trained tensor (prompts, LayerNorm, biases, ``logit_scale``); one group ``vita``."""
    params = [p for _, p in vita_trainable_parameters(model)]
    return [{"name": "vita", "params": params, "weight_decay": weight_decay, "lr": lr}]


def class_text_features(model, tokenizer, class_names: list[str], zero_shot: bool | None = None) -> Tensor:
    """L2-normalised class text features ``[C, P]``: trained context for training classes, the zero-shot
    prompt for others (``zero_shot=True``: never a per-class vector; see ``clipvip.model.vita_text``)."""
    return _encoder(model).text(model, tokenizer, list(class_names), zero_shot=zero_shot)


def recognition_logits(model, pixel_values: Tensor, class_features: Tensor) -> Tensor:
    """``exp(logit_scale) · cos(video, class text)``: ``[B, T, 3, H, W]`` x ``[C, P]`` -> ``[B, C]``."""
    video = model.encode_video(pixel_values)
    return model.logit_scale.exp() * video @ class_features.to(video.dtype).T


def build_vita_model(init_path, class_names=None, vita: VitaConfig | dict | None = None,
                     **config_overrides):
    """A frozen-CLIP Vita-CLIP ``CLIPViPModel`` from a plain HF CLIP (name/folder), a CLIP-ViP folder, or a
    saved Vita folder (then its stored ``vita`` config is used; ``class_names``/``vita`` must agree).

    From anything that is not already a Vita model, ``logit_scale`` starts at ln(1/0.07) (official) and the
    new parameters get their official init. The returned model is frozen (``freeze_for_vita``).
    """
    from .modeling import CLIPViPModel

    raw, _ = PretrainedConfig.get_config_dict(str(init_path))
    is_vita = raw.get("model_type") == CLIPViPConfig.model_type and raw.get("video_encoder") == "vita"
    if is_vita:
        stored = VitaConfig.from_dict(raw.get(CONFIG_KEY))
        wanted = stored if vita is None else (vita if isinstance(vita, VitaConfig) else VitaConfig.from_dict(vita))
        if class_names is not None:
            wanted = dataclasses.replace(wanted, class_names=list(class_names))
        if wanted.to_dict() != stored.to_dict():
            raise ValueError(f"{init_path} is a Vita model with vita config {stored.to_dict()}; asked for "
                             f"{wanted.to_dict()}")
        loaded = CLIPViPModel.from_pretrained(init_path, **config_overrides)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
    else:
        v = VitaConfig() if vita is None else (vita if isinstance(vita, VitaConfig) else VitaConfig.from_dict(vita))
        if class_names is not None:
            v = dataclasses.replace(v, class_names=list(class_names))
        overrides = {"logit_scale_init": VITA_LOGIT_SCALE_INIT, **config_overrides, "video_encoder": "vita"}
        if raw.get("model_type") == CLIPViPConfig.model_type:
            config = CLIPViPConfig.from_dict({k: val for k, val in raw.items()
                                              if k not in ("transformers_version", "architectures")})
            for key, value in overrides.items():
                setattr(config, key, value)
        else:
            config = CLIPViPConfig.from_clip_config(raw, **overrides)
        setattr(config, CONFIG_KEY, v.to_dict())
        loaded = CLIPViPModel.from_pretrained(init_path, config=config)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        with torch.no_grad():
            model.logit_scale.fill_(float(config.logit_scale_init))
    freeze_for_vita(model)
    return model
