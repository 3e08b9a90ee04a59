"""CLIP-ViP's contrastive losses (omnisource cross-modal learning).

Features are L2-normalised local rows keyed by source: ``V`` (video), ``S`` (subtitle / fine-tuning caption;
``T`` is accepted as an alias), ``F`` (middle frame as a 1-frame video), ``C`` (image caption of F).
With s = exp(logit_scale) and CE = cross-entropy averaged over rows, every loss is a **sum** of CE terms:

    L(A,B)   = CE(s·A·Bᵀ, diag) + CE(s·B·Aᵀ, diag)
    L(V,S,C) = CE(s·S·Vᵀ) + CE(s·C·Vᵀ)                                  (text -> video, 2 terms)
             + CE over [s·vᵢSᵢ, s·vᵢSⱼ (j≠i), s·vᵢCⱼ (j≠i)] target vᵢSᵢ  (video -> text, shared negatives)
             + CE over [s·vᵢCᵢ, s·vᵢSⱼ (j≠i), s·vᵢCⱼ (j≠i)] target vᵢCᵢ

Registry ``clipvip.registry.LOSSES``: ``vs`` = L(V,S); ``vs_fc`` = L(V,S)+L(F,C); ``vs_vc`` = L(V,S)+L(V,C);
``vs_vc_fc`` = all three; ``vsc_fc`` = L(V,S,C)+L(F,C) (the paper's best).

Usage:
    from clipvip.losses import LOSSES
    total, terms = LOSSES["vsc_fc"]({"V": v, "S": s, "F": f, "C": c}, model.logit_scale)
    total, terms = LOSSES["vs"]({"V": v, "S": caps}, model.logit_scale, groups={"S": caption_ids})
(dual softmax is an evaluation-time re-scoring: ``clipvip.metrics.dual_softmax``.)

Distributed: when ``torch.distributed`` is initialised with world size > 1, each feature tensor is all-gathered
(``gather_features``) and every rank computes the full-batch loss. The gather's backward sums, over ranks, the
gradient each rank's (identical) loss sends to a rank's rows — i.e. a rank's local-feature gradient is
``world_size ×`` its slice of the single-process full-batch gradient, while ``logit_scale`` receives the full
gradient on every rank. Under DDP/DeepSpeed gradient *averaging* both become exactly the single-process
full-batch gradient, so results do not depend on the number of ranks. (The official code returns only the
local slice, which after averaging scales encoder gradients by 1/world_size but not logit_scale's.)
Local batch sizes may differ between ranks.

False negatives: identical texts in one batch (e.g. repeated captions) can be declared positives by passing
``groups={"S": int ids}`` (equal id = same text); every term whose text side is that key then uses a
multi-positive (uniform soft) target, and in L(V,S,C) texts equal to the excluded positive are excluded too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from clipvip.registry import LOSSES

TEXT_ALIASES = {"T": "S"}  # fine-tuning may call the caption "T"; it plays the role of S
_EXCLUDED = -1.0e4  # finite "minus infinity": exp underflows to 0 and 0·logp stays 0 in soft-target CE


# ------------------------------------------------------------------------------------------------ gathering
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_padded(x: Tensor) -> tuple[Tensor, list[int]]:
    """All-gather rows of possibly different counts per rank; returns (concatenated rows, counts)."""
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), counts


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        gathered, counts = _all_gather_padded(x)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return gathered

    @staticmethod
    def backward(ctx, grad):
        # Every rank back-propagates its own copy of the loss; sum them so each rank's rows get the gradient
        # of the sum of all ranks' losses (reduce-scatter semantics, via all_reduce for gloo).
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.stop]


def gather_features(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks in rank order (gradients flow to the local rows); identity if 1 rank."""
    if not _distributed():
        return x
    if not x.requires_grad:
        return _all_gather_padded(x)[0]
    return _GatherWithGrad.apply(x)


# ------------------------------------------------------------------------------------------------ CE pieces
def _ce(logits: Tensor, positives: Tensor | None, offset: int = 0) -> Tensor:
    """Row-wise CE. ``positives`` None: row i's target is column ``offset + i``; else a bool matrix whose True
    entries share the target mass uniformly (multi-positive)."""
    if positives is None:
        return F.cross_entropy(logits, offset + torch.arange(logits.shape[0], device=logits.device))
    target = positives.to(logits.dtype)
    return F.cross_entropy(logits, target / target.sum(dim=1, keepdim=True))


def _same(ids: Tensor | None) -> Tensor | None:
    return None if ids is None else ids[:, None] == ids[None, :]


def pair_loss(a: Tensor, b: Tensor, scale: Tensor, same_b: Tensor | None = None) -> Tensor:
    """L(A,B) = CE(s·A·Bᵀ) + CE(s·B·Aᵀ); ``same_b`` marks equal B items as extra positives."""
    logits = scale * a @ b.T
    return _ce(logits, same_b) + _ce(logits.T, same_b)


def joint_loss(v: Tensor, s: Tensor, c: Tensor, scale: Tensor, same_s: Tensor | None = None,
               same_c: Tensor | None = None) -> Tensor:
    """L(V,S,C): 2 text→video CE terms + 2 video→text CE terms sharing the negatives {Sⱼ, Cⱼ : j≠i}."""
    logits_s, logits_c = scale * v @ s.T, scale * v @ c.T
    text_to_video = _ce(logits_s.T, same_s) + _ce(logits_c.T, same_c)
    # Video row i scores all subtitles + all captions, with the *other* positive (and texts identical to it)
    # excluded; the remaining Sⱼ, Cⱼ (j≠i) are the negatives both directions share.
    eye = torch.eye(v.shape[0], dtype=torch.bool, device=v.device)
    excl_s, excl_c = (eye if m is None else m for m in (same_s, same_c))
    with_s = torch.cat([logits_s, logits_c.masked_fill(excl_c, _EXCLUDED)], dim=1)
    with_c = torch.cat([logits_s.masked_fill(excl_s, _EXCLUDED), logits_c], dim=1)
    none = torch.zeros_like(eye)
    pos_s = None if same_s is None else torch.cat([same_s, none], dim=1)
    pos_c = None if same_c is None else torch.cat([none, same_c], dim=1)
    video_to_text = _ce(with_s, pos_s) + _ce(with_c, pos_c, offset=v.shape[0])
    return text_to_video + video_to_text


# ------------------------------------------------------------------------------------------------ registry
class ContrastiveLoss:
    """A sum of named terms; each term is (A, B) for L(A,B) or (V, S, C) for the joint loss."""

    def __init__(self, name: str, terms: list[tuple[str, ...]]):
        self.name, self.terms = name, terms
        self.keys = sorted({k for term in terms for k in term})

    def __repr__(self):
        return f"ContrastiveLoss({self.name!r}: {' + '.join(_term_name(t) for t in self.terms)})"

    def __call__(self, features: dict[str, Tensor], logit_scale: Tensor,
                 groups: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        features = _resolve_aliases(features)
        groups = _resolve_aliases(groups or {})
        missing = [k for k in self.keys if k not in features]
        if missing:
            raise KeyError(f"loss {self.name!r} needs features {self.keys}; missing {missing}")
        feats = {k: gather_features(features[k]) for k in self.keys}
        same = {k: _same(gather_features(groups[k])) if k in groups else None for k in self.keys}
        scale = logit_scale.exp()
        terms = {}
        for term in self.terms:
            if len(term) == 2:
                a, b = term
                terms[_term_name(term)] = pair_loss(feats[a], feats[b], scale, same[b])
            else:
                v, s, c = term
                terms[_term_name(term)] = joint_loss(feats[v], feats[s], feats[c], scale, same[s], same[c])
        return sum(terms.values()), terms


def _term_name(term: tuple[str, ...]) -> str:
    return f"L({','.join(term)})"


def _resolve_aliases(mapping: dict) -> dict:
    out = dict(mapping)
    for alias, key in TEXT_ALIASES.items():
        if alias in out and key not in out:
            out[key] = out.pop(alias)
    return out


for _name, _terms in {
    "vs": [("V", "S")],
    "vs_fc": [("V", "S"), ("F", "C")],
    "vs_vc": [("V", "S"), ("V", "C")],
    "vs_vc_fc": [("V", "S"), ("V", "C"), ("F", "C")],
    "vsc_fc": [("V", "S", "C"), ("F", "C")],
}.items():
    LOSSES.register(_name, ContrastiveLoss(_name, _terms))
import clipvip.videoclip_loss  # noqa: E402,F401
