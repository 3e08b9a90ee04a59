"""Retrieval scoring of a model on a dataset split: encode every clip and text, then the metrics.

Usage (the ``clipvip evaluate`` stage and the trainer's validation both call this):
    from clipvip.retrieval import evaluate_model
    result = evaluate_model(model, tokenizer, FrameIndex(index_json), read_annotations(path), num_frames=12,
                            max_text_len=50)
    result["t2v"]["R1"], result["v2t_dsl"]["MdR"], result["missing_clips"]

Every annotated clip's uniform frames (``FinetuneDataset`` in eval mode) and every text are encoded
(L2-normalised), ``sim = texts x videos``, and ``clipvip.metrics.all_metrics`` gives t2v / v2t with and
without DSL (definitions, incl. the tie rules ``ties`` and multi-caption v2t, in ``clipvip.metrics``). Every
text of a clip is a query (``text_mode: sample``); paragraph sets use ``text_mode: join``. Clips missing
from the frame store are skipped and counted in ``missing_clips`` (their ids in ``missing_ids``).

With ``order_acc`` (``clipvip evaluate`` turns it on by default; the trainer's validation does not) every clip's uniform frames are also encoded in reverse order (the same loaded
frames, one more video pass) and ``order_acc`` = ``clipvip.metrics.order_accuracy`` of each text's score with
its true video against the same video reversed: 50 for an order-blind encoder (e.g. MeanPool), 100 when
every caption prefers its video's real frame order.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from clipvip.metrics import all_metrics, order_accuracy, t2v_metrics, v2t_metrics
from clipvip.stage import hide_progress, resolve_device


def _collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["pixel_values"] for item in items])


@torch.no_grad()
def encode_videos(model, dataset, batch_size: int, device: str, num_workers: int = 0, progress=None,
                  reversed_too: bool = False):
    """``[num_clips, P]`` float32 CPU features of every clip of an eval-mode ``FinetuneDataset``; with
    ``reversed_too`` a pair ``(features, features of the same frames in reverse order)``."""
    from clipvip.data import normalize_pixels  # items carry uint8 pixels: normalised once, on the device

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    feats, backwards = [], []
    for px in tqdm(loader, desc="eval videos", unit="batch", disable=hide_progress(progress)):
        pixels = normalize_pixels(px, device)  # [B, T, 3, H, W]
        feats.append(model.encode_video(pixels).float().cpu())
        if reversed_too:
            backwards.append(model.encode_video(pixels.flip(1)).float().cpu())
    return (torch.cat(feats), torch.cat(backwards)) if reversed_too else torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], max_text_len: int, batch_size: int, device: str,
                 progress=None) -> torch.Tensor:
    """``[num_texts, P]`` float32 CPU features, tokenised like training (``clipvip.data.tokenize``)."""
    from clipvip.data import tokenize

    feats = []
    for start in tqdm(range(0, len(texts), batch_size), desc="eval texts", unit="batch",
                      disable=hide_progress(progress)):
        enc = tokenize(tokenizer, texts[start:start + batch_size], max_text_len)
        feats.append(model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu())
    return torch.cat(feats)


def evaluate_model(model, tokenizer, frame_index, annotations: list[dict], num_frames: int, max_text_len: int,
                   batch_size: int = 16, device: str = "cpu", image_size: int | None = None, dsl: bool = True,
                   v2t_dsl: str = "transpose", num_workers: int = 0, progress: bool | None = None,
                   order_acc: bool = False, ties: str = "expected") -> dict:
    """Retrieval metrics of ``model`` on ``annotations`` (``[{"clip_id", "texts": [...]}]``).

    Returns ``{"t2v", "v2t", ["t2v_dsl", "v2t_dsl"], ["order_acc"], "num_queries", "num_videos", "missing_clips",
    "missing_ids"}`` (``missing_ids``: the annotated clips without frames, in annotation order; the metrics
    are over the others only -- callers that report numbers must say so, see ``clipvip evaluate``).
    The model's train/eval mode is restored afterwards; it must already be on ``device``.
    """
    from clipvip.data import FinetuneDataset

    device = resolve_device(device)
    if image_size is None:
        image_size = int(model.config.vision_config.image_size)
    dataset = FinetuneDataset(frame_index, annotations, num_frames=num_frames, image_size=image_size, train=False)
    texts, text_to_video = [], []
    for column, record in enumerate(dataset.records):
        texts += record["texts"]
        text_to_video += [column] * len(record["texts"])

    was_training = model.training
    model.eval()
    try:
        encoded = encode_videos(model, dataset, batch_size, device, num_workers, progress, reversed_too=order_acc)
        videos, backwards = encoded if order_acc else (encoded, None)
        text_feats = encode_texts(model, tokenizer, texts, max_text_len, batch_size, device, progress)
    finally:
        model.train(was_training)
    videos = torch.nn.functional.normalize(videos.double(), dim=-1).numpy()
    text_feats = torch.nn.functional.normalize(text_feats.double(), dim=-1).numpy()
    sim = text_feats @ videos.T
    if dsl:
        result = all_metrics(sim, text_to_video, v2t_dsl=v2t_dsl, ties=ties)
    else:
        result = {"t2v": t2v_metrics(sim, text_to_video, ties), "v2t": v2t_metrics(sim, text_to_video, ties)}
    if order_acc:
        backwards = torch.nn.functional.normalize(backwards.double(), dim=-1).numpy()
        rows = torch.arange(len(texts)).numpy()
        true_scores = sim[rows, text_to_video]
        reversed_scores = (text_feats * backwards[text_to_video]).sum(-1)
        result["order_acc"] = order_accuracy(true_scores, reversed_scores)
    result.update(num_queries=len(texts), num_videos=int(sim.shape[1]), missing_clips=len(dataset.missing),
                  missing_ids=[str(c) for c in dataset.missing])
    return result
