"""``ContrastiveStep``: the module DeepSpeed wraps -- a batch in, ``(loss, terms)`` out.

Usage:
    step = ContrastiveStep(model, "vsc_fc")
    loss, terms = step(batch)     # batch from TokenizingCollator over Finetune/PretrainDataset items

Only the features the loss needs are encoded: V = ``pixel_values`` (jittered video), S = ``input_ids``
(subtitle, or the caption when fine-tuning), F = ``frame_pixel_values`` (middle frame as a 1-frame video, the
same tower), C = ``caption_input_ids`` (auxiliary caption). The model's own ``forward`` is not used because
the loss needs ``logit_scale`` too; at ZeRO-3 that parameter belongs to the model itself, whose forward
hook never fires here, so it is registered as an external parameter of this wrapper (gathered on our
forward). Identical texts within the (global) batch count as positives (``dedup_texts``). Under bf16 the
towers run in bf16 and the features are cast to fp32 before the loss (logits, softmax and CE in fp32).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

FEATURES = ("V", "S", "F", "C")
TEXT_FIELDS = {"S": "text", "C": "caption"}  # raw strings the collator keeps next to the token ids


def text_ids(texts: list[str]) -> torch.Tensor:
    """Stable int64 id per string (same on every rank, unlike ``hash``): equal texts -> equal ids."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=7).digest(), "little")
                         for t in texts], dtype=torch.int64)


class ContrastiveStep(nn.Module):
    def __init__(self, model: nn.Module, loss_name: str, dedup_texts: bool = True):
        super().__init__()
        from clipvip.registry import LOSSES

        self.model = model
        self.loss_name = loss_name
        self.loss_fn = LOSSES.get(loss_name)  # an unknown name is a UserError naming the registered ones
        self.needs = list(self.loss_fn.keys)
        self.dedup_texts = dedup_texts

    def register_zero3_externals(self) -> None:
        """At ZeRO-3, gather the model's own (non-submodule) parameters, e.g. ``logit_scale``, on our forward."""
        import deepspeed

        for param in self.model.parameters(recurse=False):
            deepspeed.zero.register_external_parameter(self, param)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        m = self.model
        feats: dict[str, torch.Tensor] = {}
        if "V" in self.needs:
            feats["V"] = m.encode_video(batch["pixel_values"])
        if "S" in self.needs:
            feats["S"] = m.encode_text(batch["input_ids"], batch["attention_mask"])
        if "F" in self.needs:
            feats["F"] = m.encode_video(batch["frame_pixel_values"])
        if "C" in self.needs:
            feats["C"] = m.encode_text(batch["caption_input_ids"], batch["caption_attention_mask"])
        groups = None
        if self.dedup_texts:
            # Identical texts in a batch (repeated captions) are positives, not false negatives.
            groups = {k: text_ids(batch[f]).to(feats[k].device) for k, f in TEXT_FIELDS.items()
                      if k in feats and f in batch}
        # The loss (logits s·A·Bᵀ, softmax, CE) in fp32 whatever the model's dtype: clipvip.losses computes in
        # its inputs' dtype, and bf16 logits (8 mantissa bits) at logit scale up to 100 lose the ranking.
        feats = {k: v.float() for k, v in feats.items()}
        return self.loss_fn(feats, m.logit_scale.float(), groups=groups)
