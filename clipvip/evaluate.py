"""Text<->video retrieval evaluation: ``evaluate_model`` (also used by the trainer) and ``clipvip evaluate``.

Usage:
    clipvip evaluate --model R/runs/finetune/vsc_fc/demo_msrvtt/model --frames-index R/frames/demo_msrvtt/index.json \
        --annotations R/demo/annotations/demo_msrvtt_test.jsonl --out R/eval/vip_vsc_fc/demo_msrvtt/test.json \
        --row '{"method": "CLIP-ViP", "stage": "finetuned", "encoder": "vip", "loss": "vsc_fc",
                "dataset": "demo_msrvtt", "split": "test"}' \
        --options '{"num_frames": 12, "max_text_len": 50, "text_mode": "sample", "batch_size": 16}'

    from clipvip.evaluate import evaluate_model
    result = evaluate_model(model, tokenizer, FrameIndex(index_json), read_annotations(path), num_frames=12,
                            max_text_len=50)
    result["t2v"]["R1"], result["v2t_dsl"]["MdR"], result["missing_clips"]

Every annotated clip's uniform frames (``FinetuneDataset`` in eval mode) and every text are encoded
(L2-normalised), ``sim = texts x videos``, and ``clipvip.metrics.all_metrics`` gives t2v / v2t with and
without DSL (definitions, incl. pessimistic ties and multi-caption v2t, in ``clipvip.metrics``). Every
text of a clip is a query (``text_mode: sample``); paragraph sets use ``text_mode: join``. Clips missing
from the frame store are skipped and counted in ``missing_clips``.

Options (``EVAL_DEFAULTS``): ``num_frames`` 12, ``max_text_len`` 50, ``text_mode`` "sample", ``batch_size``
16, ``device`` "auto" (cuda when available), ``dsl`` true, ``v2t_dsl`` "transpose" (or "clipvip", see
``clipvip.metrics``), ``num_workers`` 0 (frame-loading processes), ``image_size`` null (= the model's),
``video_encoder`` null (keep the folder's; e.g. "meanpool" turns a plain CLIP folder into the CLIP4Clip-style
zero-shot baseline) -- any ``clipvip.model.VIDEO_FIELDS`` key is passed to ``from_pretrained`` likewise.

Output JSON (written atomically): the ``--row`` fields, ``row_keys`` (their names, for ``clipvip tables``),
``t2v``, ``v2t``, ``t2v_dsl``, ``v2t_dsl`` (each R1, R5, R10, MdR, MnR), ``num_queries``, ``num_videos``,
``missing_clips``, ``model``, ``options`` and ``seconds``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from clipvip.cli import parse_options
from clipvip.metrics import all_metrics, t2v_metrics, v2t_metrics

EVAL_DEFAULTS = {"num_frames": 12, "max_text_len": 50, "text_mode": "sample", "batch_size": 16, "device": "auto",
                 "dsl": True, "v2t_dsl": "transpose", "num_workers": 0, "image_size": None, "video_encoder": None}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _hide(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows the bar only on a terminal."""
    return None if progress is None else not progress


def _collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["pixel_values"] for item in items])


@torch.no_grad()
def encode_videos(model, dataset, batch_size: int, device: str, num_workers: int = 0, progress=None) -> torch.Tensor:
    """``[num_clips, P]`` float32 CPU features of every clip of an eval-mode ``FinetuneDataset``."""
    from clipvip.data import normalize_pixels  # items carry uint8 pixels: normalised once, on the device

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    feats = [model.encode_video(normalize_pixels(px, device)).float().cpu()
             for px in tqdm(loader, desc="eval videos", unit="batch", disable=_hide(progress))]
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], max_text_len: int, batch_size: int, device: str,
                 progress=None) -> torch.Tensor:
    """``[num_texts, P]`` float32 CPU features, tokenised like training (``clipvip.data.tokenize``)."""
    from clipvip.data import tokenize

    feats = []
    for start in tqdm(range(0, len(texts), batch_size), desc="eval texts", unit="batch",
                      disable=_hide(progress)):
        enc = tokenize(tokenizer, texts[start:start + batch_size], max_text_len)
        feats.append(model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu())
    return torch.cat(feats)


def evaluate_model(model, tokenizer, frame_index, annotations: list[dict], num_frames: int, max_text_len: int,
                   batch_size: int = 16, device: str = "cpu", image_size: int | None = None, dsl: bool = True,
                   v2t_dsl: str = "transpose", num_workers: int = 0, progress: bool | None = None) -> dict:
    """Retrieval metrics of ``model`` on ``annotations`` (``[{"clip_id", "texts": [...]}]``).

    Returns ``{"t2v", "v2t", ["t2v_dsl", "v2t_dsl"], "num_queries", "num_videos", "missing_clips"}``.
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
        videos = encode_videos(model, dataset, batch_size, device, num_workers, progress)
        text_feats = encode_texts(model, tokenizer, texts, max_text_len, batch_size, device, progress)
    finally:
        model.train(was_training)
    videos = torch.nn.functional.normalize(videos.double(), dim=-1).numpy()
    text_feats = torch.nn.functional.normalize(text_feats.double(), dim=-1).numpy()
    sim = text_feats @ videos.T
    if dsl:
        result = all_metrics(sim, text_to_video, v2t_dsl=v2t_dsl)
    else:
        result = {"t2v": t2v_metrics(sim, text_to_video), "v2t": v2t_metrics(sim, text_to_video)}
    result.update(num_queries=len(texts), num_videos=int(sim.shape[1]), missing_clips=len(dataset.missing))
    return result


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(model_dir: str, frames_index: str, annotations: str, out: str, row: dict | None = None,
        options: dict | None = None) -> dict:
    """The ``clipvip evaluate`` stage as a function; returns what it writes to ``out``."""
    from clipvip.data import load_tokenizer, read_annotations
    from clipvip.frames import FrameIndex
    from clipvip.model import VIDEO_FIELDS, CLIPViPModel

    opts = {**EVAL_DEFAULTS, **(options or {})}
    started = time.perf_counter()
    overrides = {k: opts[k] for k in VIDEO_FIELDS if opts.get(k) is not None}
    device = resolve_device(opts["device"])
    model = CLIPViPModel.from_pretrained(model_dir, **overrides).to(device)
    result = evaluate_model(
        model, load_tokenizer(model_dir), FrameIndex(frames_index), read_annotations(annotations, opts["text_mode"]),
        num_frames=int(opts["num_frames"]), max_text_len=int(opts["max_text_len"]),
        batch_size=int(opts["batch_size"]), device=device, image_size=opts["image_size"], dsl=bool(opts["dsl"]),
        v2t_dsl=opts["v2t_dsl"], num_workers=int(opts["num_workers"]),
    )
    row = dict(row or {})
    data = {**row, "row_keys": list(row), **result, "model": str(model_dir), "options": opts,
            "seconds": round(time.perf_counter() - started, 3)}
    write_json_atomic(out, data)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (ours or a plain HF CLIP) with its tokenizer")
    parser.add_argument("--frames-index", required=True, help="FrameIndex JSON of the dataset")
    parser.add_argument("--annotations", required=True, help="annotation JSONL of the split")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--row", default=None, help="JSON object: table row identity (method, stage, dataset, ...)")
    parser.add_argument("--options", default=None, help="JSON object of EVAL_DEFAULTS keys")
    args = parser.parse_args(argv)
    data = run(args.model, args.frames_index, args.annotations, args.out, parse_options(args.row),
               parse_options(args.options))
    t2v = data["t2v"]
    print(f"evaluate: {data['num_queries']} queries x {data['num_videos']} videos "
          f"({data['missing_clips']} missing): t2v R@1 {t2v['R1']:.1f} R@5 {t2v['R5']:.1f} "
          f"R@10 {t2v['R10']:.1f} MdR {t2v['MdR']:.1f} MnR {t2v['MnR']:.1f}; wrote {args.out}")
    return 0
