"""Action recognition (Vita-CLIP): the class cross-entropy loss, top-k metrics, multi-view testing, and a
whole-dataset evaluation.

Loss ``recognition_ce`` (``clipvip.registry.LOSSES``; registered when this module is imported):
    logits = exp(logit_scale) · V · Kᵀ   (V: L2-normalised videos [B, P]; K: L2-normalised class texts [C, P])
    loss   = CE(logits, labels), mean over the batch (the official ``nn.CrossEntropyLoss``)
No gather across ranks: every rank holds every class, so each row's CE is complete locally and DDP/DeepSpeed
gradient averaging gives the full-batch mean.

Metrics (numpy, percentages like ``clipvip.metrics``): rank of the true class = 1 + #(other classes scoring
>= it), so ties count against the prediction (a constant score matrix scores 0 top-1 unless C = 1);
top-k = share of clips with rank <= k. Multi-view testing (official ``evaluate``): softmax over classes per
view, averaged over the views, then top-k on the averaged probabilities.

Usage:
    import clipvip.recognition                      # registers "recognition_ce"
    total, terms = LOSSES["recognition_ce"]({"V": video, "K": class_text}, model.logit_scale, labels=labels)
    topk_accuracy(scores, labels)                   # {"top1": 50.0, "top5": 100.0}
    probs = average_views(view_logits)              # [N, V, C] -> [N, C]
    result = evaluate_recognition(model, tokenizer, dataset, class_names, device="cpu")
    step = RecognitionStep(model, tokenizer, class_names); loss, terms = step(to_device(batch, device))
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clipvip.registry import LOSSES

TOPK = (1, 5)


class RecognitionCE:
    """``loss(features, logit_scale, labels=...)`` -> ``(total, {"CE(V,K)": total})``; labels may also be
    passed as ``features["label"]`` (int64 class indices into the rows of ``K``)."""

    name = "recognition_ce"
    keys = ["K", "V"]

    def __repr__(self):
        return "RecognitionCE('recognition_ce': CE(exp(s)·V·Kᵀ, label))"

    def __call__(self, features: dict[str, Tensor], logit_scale: Tensor, groups=None,
                 labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        missing = [k for k in self.keys if k not in features]
        if missing:
            raise KeyError(f"loss {self.name!r} needs features {self.keys}; missing {missing}")
        if labels is None:
            labels = features.get("label")
        if labels is None:
            raise KeyError("loss 'recognition_ce' needs labels (labels= or features['label'])")
        video, classes = features["V"], features["K"]
        logits = logit_scale.exp() * video @ classes.to(video.dtype).T
        loss = F.cross_entropy(logits, labels.to(logits.device).long())
        return loss, {"CE(V,K)": loss}


LOSSES.register(RecognitionCE.name, RecognitionCE())


class RecognitionStep(torch.nn.Module):
    """The module a trainer wraps (like ``clipvip.trainer.step.ContrastiveStep``): a batch in, ``(loss, terms)``
    out. Per step the class texts of **all** training classes go through the frozen text tower (gradients reach
    the context vectors only), as the official code does; the loss is ``recognition_ce`` in fp32.

    ``batch``: ``pixel_values`` (CLIP-normalised float ``[B, T, 3, H, W]``, i.e. after ``clipvip.data.to_device``)
    and ``label`` (int64 ``[B]``). ``terms`` = ``{"CE(V,K)", "acc1"}`` (0-dim tensors; acc1 in percent).
    """

    def __init__(self, model, tokenizer, class_names: list[str], loss_name: str = "recognition_ce"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.class_names = list(class_names)
        self.loss_fn = LOSSES.get(loss_name)

    def register_zero3_externals(self) -> None:
        """At ZeRO-3, gather the model's own (non-submodule) parameters, e.g. ``logit_scale``, on our forward."""
        import deepspeed

        for param in self.model.parameters(recurse=False):
            deepspeed.zero.register_external_parameter(self, param)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        from clipvip.model.vita import class_text_features

        m = self.model
        text = class_text_features(m, self.tokenizer, self.class_names, zero_shot=False)
        video = m.encode_video(batch["pixel_values"])
        labels = batch["label"]
        loss, terms = self.loss_fn({"V": video.float(), "K": text.float()}, m.logit_scale.float(), labels=labels)
        with torch.no_grad():
            pred = (video.float() @ text.float().T).argmax(dim=1)
            terms = {**terms, "acc1": 100.0 * (pred == labels.to(pred.device)).float().mean()}
        return loss, terms


# ------------------------------------------------------------------------------------------------ metrics
def true_class_ranks(scores, labels) -> np.ndarray:
    """1-based rank of each clip's true class; ties with the true class count as ranked above it."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"scores must be [N, C] and labels [N], got {s.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1] - 1}]")
    true = s[np.arange(len(y)), y][:, None]
    return (s >= true).sum(axis=1)  # the true class itself + every class scoring >= it


def topk_accuracy(scores, labels, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` (keys ``top{k}``) of an ``[N, C]`` score matrix."""
    ranks = true_class_ranks(scores, labels)
    if not len(ranks):
        raise ValueError("no clips to score")
    return {f"top{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}


def average_views(view_logits) -> np.ndarray:
    """``[N, V, C]`` logits -> ``[N, C]`` class probabilities: softmax per view, mean over the views."""
    x = np.asarray(view_logits, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected [N, V, C] logits, got shape {x.shape}")
    x = x - x.max(axis=2, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=2, keepdims=True)
    return p.mean(axis=1)


def multi_view_accuracy(view_logits, labels, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """Official multi-view testing: ``topk_accuracy(average_views(view_logits), labels)``."""
    return topk_accuracy(average_views(view_logits), labels, ks)


# ------------------------------------------------------------------------------------------------ evaluate
@torch.no_grad()
def recognition_view_logits(model, tokenizer, loader, class_names: list[str], device="cpu",
                            zero_shot: bool | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, V, C]`` and labels ``[N]`` over a loader of ``RecognitionDataset`` items
    (``pixel_values`` uint8 ``[B, V, T, 3, S, S]`` or ``[B, T, 3, S, S]``, ``label``)."""
    from tqdm.auto import tqdm

    from clipvip.data.transforms import normalize_pixels
    from clipvip.model.vita import class_text_features, recognition_logits

    dtype = next(model.parameters()).dtype
    classes = class_text_features(model, tokenizer, class_names, zero_shot=zero_shot)
    all_logits, all_labels = [], []
    for batch in tqdm(loader, desc="recognition", disable=progress if progress is None else not progress):
        pixels = batch["pixel_values"]
        if pixels.ndim == 5:
            pixels = pixels[:, None]
        bsz, views = pixels.shape[:2]
        x = normalize_pixels(pixels.flatten(0, 1), device, dtype=dtype)
        logits = recognition_logits(model, x, classes).float().view(bsz, views, -1)
        all_logits.append(logits.cpu().numpy())
        all_labels.append(np.asarray(batch["label"]))
    return np.concatenate(all_logits), np.concatenate(all_labels)


def evaluate_recognition(model, tokenizer, dataset, class_names: list[str], batch_size: int = 4,
                         device="cpu", num_workers: int = 0, zero_shot: bool | None = None,
                         progress=None) -> dict:
    """``{"top1", "top5", "num_clips", "num_views", "num_classes"}`` of ``model`` on ``dataset``
    (a ``clipvip.data.recognition.RecognitionDataset``; its ``num_views`` temporal views averaged)."""
    from torch.utils.data import DataLoader

    from clipvip.data.recognition import collate_recognition

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_recognition)
    logits, labels = recognition_view_logits(model, tokenizer, loader, class_names, device, zero_shot, progress)
    result = multi_view_accuracy(logits, labels)
    result.update(num_clips=int(len(labels)), num_views=int(logits.shape[1]), num_classes=len(class_names))
    return result
