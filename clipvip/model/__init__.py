"""CLIP-ViP model: config, model, video-encoder registry, official-checkpoint loader, tiny test models.

Usage:
    from clipvip.model import CLIPViPConfig, CLIPViPModel, load_official_checkpoint
    model = CLIPViPModel.from_pretrained(clip_dir_or_hub_name, video_encoder="vip")
    model = load_official_checkpoint("pretrain_clipvip_base_32.pt")          # architecture from shapes
    from clipvip.model.tiny import build_tiny_clip                          # tiny CLIP + tokenizer folder

Importing this package registers ``model_type="clipvip"`` with ``AutoConfig`` / ``AutoModel``.
"""
from transformers import AutoConfig, AutoModel

from .config import VIDEO_FIELDS, CLIPViPConfig
from .encoders import VIDEO_ENCODERS, register_video_encoder
from .modeling import CLIPViPModel
from .official import infer_config_from_state_dict, load_official_checkpoint

AutoConfig.register(CLIPViPConfig.model_type, CLIPViPConfig, exist_ok=True)
AutoModel.register(CLIPViPConfig, CLIPViPModel, exist_ok=True)

__all__ = [
    "CLIPViPConfig",
    "CLIPViPModel",
    "VIDEO_ENCODERS",
    "VIDEO_FIELDS",
    "infer_config_from_state_dict",
    "load_official_checkpoint",
    "register_video_encoder",
]
