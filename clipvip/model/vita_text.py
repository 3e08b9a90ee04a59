"""Vita-CLIP text side: learnable context vectors before the class name, through CLIP's frozen text tower.

Prompt of class k (the official ``TextPromptLearner``, ``ctx_pos="end"``):

    [SOS] ctx_1 … ctx_n  <class name tokens> .  [EOS]

- ``csc=True`` (class-specific context, the official K400 setting ``--use_text_prompt_CSC``): ``ctx`` is
  ``[n_cls, n_ctx, W]``, one set of n_ctx vectors per training class, N(0, 0.02).
- ``csc=False``: one shared ``[n_ctx, W]`` set for every class (CoOp's generic context).
- Class names: ``_`` becomes a space (official); the name and the final ``.`` are tokenised with the real
  CLIP BPE tokenizer (the model folder's ``CLIPTokenizerFast`` / ``clipvip.tokenizer.build_clip_tokenizer``),
  which gives the same ids as the official ``SimpleTokenizer`` on ``"X X … X name."`` after the n_ctx ``X``.
- Text tower: token embeddings of the frozen ``text_model`` (context rows replaced by ``ctx``) + its position
  embedding → its layers under a causal mask (no padding mask: as in the official encoder; with a causal
  mask the tokens after EOS cannot influence the EOS row) → ``final_layer_norm`` → the EOS row →
  ``text_projection``. Sequences are padded only to the longest prompt of the set (identical EOS features).

Classes outside the training list (zero-shot: K600's new classes, HMDB51, UCF101) never use a trained
per-class vector. With ``csc=True`` they get the plain CLIP prompt ``unseen_template`` ("a photo of a {}.") through the
frozen tower -- the official code evaluates zero-shot from a file of precomputed CLIP text features
(``--zeroshot_text_features_path``, e.g. ``class-only.pth``), not from per-class contexts, which cannot exist
for unseen names; a plain CLIP prompt is the choice that needs no trained text vector. With ``csc=False`` the
shared (trained, not per-class) context is used for every name, seen or not (CoOp's transfer).

Usage:
    feats = class_text_features(model, tokenizer, names)            # [C, P] L2-normalised, via the encoder
    ids, eos = context_prompt_ids(tokenizer, names, n_ctx=8)        # token ids with n_ctx placeholders
    feats = encode_text_embeddings(model, embeds, eos)               # the frozen tower on embeddings
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vip import _heads, _merge

PLACEHOLDER = "x"  # the official prompt prefix is "X X … X" (lower-cased by the tokenizer); rows are replaced
UNSEEN_TEMPLATE = "a photo of a {}."


def clean_class_name(name: str) -> str:
    """Official normalisation (``name.replace("_", " ")``) plus surrounding whitespace removed."""
    return name.replace("_", " ").strip()


def _special_ids(tokenizer) -> tuple[int, int]:
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return int(bos), int(eos)


def _pad(rows: list[list[int]], pad_id: int, max_len: int, what: str) -> tuple[Tensor, Tensor]:
    longest = max(len(r) for r in rows)
    if longest > max_len:
        worst = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise ValueError(f"{what} {worst} needs {longest} tokens > the text tower's {max_len} positions")
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    eos = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
    return ids, eos


def context_prompt_ids(tokenizer, names: list[str], n_ctx: int, max_len: int = 77) -> tuple[Tensor, Tensor]:
    """``[SOS] x×n_ctx name . [EOS]`` token ids ``[C, S]`` (padded with EOS) and the EOS position ``[C]``."""
    bos, eos = _special_ids(tokenizer)
    placeholder = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
    rows = []
    for name in names:
        body = tokenizer(clean_class_name(name) + ".", add_special_tokens=False).input_ids
        rows.append([bos] + placeholder * n_ctx + body + [eos])
    return _pad(rows, eos, max_len, "class prompt")


def template_prompt_ids(tokenizer, names: list[str], template: str = UNSEEN_TEMPLATE,
                        max_len: int = 77) -> tuple[Tensor, Tensor]:
    """Plain CLIP prompts ``template.format(name)``: ids ``[C, S]`` and EOS positions ``[C]``."""
    bos, eos = _special_ids(tokenizer)
    rows = [[bos] + tokenizer(template.format(clean_class_name(n)), add_special_tokens=False).input_ids + [eos]
            for n in names]
    return _pad(rows, eos, max_len, "template prompt")


def causal_attention(attn, hidden: Tensor) -> Tensor:
    """Causal self-attention with a HF ``CLIPAttention``'s projections (the text tower's mask)."""
    h = attn.num_heads
    dropout = attn.dropout if attn.training else 0.0
    q, k, v = (_heads(proj(hidden), h) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=attn.scale)
    return attn.out_proj(_merge(out))


def encode_text_embeddings(model, embeds: Tensor, eos_positions: Tensor) -> Tensor:
    """Frozen CLIP text tower on token embeddings ``[C, S, W]`` -> L2-normalised features ``[C, P]``."""
    text = model.text_model
    seq = embeds.shape[1]
    positions = text.embeddings.position_embedding(torch.arange(seq, device=embeds.device))
    hidden = embeds + positions
    for layer in text.encoder.layers:
        hidden = hidden + causal_attention(layer.self_attn, layer.layer_norm1(hidden))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    hidden = text.final_layer_norm(hidden)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_positions.to(hidden.device)]
    return F.normalize(model.text_projection(pooled), dim=-1)


class VitaTextPrompts(nn.Module):
    """The learnable text context: ``ctx`` ``[n_cls, n_ctx, W]`` (CSC) or ``[n_ctx, W]`` (shared).

    With CSC and no training classes (``n_cls == 0``) there is no parameter: every class is zero-shot.
    Token ids are cached per list of names (not saved: they follow from the names and the tokenizer).
    """

    def __init__(self, class_names: list[str], n_ctx: int, width: int, csc: bool = True,
                 unseen_template: str = UNSEEN_TEMPLATE, max_len: int = 77):
        super().__init__()
        self.class_names = [clean_class_name(n) for n in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            dup = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            raise ValueError(f"duplicate class names: {dup[:5]}")
        self.index = {n: i for i, n in enumerate(self.class_names)}
        self.n_ctx, self.width, self.csc = int(n_ctx), int(width), bool(csc)
        self.unseen_template, self.max_len = unseen_template, int(max_len)
        shape = (len(self.class_names), self.n_ctx, self.width) if self.csc else (self.n_ctx, self.width)
        self.ctx = nn.Parameter(torch.empty(shape)) if shape[0] > 0 else None
        self._ids_cache: dict = {}

    def _ids(self, kind: str, tokenizer, names: tuple[str, ...]):
        key = (kind, id(tokenizer), names)
        if key not in self._ids_cache:
            if kind == "ctx":
                self._ids_cache[key] = context_prompt_ids(tokenizer, list(names), self.n_ctx, self.max_len)
            else:
                self._ids_cache[key] = template_prompt_ids(tokenizer, list(names), self.unseen_template, self.max_len)
        return self._ids_cache[key]

    def seen(self, names: list[str]) -> list[bool]:
        """Which names are training classes (own CSC context)."""
        return [clean_class_name(n) in self.index for n in names]

    def forward(self, model, tokenizer, names: list[str], zero_shot: bool | None = None) -> Tensor:
        """Class text features ``[C, P]`` (L2-normalised) for ``names``.

        ``zero_shot``: None = per name (training classes use their trained context, others the zero-shot
        prompt); True = no name uses a per-class vector; False = every name must be a training class.
        Shared context (``csc=False``): every name gets the shared context (``zero_shot`` only checks).
        """
        names = [clean_class_name(n) for n in names]
        seen = self.seen(names)
        if zero_shot is False and not all(seen):
            unknown = [n for n, s in zip(names, seen) if not s]
            raise ValueError(f"zero_shot=False but {len(unknown)} classes are not training classes "
                             f"(first: {unknown[:3]})")
        device = model.text_projection.weight.device
        token_embedding = model.text_model.embeddings.token_embedding
        if not self.csc:
            if self.ctx is None:
                raise ValueError("shared context has no vectors (n_ctx = 0)")
            ids, eos = self._ids("ctx", tokenizer, tuple(names))
            embeds = token_embedding(ids.to(device))
            ctx = self.ctx.to(embeds.dtype).unsqueeze(0).expand(len(names), -1, -1)
            embeds = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx:]], dim=1)
            return encode_text_embeddings(model, embeds, eos)
        use_ctx = [s and zero_shot is not True for s in seen]
        out: list[Tensor | None] = [None] * len(names)
        trained = [i for i, u in enumerate(use_ctx) if u]
        if trained:
            sub = tuple(names[i] for i in trained)
            ids, eos = self._ids("ctx", tokenizer, sub)
            embeds = token_embedding(ids.to(device))
            rows = torch.tensor([self.index[n] for n in sub], device=device)
            ctx = self.ctx.to(embeds.dtype)[rows]
            embeds = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx:]], dim=1)
            feats = encode_text_embeddings(model, embeds, eos)
            for j, i in enumerate(trained):
                out[i] = feats[j]
        plain = [i for i, u in enumerate(use_ctx) if not u]
        if plain:
            sub = tuple(names[i] for i in plain)
            ids, eos = self._ids("template", tokenizer, sub)
            feats = encode_text_embeddings(model, token_embedding(ids.to(device)), eos)
            for j, i in enumerate(plain):
                out[i] = feats[j]
        return torch.stack(out)
