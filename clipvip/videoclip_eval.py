"""Retrieval metrics of a VideoCLIP model (``clipvip.model.videoclip``) on per-second features.

Usage:
    from clipvip.videoclip_eval import evaluate_videoclip, is_videoclip_folder
    model = VideoCLIPModel.from_pretrained(folder); tok = AutoTokenizer.from_pretrained(folder)
    result = evaluate_videoclip(model, tok, FeatureIndex("R/features/msrvtt/index.json"),
                                read_annotations("test.jsonl"))
    result["t2v"]["R1"], result["v2t"]["MdR"], result["missing_clips"]

The official zero-shot protocol (fairseq MMPT, MSR-VTT 1k-A and YouCook2): each video is its first
``max_video_len`` = 32 seconds of features (``[CLS] v1..v32 [SEP]``), each text ``[CLS] text [SEP]``
(at most ``max_text_len`` tokens), score = dot product of the pooled outputs (no normalisation, no
logit scale). Metrics: ``clipvip.metrics.all_metrics`` (t2v / v2t R@1/5/10, MdR, MnR, with and without DSL),
the same dict shape as ``clipvip.retrieval.evaluate_model``; annotated clips without features are skipped and
counted in ``missing_clips`` / ``missing_ids``. ``annotations``: ``[{"clip_id", "texts": [...]}]``
(``read_annotations``) or records with ``"text"``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clipvip.metrics import all_metrics
from clipvip.stage import resolve_device


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


def subtitle_annotations(subtitles: dict) -> list[dict]:
    """Timed subtitles -> one query per clip (its lines joined), for validation during training."""
    return [{"clip_id": cid, "texts": [" ".join(line.text for line in subs.lines)]}
            for cid, subs in sorted(subtitles.items()) if subs.lines]


def _texts(record: dict) -> list[str]:
    if "texts" in record:
        return list(record["texts"])
    text = record.get("text")
    return [text] if isinstance(text, str) else list(text or [])


@torch.no_grad()
def evaluate_videoclip(model, tokenizer, feature_index, annotations: list[dict], batch_size: int = 64,
                       device: str = "cpu", max_video_len: int | None = None, max_text_len: int = 63,
                       dsl: bool = True, v2t_dsl: str = "transpose", progress: bool | None = None) -> dict:
    device = resolve_device(str(device))
    max_video_len = int(max_video_len or model.max_video_len)
    records, missing = [], []
    for record in annotations:
        (records if record["clip_id"] in feature_index else missing).append(record)
    texts, text_to_video = [], []
    for column, record in enumerate(records):
        rec_texts = _texts(record)
        texts += rec_texts
        text_to_video += [column] * len(rec_texts)
    was_training = model.training
    model.eval()
    try:
        videos = []
        for start in range(0, len(records), batch_size):
            chunk = [np.asarray(feature_index.features(r["clip_id"]), np.float32)[:max_video_len]
                     for r in records[start:start + batch_size]]
            width = max(len(c) for c in chunk)
            feats = torch.zeros(len(chunk), width, chunk[0].shape[1])
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, c in enumerate(chunk):
                feats[i, : len(c)] = torch.from_numpy(c)
                mask[i, : len(c)] = 1
            dtype = next(model.parameters()).dtype
            videos.append(model.encode_video(feats.to(device, dtype), mask.to(device)).float().cpu())
        encoded = []
        for start in range(0, len(texts), batch_size):
            tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
            ids, amask = model.text_ids(tokens, max_len=max_text_len)
            encoded.append(model.encode_text(ids.to(device), amask.to(device)).float().cpu())
    finally:
        model.train(was_training)
    if not records:
        raise ValueError("no annotated clip has features")
    sim = (torch.cat(encoded) @ torch.cat(videos).T).numpy()
    metrics = all_metrics(sim, text_to_video, v2t_dsl=v2t_dsl)
    if not dsl:
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_dsl")}
    return {**metrics, "num_queries": len(texts), "num_videos": len(records), "missing_clips": len(missing),
            "missing_ids": [r["clip_id"] for r in missing], "protocol": f"first {max_video_len} s of features"}


def evaluate_videoclip_folder(model_dir, features_index, annotations: list[dict], batch_size: int = 64,
                              device: str = "auto", dsl: bool = True, v2t_dsl: str = "transpose",
                              max_text_len: int = 63) -> dict:
    """Load a VideoCLIP folder (``is_videoclip_folder``) and a feature index, then ``evaluate_videoclip``
    (what ``clipvip evaluate`` runs for such a folder; ``--frames-index`` then names the feature index)."""
    from transformers import AutoTokenizer

    from clipvip.data.feature_store import FeatureIndex
    from clipvip.model.videoclip import VideoCLIPModel

    device = resolve_device(str(device))
    model = VideoCLIPModel.from_pretrained(model_dir).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return evaluate_videoclip(model, tokenizer, FeatureIndex(features_index), annotations, batch_size=batch_size,
                              device=device, dsl=dsl, v2t_dsl=v2t_dsl, max_text_len=max_text_len)
