"""Retrieval metrics of a VideoCLIP model (``clipvip.model.videoclip``) on per-second features.

Usage:
    from clipvip.videoclip_eval import evaluate_videoclip, is_videoclip_folder
    model = VideoCLIPModel.from_pretrained(folder); tok = AutoTokenizer.from_pretrained(folder)
    result = evaluate_videoclip(model, tok, FeatureIndex("R/features/msrvtt/index.json"),
                                read_annotations("test.jsonl"))
    result["t2v"]["R1"], result["v2t"]["MdR"], result["missing_clips"], result["order_acc"] (order_acc=True)

The official zero-shot protocol (fairseq MMPT, MSR-VTT 1k-A and YouCook2): each video is its first
``max_video_len`` = 32 seconds of features (``[CLS] v1..v32 [SEP]``), each text ``[CLS] text [SEP]``
(at most ``max_text_len`` tokens incl. [CLS]/[SEP]: the official 63 = 61 span tokens + 2 by default; capped by
the text BERT's ``max_position_embeddings``; the value used is ``max_text_len`` in the result), score = dot
product of the pooled outputs (no normalisation, no logit scale). Metrics: ``clipvip.metrics.all_metrics``
(t2v / v2t R@1/5/10, MdR, MnR, with and without DSL), the same dict shape as
``clipvip.retrieval.evaluate_model``; annotated clips without features are skipped and counted in
``missing_clips`` / ``missing_ids`` (``clipvip evaluate`` applies its ``max_missing_fraction`` policy to them
first, through ``FeatureMissingView``). With ``order_acc`` every video is also encoded with its (first
``max_video_len``) per-second features in reverse order, and ``order_acc`` = ``clipvip.metrics.order_accuracy``
of each caption's score with its true video against that reversed video (ties -- within 1e-6 of the scores'
scale, since these scores are unnormalised -- count 1/2: 50 for an order-blind video tower).
``annotations``: ``[{"clip_id", "texts": [...]}]`` (``read_annotations``) or records with ``"text"``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clipvip.metrics import all_metrics, order_accuracy, t2v_metrics, v2t_metrics
from clipvip.stage import UserError, resolve_device

DEFAULT_MAX_TEXT_LEN = 63  # official: 96 - 32 - 3 = 61 span tokens + [CLS] [SEP]
ORDER_TIE_TOLERANCE = 1e-6  # relative to the largest |score| (at least 1): scores are unnormalised dot products


def is_videoclip_folder(path) -> bool:
    """True for a folder written by ``VideoCLIPModel.save_pretrained`` (its config says model_type videoclip)."""
    from clipvip.model.videoclip import CONFIG_NAME

    config = Path(str(path)) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "videoclip"
    except (OSError, ValueError):
        return False


def subtitle_annotations(subtitles: dict, text_mode: str = "join") -> list[dict]:
    """Subtitles -> queries, for validation during training: one per clip (its lines joined); with
    ``text_mode="sample"`` an untimed record's captions (``Subtitles.captions``) are one query each, as
    ``read_annotations(..., "sample")`` gives them."""
    out = []
    for cid, subs in sorted(subtitles.items()):
        if not subs.lines:
            continue
        if text_mode == "sample" and not subs.timed and len(subs.captions) > 1:
            out.append({"clip_id": cid, "texts": list(subs.captions)})
        else:
            out.append({"clip_id": cid, "texts": [" ".join(line.text for line in subs.lines)]})
    return out


class FeatureMissingView:
    """A ``FeatureIndex`` as ``clipvip.evaluate.check_missing`` reads a frame index: ``in``, ``failures()`` (the
    shards' failure manifests merged: ``clip_id``, ``reason``, ...) and ``.path`` / ``.index["failures"]`` naming
    where those manifests are (one shard: its file; several: ``<folder>/*.failures.tsv``)."""

    def __init__(self, feature_index, index_path):
        self.features = feature_index
        self.path = str(index_path)
        manifests = self.manifests()
        if len(manifests) == 1:
            where = str(manifests[0])
        else:
            folders = sorted({str(p.parent) for p in manifests}) or [str(Path(self.path).parent)]
            where = ", ".join(f"{f}/*.failures.tsv" for f in folders)
        self.index = {"failures": where}

    def __contains__(self, clip_id) -> bool:
        return clip_id in self.features

    def manifests(self) -> list[Path]:
        from clipvip.data.manifest import default_failures_path

        out = []
        for store in getattr(self.features, "stores", []):
            try:
                rel = store.settings.get("failures_manifest")
            except (OSError, KeyError, ValueError):
                rel = None
            out.append(Path(store.path).parent / rel if rel else default_failures_path(store.path))
        return out

    def failures(self):
        import pandas as pd

        from clipvip.data.manifest import read_failures

        tables = [read_failures(p) for p in self.manifests() if Path(p).is_file()]
        if not tables:
            raise FileNotFoundError("no feature failure manifest")
        return pd.concat(tables, ignore_index=True)


def open_feature_index(path):
    """``FeatureIndex(path)``, or a ``UserError`` saying the path is not one (e.g. a frame index)."""
    from clipvip.data.feature_store import FeatureIndex

    try:
        return FeatureIndex(path)
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        raise UserError(f"--frames-index {path}: a VideoCLIP model reads a feature index (`clipvip features`), "
                        f"and this is not one ({exc})") from None


def text_batch(model, tokenizer, texts: list[str], max_text_len: int):
    """``[CLS] text [SEP]`` ids and mask of ``texts``, each at most ``max_text_len`` tokens (special ones incl.)."""
    tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return model.text_ids(tokens, max_len=max_text_len)


def effective_max_text_len(model, max_text_len: int | None) -> int:
    """``max_text_len`` (default 63) capped by the text BERT's positions; at least 3 ([CLS] token [SEP])."""
    requested = DEFAULT_MAX_TEXT_LEN if max_text_len is None else int(max_text_len)
    if requested < 3:
        raise ValueError(f"max_text_len {requested} leaves no text token ([CLS] and [SEP] take 2)")
    limit = getattr(getattr(model, "bert_config", None), "max_position_embeddings", None)
    return min(requested, int(limit)) if limit else requested


def _video_batch(chunks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(c) for c in chunks)
    feats = torch.zeros(len(chunks), width, chunks[0].shape[1])
    mask = torch.zeros(len(chunks), width, dtype=torch.long)
    for i, c in enumerate(chunks):
        feats[i, : len(c)] = torch.from_numpy(np.ascontiguousarray(c))
        mask[i, : len(c)] = 1
    return feats, mask


def _texts(record: dict) -> list[str]:
    if "texts" in record:
        return list(record["texts"])
    text = record.get("text")
    return [text] if isinstance(text, str) else list(text or [])


@torch.no_grad()
def evaluate_videoclip(model, tokenizer, feature_index, annotations: list[dict], batch_size: int = 64,
                       device: str = "cpu", max_video_len: int | None = None,
                       max_text_len: int | None = DEFAULT_MAX_TEXT_LEN, dsl: bool = True, v2t_dsl: str = "transpose",
                       ties: str = "expected", progress: bool | None = None, order_acc: bool = False) -> dict:
    """Retrieval metrics (module docstring); ``ValueError`` when no annotated clip has features."""
    device = resolve_device(str(device))
    max_video_len = int(max_video_len or model.max_video_len)
    max_text_len = effective_max_text_len(model, max_text_len)
    records, missing = [], []
    for record in annotations:
        (records if record["clip_id"] in feature_index else missing).append(record)
    if not records:
        raise ValueError(f"no annotated clip has features ({len(missing)} annotated, e.g. "
                         f"{', '.join(str(r['clip_id']) for r in missing[:5])})")
    texts, text_to_video = [], []
    for column, record in enumerate(records):
        rec_texts = _texts(record)
        texts += rec_texts
        text_to_video += [column] * len(rec_texts)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    try:
        videos, backwards = [], []
        for start in range(0, len(records), batch_size):
            chunk = [np.asarray(feature_index.features(r["clip_id"]), np.float32)[:max_video_len]
                     for r in records[start:start + batch_size]]
            feats, mask = _video_batch(chunk)
            videos.append(model.encode_video(feats.to(device, dtype), mask.to(device)).float().cpu())
            if order_acc:  # each clip's own (truncated) rows reversed, before padding
                feats, mask = _video_batch([c[::-1] for c in chunk])
                backwards.append(model.encode_video(feats.to(device, dtype), mask.to(device)).float().cpu())
        encoded = []
        for start in range(0, len(texts), batch_size):
            ids, amask = text_batch(model, tokenizer, texts[start:start + batch_size], max_text_len)
            encoded.append(model.encode_text(ids.to(device), amask.to(device)).float().cpu())
    finally:
        model.train(was_training)
    text_feats, video_feats = torch.cat(encoded).double(), torch.cat(videos).double()
    sim = (text_feats @ video_feats.T).numpy()
    if dsl:
        metrics = all_metrics(sim, text_to_video, v2t_dsl=v2t_dsl, ties=ties)
    else:
        metrics = {"t2v": t2v_metrics(sim, text_to_video, ties), "v2t": v2t_metrics(sim, text_to_video, ties)}
    if order_acc:
        gt = np.asarray(text_to_video, dtype=np.int64)
        true_scores = sim[np.arange(len(texts)), gt]
        reversed_scores = (text_feats * torch.cat(backwards).double()[gt]).sum(-1).numpy()
        scale = max(1.0, float(np.abs(true_scores).max()), float(np.abs(reversed_scores).max()))
        metrics["order_acc"] = order_accuracy(true_scores, reversed_scores, tol=ORDER_TIE_TOLERANCE * scale)
    return {**metrics, "num_queries": len(texts), "num_videos": len(records), "missing_clips": len(missing),
            "missing_ids": [str(r["clip_id"]) for r in missing], "max_text_len": max_text_len,
            "protocol": f"first {max_video_len} s of features"}


def evaluate_videoclip_folder(model_dir, features_index, annotations: list[dict], batch_size: int = 64,
                              device: str = "auto", dsl: bool = True, v2t_dsl: str = "transpose",
                              ties: str = "expected", max_text_len: int | None = DEFAULT_MAX_TEXT_LEN, order_acc: bool = False) -> dict:
    """Load a VideoCLIP folder (``is_videoclip_folder``) and a feature index (a path, or an open
    ``FeatureIndex``), then ``evaluate_videoclip`` (what ``clipvip evaluate`` runs for such a folder;
    ``--frames-index`` then names the feature index)."""
    from transformers import AutoTokenizer

    from clipvip.model.videoclip import VideoCLIPModel

    device = resolve_device(str(device))
    features = features_index if hasattr(features_index, "features") else open_feature_index(features_index)
    model = VideoCLIPModel.from_pretrained(model_dir).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return evaluate_videoclip(model, tokenizer, features, annotations, batch_size=batch_size, device=device,
                              dsl=dsl, v2t_dsl=v2t_dsl, ties=ties, max_text_len=max_text_len,
                              order_acc=order_acc)
