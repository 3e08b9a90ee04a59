"""VideoCLIP (Xu et al., EMNLP 2021) as fairseq MMPT's ``MMFusionSeparate``: model, loss and checkpoint loader.

Usage:
    from clipvip.model.videoclip import VideoCLIPModel, load_mmpt_checkpoint
    model = VideoCLIPModel.from_pretrained("bert-base-uncased", feature_dim=512)   # or a BERT folder
    v = model.encode_video(features, mask)          # features float [B, T<=32, 512], mask bool [B, T] -> [B, 768]
    t = model.encode_text(input_ids, attention_mask)  # "[CLS] text [SEP] [PAD]..." -> [B, 768]
    scores = v @ t.T                                 # plain dot product: no projection, no normalisation
    total, terms = LOSSES["videoclip"]({"V": v, "S": t}, None)
    model.save_pretrained("out/"); VideoCLIPModel.from_pretrained("out/")
    model = load_mmpt_checkpoint("checkpoint_best.pt")  # the released MMPT checkpoint (fairseq state)

Video tower (``MMBertForEncoder``): per-second features -> ``VideoTokenMLP`` = Linear(d_in, H) -> GELU
(the BERT config's ``hidden_act``) -> LayerNorm(H) -> Linear(H, H); then the sequence
``[CLS] v_1 .. v_T [SEP]`` enters a BERT of the first ``num_video_layers`` (6) layers as input embeddings:
word embeddings of [CLS]/[SEP] around the video tokens, plus position embeddings (0..T for CLS and video
tokens, ``max_video_len + 1`` = 33 for [SEP], as ``MMBertEmbeddings`` places it whatever T is) and
token-type 0, then LayerNorm and dropout -- ``BertEmbeddings`` applied to ``inputs_embeds``. Attention mask
``[1, mask, 1]``. Pooling: mean over the valid video tokens and [SEP] (everything except [CLS]).
Because [SEP]'s position does not depend on T and padded tokens are masked, padding a batch to a longer T
does not change any item's output.

Text tower: a full BERT (12 layers for bert-base) on ``[CLS] text [SEP]`` (positions 0.., token type 0);
pooling: masked mean over all tokens except [CLS] (text tokens and the final [SEP]).

Loss ``videoclip`` (``MMContraLoss``): CE(V·Sᵀ, diag) + CE(S·Vᵀ, diag), tau = 1, no normalisation; features
are all-gathered with gradients (``clipvip.losses.gather_features``), so negatives come from the global batch
-- the official code uses only the local (per-GPU, 512-pair) batch. Same convention as every ``LOSSES``
entry: ``loss(features, logit_scale, groups=None) -> (total, terms)``; ``logit_scale`` is ignored.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from clipvip.stage import UserError

CONFIG_NAME = "videoclip_config.json"
WEIGHTS_NAME = "model.safetensors"
BERT_BASE_UNCASED_IDS = {"cls_token_id": 101, "sep_token_id": 102, "pad_token_id": 0}


class VideoTokenMLP(nn.Module):
    def __init__(self, feature_dim: int, hidden_size: int, hidden_act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        from transformers.activations import ACT2FN

        self.linear1 = nn.Linear(feature_dim, hidden_size)
        self.activation = ACT2FN[hidden_act]
        # MMPT builds nn.LayerNorm(hidden) with torch's default eps (1e-5), not BERT's 1e-12
        self.LayerNorm = nn.LayerNorm(hidden_size)
        self.linear2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.LayerNorm(self.activation(self.linear1(x))))


def _masked_mean(hidden: Tensor, weights: Tensor) -> Tensor:
    weights = weights.to(hidden.dtype)
    return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)


class VideoCLIPModel(nn.Module):
    """Two BERT towers; ``bert_config`` is a ``transformers.BertConfig`` (the text tower's geometry)."""

    def __init__(self, bert_config, feature_dim: int = 512, num_video_layers: int = 6, max_video_len: int = 32,
                 cls_token_id: int = 101, sep_token_id: int = 102, pad_token_id: int = 0):
        super().__init__()
        from transformers import BertConfig, BertModel

        if num_video_layers < 1 or num_video_layers > bert_config.num_hidden_layers:
            raise UserError(f"num_video_layers must be in [1, {bert_config.num_hidden_layers}], got {num_video_layers}")
        if max_video_len + 2 > bert_config.max_position_embeddings:
            raise UserError(f"max_video_len {max_video_len} needs {max_video_len + 2} positions, the BERT has "
                            f"{bert_config.max_position_embeddings}")
        self.bert_config = bert_config
        self.feature_dim, self.num_video_layers, self.max_video_len = int(feature_dim), int(num_video_layers), \
            int(max_video_len)
        self.cls_token_id, self.sep_token_id, self.pad_token_id = int(cls_token_id), int(sep_token_id), \
            int(pad_token_id)
        video_config = BertConfig.from_dict({**bert_config.to_dict(), "num_hidden_layers": self.num_video_layers})
        self.hidden_size = bert_config.hidden_size
        self.video_mlp = VideoTokenMLP(self.feature_dim, self.hidden_size, bert_config.hidden_act)
        self.video_bert = BertModel(video_config, add_pooling_layer=False)
        self.text_bert = BertModel(bert_config, add_pooling_layer=False)

    # ------------------------------------------------------------------------------------------ towers
    def video_inputs(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The video BERT's ``inputs_embeds``, ``attention_mask``, ``position_ids`` and ``token_type_ids``."""
        if features.ndim != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected features [B, T, {self.feature_dim}], got {tuple(features.shape)}")
        b, t, _ = features.shape
        if t > self.max_video_len:
            raise ValueError(f"{t} video tokens > max_video_len {self.max_video_len} (truncate to the first "
                             f"{self.max_video_len} seconds, as MMPT does)")
        device = features.device
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=device)
        word = self.video_bert.embeddings.word_embeddings
        special = word(torch.tensor([self.cls_token_id, self.sep_token_id], device=device))
        video = self.video_mlp(features.to(special.dtype))
        embeds = torch.cat([special[0].expand(b, 1, -1), video, special[1].expand(b, 1, -1)], dim=1)
        ones = torch.ones(b, 1, dtype=torch.long, device=device)
        attention = torch.cat([ones, mask.long(), ones], dim=1)
        positions = torch.cat([torch.arange(t + 1, device=device),
                               torch.tensor([self.max_video_len + 1], device=device)]).expand(b, -1)
        return {"inputs_embeds": embeds, "attention_mask": attention, "position_ids": positions,
                "token_type_ids": torch.zeros(b, t + 2, dtype=torch.long, device=device)}

    def video_hidden(self, features: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        inputs = self.video_inputs(features, mask)
        hidden = self.video_bert(**inputs).last_hidden_state
        return hidden, inputs["attention_mask"]

    def encode_video(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """float [B, T, d_in] per-second features (+ bool mask [B, T], True = real) -> [B, H]."""
        hidden, attention = self.video_hidden(features, mask)
        weights = attention.clone()
        weights[:, 0] = 0  # everything except [CLS]
        return _masked_mean(hidden, weights)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[CLS] text [SEP] [PAD]..`` ids [B, L] (+ mask) -> [B, H]: mean over all tokens but [CLS]."""
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_token_id).long()
        hidden = self.text_bert(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        weights = attention_mask.clone()
        weights[:, 0] = 0
        return _masked_mean(hidden, weights)

    def forward(self, features: Tensor, mask: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None
                ) -> dict[str, Tensor]:
        return {"V": self.encode_video(features, mask), "S": self.encode_text(input_ids, attention_mask)}

    def text_ids(self, token_ids: list[list[int]], max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Token lists (no special tokens, e.g. ``ClipTextPair.token_ids``) -> padded ``[CLS] .. [SEP]`` batch."""
        rows = [[self.cls_token_id, *ids[: (max_len - 2) if max_len else None], self.sep_token_id] for ids in token_ids]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    # ------------------------------------------------------------------------------------------ persistence
    def extra_config(self) -> dict:
        return {"feature_dim": self.feature_dim, "num_video_layers": self.num_video_layers,
                "max_video_len": self.max_video_len, "cls_token_id": self.cls_token_id,
                "sep_token_id": self.sep_token_id, "pad_token_id": self.pad_token_id}

    def save_pretrained(self, out_dir, tokenizer=None) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = {"model_type": "videoclip", **self.extra_config(), "bert_config": self.bert_config.to_dict()}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        return out

    @classmethod
    def from_pretrained(cls, name_or_dir, feature_dim: int = 512, num_video_layers: int = 6, max_video_len: int = 32,
                        **token_ids) -> "VideoCLIPModel":
        """Our saved folder (``videoclip_config.json``), or a HF BERT (hub name or folder) for both towers:
        the text tower is the whole BERT, the video tower its embeddings and first ``num_video_layers`` layers.
        Special token ids come from the folder's tokenizer when it has one (else bert-base-uncased's)."""
        from transformers import BertConfig, BertModel

        path = Path(str(name_or_dir))
        if (path / CONFIG_NAME).is_file():
            from safetensors.torch import load_file

            config = json.loads((path / CONFIG_NAME).read_text())
            bert_config = BertConfig.from_dict(config.pop("bert_config"))
            config.pop("model_type", None)
            model = cls(bert_config, **config)
            _load_strict(model, load_file(str(path / WEIGHTS_NAME)), str(path / WEIGHTS_NAME))
            return model
        bert = BertModel.from_pretrained(str(name_or_dir))  # with its pooler (unused): no missing-key report
        ids = {**BERT_BASE_UNCASED_IDS, **_tokenizer_ids(name_or_dir), **token_ids}
        model = cls(bert.config, feature_dim, num_video_layers, max_video_len, **ids)
        bert_state = {k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
        model.text_bert.load_state_dict(bert_state)
        video_state = {k: v for k, v in bert_state.items() if _layer(k) is None or _layer(k) < num_video_layers}
        model.video_bert.load_state_dict(video_state)
        return model


def _tokenizer_ids(name_or_dir) -> dict:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(name_or_dir))
    except Exception:  # no tokenizer files: keep bert-base-uncased's ids
        return {}
    ids = {"cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def _layer(key: str) -> int | None:
    m = _LAYER.match(key)
    return int(m.group(1)) if m else None


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source}: weights do not fit the model: missing {_names(missing)}; unexpected "
                        f"{_names(unexpected)}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        shapes = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in bad[:10]]
        raise UserError(f"{source}: shape mismatch for {', '.join(shapes)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _names(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ------------------------------------------------------------------------------------------------ MMPT checkpoint
# fairseq wraps the MMPT model as ``mmmodel``; MMFusionSeparate holds ``video_encoder`` (MMBertForEncoder:
# ``videomlp`` + ``bert`` = MMBertModel with a pooler) and ``text_encoder`` (a plain BertModel with a pooler).
MMPT_PREFIXES = {
    "mmmodel.video_encoder.videomlp.": "video_mlp.",
    "mmmodel.video_encoder.bert.": "video_bert.",
    "mmmodel.text_encoder.": "text_bert.",
}
# Present in the released state but unused by retrieval (poolers; old transformers' position_ids buffers).
MMPT_IGNORED = re.compile(r"^mmmodel\.(video_encoder\.bert|text_encoder)\.(pooler\.|embeddings\.position_ids$)")


def mmpt_to_ours(state: dict) -> tuple[dict, list[str]]:
    """Rename an MMPT ``model`` state dict to ``VideoCLIPModel`` keys; returns (renamed, unknown keys)."""
    out, unknown = {}, []
    for key, value in state.items():
        if MMPT_IGNORED.match(key):
            continue
        for old, new in MMPT_PREFIXES.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    return out, unknown


def _bert_config_from_state(state: dict, prefix: str, num_attention_heads: int | None):
    from transformers import BertConfig

    word = state[f"{prefix}embeddings.word_embeddings.weight"]
    layers = {_layer(k[len(prefix):]) for k in state if k.startswith(prefix + "encoder.layer.")}
    hidden = word.shape[1]
    return BertConfig(
        vocab_size=word.shape[0], hidden_size=hidden, num_hidden_layers=max(layers) + 1,
        num_attention_heads=num_attention_heads or max(1, hidden // 64),
        intermediate_size=state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0],
    )


def load_mmpt_checkpoint(checkpoint, bert_config=None, max_video_len: int = 32, num_attention_heads: int | None = None,
                         **token_ids) -> VideoCLIPModel:
    """The released VideoCLIP ``checkpoint_best.pt`` (or its loaded dict) -> ``VideoCLIPModel`` (float32).

    The geometry is read from the weights (feature size, hidden size, layers, vocabulary, positions); heads
    are ``hidden // 64`` unless ``num_attention_heads`` or a ``bert_config`` (a ``BertConfig`` or a BERT
    name/folder) says otherwise. Every key must map: unknown or missing keys raise ``UserError`` with names.
    """
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "MMPT state dict"
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"MMPT checkpoint not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    renamed, unknown = mmpt_to_ours(state)
    if unknown:
        raise UserError(f"{source}: unexpected keys (not an MMFusionSeparate checkpoint?): {_names(sorted(unknown))}")
    needed = ["text_bert.embeddings.word_embeddings.weight", "video_mlp.linear1.weight"]
    absent = [k for k in needed if k not in renamed]
    if absent:
        raise UserError(f"{source}: missing keys {_names(absent)}")
    if bert_config is None:
        bert_config = _bert_config_from_state(renamed, "text_bert.", num_attention_heads)
    elif not hasattr(bert_config, "hidden_size"):
        from transformers import BertConfig

        bert_config = BertConfig.from_pretrained(str(bert_config))
    video_layers = {_layer(k[len("video_bert."):]) for k in renamed if k.startswith("video_bert.encoder.layer.")}
    ids = {**BERT_BASE_UNCASED_IDS, **token_ids}
    model = VideoCLIPModel(bert_config, feature_dim=renamed["video_mlp.linear1.weight"].shape[1],
                           num_video_layers=max(video_layers) + 1 if video_layers else 1,
                           max_video_len=max_video_len, **ids)
    _load_strict(model, {k: v.float() for k, v in renamed.items()}, source)
    return model


def ours_to_mmpt(state: dict) -> dict:
    """The inverse renaming (for writing MMPT-layout test checkpoints); poolers are not produced."""
    out = {}
    for key, value in state.items():
        for old, new in MMPT_PREFIXES.items():
            if key.startswith(new):
                out[old + key[len(new):]] = value
                break
    return out


# ------------------------------------------------------------------------------------------------ loss
# The ``videoclip`` loss lives in clipvip.videoclip_loss (no transformers import); importing this module
# registers it too.
from clipvip.videoclip_loss import VideoCLIPLoss, contrastive_reference  # noqa: E402,F401


# ------------------------------------------------------------------------------------------------ tiny BERT
DEFAULT_CORPUS = [
    f"{a} {c} {s} moves {d}, then {e}" for a in ("a", "the") for c in ("red", "green", "blue", "yellow", "white")
    for s in ("square", "circle", "triangle", "star") for d, e in (("left", "up"), ("right", "down"),
                                                                   ("up", "right"), ("down", "left"))
] + ["cut the onion and add it to the pan", "now we whisk the eggs with some salt", "open the door slowly",
     "[PAD] [UNK] [CLS] [SEP] [MASK]"]


def build_tiny_bert(out_dir, hidden_size: int = 32, layers: int = 2, heads: int = 2, intermediate_size: int = 64,
                    max_position_embeddings: int = 128, vocab_size: int = 400, corpus=None, seed: int = 0) -> Path:
    """A seeded random tiny ``BertModel`` + a WordPiece ``BertTokenizerFast`` trained on ``corpus`` (default:
    demo-like captions), saved like a hub folder: ``VideoCLIPModel.from_pretrained(out_dir)`` loads it as it
    would ``bert-base-uncased``."""
    from transformers import BertConfig, BertModel

    from clipvip.tokenizer import build_wordpiece_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_wordpiece_tokenizer(corpus or DEFAULT_CORPUS, vocab_size)
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """``clipvip convert-videoclip --checkpoint checkpoint_best.pt --tokenizer bert-base-uncased --out DIR``: the
    released MMPT VideoCLIP weights as a model folder (``VideoCLIPModel`` + the BERT tokenizer), which
    ``clipvip evaluate`` and ``videoclip.init`` take like any trained VideoCLIP folder."""
    import argparse

    from transformers import AutoTokenizer

    from clipvip.stage import stage_main

    @stage_main("convert-videoclip")
    def run(argv):
        parser = argparse.ArgumentParser(prog="clipvip convert-videoclip", description=main.__doc__.splitlines()[0])
        parser.add_argument("--checkpoint", required=True, help="released checkpoint_best.pt (MMFusionSeparate)")
        parser.add_argument("--tokenizer", default="bert-base-uncased",
                            help="BERT tokenizer (hub name or folder) the checkpoint was trained with; also its config")
        parser.add_argument("--max-video-len", type=int, default=32, help="video tokens (seconds), 32 officially")
        parser.add_argument("--out", required=True, help="model folder to write")
        args = parser.parse_args(argv)
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as exc:
            raise UserError(f"--tokenizer {args.tokenizer}: {exc}") from None
        model = load_mmpt_checkpoint(args.checkpoint, max_video_len=args.max_video_len,
                                     num_attention_heads=_heads_of(args.tokenizer),
                                     cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
        model.save_pretrained(args.out, tokenizer=tokenizer)
        print(f"wrote {args.out}")
        return 0

    return run(argv)


def _heads_of(bert: str) -> int | None:
    """Attention heads from a BERT folder/name's config when it has one (else ``load_mmpt_checkpoint``'s rule)."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(bert).num_attention_heads)
    except (OSError, ValueError, AttributeError):
        return None
