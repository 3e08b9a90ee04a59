"""``CLIPViPModel``: HF CLIP's towers (same module names) + a registered video encoder.

Usage:
    from clipvip.model import CLIPViPModel
    model = CLIPViPModel.from_pretrained("results/pretrained/clip")                # plain HF CLIP folder
    model = CLIPViPModel.from_pretrained(d, video_encoder="meanpool", temporal_init_std=0.02)
    v = model.encode_video(pixel_values)             # [B, T, 3, H, W] -> [B, P], L2-normalised (T=1: images)
    s = model.encode_text(input_ids, attention_mask) # [B, P], L2-normalised (unchanged CLIP text tower)
    model.save_pretrained(out)                        # config.json (model_type "clipvip") + model.safetensors
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.05, lr=5e-6))
    ...; opt.step(); model.clamp_logit_scale_()

State-dict names are HF ``CLIPModel``'s (``text_model.*``, ``vision_model.*``, ``visual_projection.weight``,
``text_projection.weight``, ``logit_scale``) plus ``vision_model.embeddings.added_cls`` /
``vision_model.embeddings.temporal_embedding`` (ViP and full attention) or ``video_encoder.*`` (seqTransf).
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextModel, PretrainedConfig
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel

from clipvip.stage import UserError

from .config import VIDEO_FIELDS, CLIPViPConfig
from .encoders import SeqTransformerEncoder, build_video_encoder
from .video_embeddings import CLIPViPVisionModel, InitAsBuiltinMixin

LOGIT_SCALE_MAX = math.log(200.0)
logger = logging.getLogger(__name__)


class ModelLoadError(UserError, ValueError):
    """A model name or folder that cannot be a CLIP / CLIP-ViP model (one line at the stage boundary)."""


class CLIPViPModel(InitAsBuiltinMixin, CLIPPreTrainedModel):
    config_class = CLIPViPConfig
    config: CLIPViPConfig
    # New CLIP-ViP parameters are expected to be absent from a plain CLIP checkpoint; from_pretrained logs them
    # itself instead of HF's "newly initialized" warning table.
    _keys_to_ignore_on_load_missing = [r"embeddings\.added_cls$", r"embeddings\.temporal_embedding$", r"^video_encoder\."]

    def __init__(self, config: CLIPViPConfig):
        super().__init__(config)
        encoder = build_video_encoder(config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPViPVisionModel._from_config(
            config.vision_config,
            num_proxies=config.num_proxies,
            temporal_size=config.temporal_size,
            temporal_init_std=config.temporal_init_std,
            video_tokens=encoder.video_tokens,
        )
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.video_encoder = encoder
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, CLIPViPModel):
            # Same as HF CLIPModel's init (its branch keys on isinstance(CLIPModel), which we are not).
            init.normal_(module.text_projection.weight, std=self.config.text_config.hidden_size**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5 * factor)
            init.constant_(module.logit_scale, float(self.config.logit_scale_init))
        elif isinstance(module, SeqTransformerEncoder):
            # The generic nn.Embedding init would use std = initializer_factor (1.0) on a CLIPConfig.
            init.normal_(module.frame_position_embeddings.weight, std=0.02 * factor)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Load our folder or a plain HF CLIP (name or folder); video-field keywords override the config.

        From a plain CLIP (``model_type == "clip"``): the config is converted, missing proxies/temporal rows
        get their init (standard normal / ``temporal_init_std``), ``logit_scale`` is set to
        ``logit_scale_init`` (ln 100), and a seqTransf head starts from the text tower (CLIP4Clip).
        """
        overrides = {key: kwargs.pop(key) for key in VIDEO_FIELDS if key in kwargs}
        from_plain_clip = False
        if config is None:
            hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
            name = str(pretrained_model_name_or_path)
            folder = os.path.expanduser(name)
            if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
                raise ModelLoadError(f"model folder {name} has no config.json: not a saved model (save_pretrained, "
                                     "clipvip convert-official or huggingface-cli download write one)")
            if not os.path.exists(folder) and (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1):
                raise ModelLoadError(f"model folder {name} does not exist (and it is not a hub name 'org/name')")
            try:
                raw, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            except OSError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelLoadError(f"cannot load model {name}: {first}") from None
            from_plain_clip = raw.get("model_type") != CLIPViPConfig.model_type
            if from_plain_clip and raw.get("model_type") != "clip":
                raise ModelLoadError(f"{pretrained_model_name_or_path}: config.json has model_type "
                                     f"{raw.get('model_type')!r}, not a CLIP or CLIP-ViP model")
            config = CLIPViPConfig.from_clip_config(raw, **overrides)
        else:
            for key, value in overrides.items():
                setattr(config, key, value)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if from_plain_clip:
            logger.info("%s: plain CLIP converted to CLIP-ViP (video_encoder=%s); new parameters initialised",
                        pretrained_model_name_or_path, config.video_encoder)
            with torch.no_grad():
                model.logit_scale.fill_(float(config.logit_scale_init))
            if isinstance(model.video_encoder, SeqTransformerEncoder):
                model.video_encoder.init_from_text_tower(model.text_model)
        return loaded

    # ----------------------------------------------------------------------------------------------- features
    def encode_video(self, pixel_values: Tensor) -> Tensor:
        """[B, T, 3, H, W] (T=1 for images) -> L2-normalised [B, P] via the configured video encoder."""
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [B, T, 3, H, W], got shape {tuple(pixel_values.shape)}")
        return self.video_encoder(self, pixel_values)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """CLIP text features (EOT-pooled, projected), L2-normalised: [B, P]."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None) -> dict[str, Tensor]:
        """Convenience: whichever of ``text_embeds`` / ``video_embeds`` the inputs allow, plus ``logit_scale``."""
        out = {"logit_scale": self.logit_scale}
        if input_ids is not None:
            out["text_embeds"] = self.encode_text(input_ids, attention_mask)
        if pixel_values is not None:
            out["video_embeds"] = self.encode_video(pixel_values)
        return out

    # ----------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp ``logit_scale`` to [0, ln 200] in place (after each optimizer step, as the paper does)."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def param_groups(self, weight_decay: float, lr: float, temporal_lr_mult: float = 1.0) -> list[dict]:
        """AdamW parameter groups: ``decay``, ``no_decay`` and ``temporal`` (each with params/weight_decay/lr/name).

        Decayed: the weight matrices of linear layers and the patch-embedding convolution (both are projections).
        Not decayed (CLIP-style practice: gains, biases and embeddings): every bias, every LayerNorm weight,
        token/position/frame-position embeddings, CLIP's class embedding, the proxy tokens (``added_cls``), the
        temporal embedding and ``logit_scale``. The official CLIP-ViP code matches no-decay names with a
        pattern that misses HF's ``layer_norm``/``layrnorm`` spellings and so decays LayerNorms — a slip we do
        not copy. The temporal embedding gets ``lr * temporal_lr_mult`` (a from-scratch demo needs ~10x to
        learn order in time; REFERENCE C) and no decay. Parameters with ``requires_grad=False`` are skipped.
        """
        decay, no_decay, temporal = [], [], []
        no_decay_ids = set()
        for module in self.modules():
            if isinstance(module, (nn.LayerNorm, nn.Embedding)):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.endswith("temporal_embedding"):
                temporal.append(param)
            elif (
                id(param) in no_decay_ids
                or name.endswith(".bias")
                or name.endswith(("class_embedding", "added_cls"))
                or name == "logit_scale"
            ):
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [
            {"name": "decay", "params": decay, "weight_decay": weight_decay, "lr": lr},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr": lr},
            {"name": "temporal", "params": temporal, "weight_decay": 0.0, "lr": lr * temporal_lr_mult},
        ]
        return [g for g in groups if g["params"]]
