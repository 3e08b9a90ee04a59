"""``clipvip gallery``: top-k retrieved test clips of several models, side by side, as one HTML page.

Usage:
    clipvip gallery --frames-index R/frames/demo_msrvtt/index.json \
        --annotations R/demo/annotations/demo_msrvtt_test.jsonl \
        --model "zero-shot (post-pretrained vip-vsc_fc)=R/runs/pretrain/vip-vsc_fc/model" \
        --model "fine-tuned vip-vsc_fc=R/runs/finetune/vip-vsc_fc/demo_msrvtt/model" \
        [--encoder "zero-shot CLIP=meanpool"] [--metrics "fine-tuned vip-vsc_fc=R/eval/.../test.json"] \
        --out R/gallery/demo_msrvtt.html --options '{"num_queries": 5, "top_k": 5, "num_frames": 8}'

For ``num_queries`` test captions (drawn with ``seed`` from every caption of every clip present in the frame
store) each model (``--model LABEL=DIR``, in the order given; ``--encoder LABEL=NAME`` overrides its video
encoder, e.g. meanpool for a plain CLIP) ranks every test clip; the page shows the top ``top_k`` as thumbnail
strips (``thumb_frames`` uniform frames per clip from the frame store) with the ground truth framed green, and
the ground truth's rank when it is not among them. Encoding is ``clipvip.retrieval`` (uniform frames, as
``clipvip evaluate``). The page is self-contained (images are base64 data URIs); see
``clipvip.analysis.thumbnails``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np

from clipvip.stage import StageOptions, UserError, option, parse_options, resolve_device, stage_main, write_text_atomic


@dataclass
class GalleryOptions(StageOptions):
    STAGE = "gallery"
    num_queries: int = option(5, "test captions shown (drawn with seed)", minimum=1)
    top_k: int = option(5, "retrieved clips shown per model", minimum=1)
    seed: int = option(0, "seed of the caption draw")
    thumb_frames: int = option(4, "frames per thumbnail strip (uniform over the clip)", minimum=1, maximum=32)
    thumb_height: int = option(64, "thumbnail height in pixels", minimum=16, maximum=512)
    num_frames: int = option(12, "T uniform frames per clip for encoding", minimum=1)
    max_text_len: int = option(50, "text tokens incl. start/end", minimum=8, maximum=77)
    text_mode: str = option("sample", "sample: every caption is a query | join: paragraph sentences joined",
                            choices=("sample", "join"))
    batch_size: int = option(16, "clips (and texts) per encoding batch", minimum=1)
    device: str = option("auto", "auto (cuda when available) | cpu | cuda[:N]")
    image_size: int | None = option(None, "crop size; None = the model's vision_config.image_size", minimum=16)


def encode_model(model_dir: str, frame_index, annotations, opts: GalleryOptions, device: str,
                 video_encoder: str | None = None):
    """(video features [V,P] of the present clips, text features [Q,P] of all their texts, records)."""
    from clipvip.data import FinetuneDataset, load_tokenizer
    from clipvip.model import CLIPViPModel
    from clipvip.retrieval import encode_videos

    overrides = {"video_encoder": video_encoder} if video_encoder else {}
    model = CLIPViPModel.from_pretrained(model_dir, **overrides).to(device).eval()
    image_size = opts.image_size or int(model.config.vision_config.image_size)
    dataset = FinetuneDataset(frame_index, annotations, num_frames=opts.num_frames, image_size=image_size,
                              train=False)
    videos = encode_videos(model, dataset, opts.batch_size, device, progress=False).numpy()
    return model, load_tokenizer(model_dir), videos, dataset.records


def draw_queries(records, num_queries: int, seed: int) -> list[tuple[int, str]]:
    """``(clip column, caption)`` pairs drawn without replacement from every caption of every present clip."""
    pairs = [(column, text) for column in range(len(records)) for text in records[column]["texts"]]
    if not pairs:
        raise UserError("no test caption of a clip present in the frame store")
    order = np.random.default_rng(seed).permutation(len(pairs))[:num_queries]
    return [pairs[i] for i in sorted(order)]


def build_gallery(models: list[tuple[str, str]], frame_index, annotations, opts: GalleryOptions,
                  encoders: dict[str, str] | None = None, metrics: dict[str, dict] | None = None) -> tuple[str, dict]:
    """(HTML page, summary dict) for ``models`` = [(label, model dir)] on ``annotations`` (a test split)."""
    from clipvip.analysis.thumbnails import render_page, strip_data_uri
    from clipvip.retrieval import encode_texts

    device = resolve_device(opts.device)
    encoders, metrics = encoders or {}, metrics or {}
    columns, queries, records, clip_ids = [], None, None, None
    for label, model_dir in models:
        model, tokenizer, videos, recs = encode_model(model_dir, frame_index, annotations, opts, device,
                                                      encoders.get(label))
        ids = [recs[i]["clip_id"] for i in range(len(recs))]
        if queries is None:
            records, clip_ids = recs, ids
            queries = draw_queries(records, opts.num_queries, opts.seed)
        elif ids != clip_ids:
            raise UserError(f"model {label!r} sees other clips than the first model")  # same store: never
        texts = encode_texts(model, tokenizer, [q for _, q in queries], opts.max_text_len, opts.batch_size,
                             device, progress=False).numpy()
        norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        sim = norm(texts.astype(np.float64)) @ norm(videos.astype(np.float64)).T
        order = np.argsort(-sim, axis=1, kind="stable")
        columns.append((label, sim, order))
    thumbs: dict[str, str] = {}

    def thumb(clip_id: str) -> str:
        if clip_id not in thumbs:
            thumbs[clip_id] = strip_data_uri(frame_index.uniform(clip_id, opts.thumb_frames), opts.thumb_height)
        return thumbs[clip_id]

    sections, summary = [], {"queries": [], "models": [label for label, _ in models]}
    for q, (gt_column, text) in enumerate(queries):
        gt = clip_ids[gt_column]
        section = {"query": text, "note": f"ground truth: {gt}", "columns": []}
        entry = {"query": text, "ground_truth": gt, "models": {}}
        for label, sim, order in columns:
            top = [int(c) for c in order[q, :opts.top_k]]
            rank = int(np.nonzero(order[q] == gt_column)[0][0]) + 1
            note = f"ground truth rank {rank} of {len(clip_ids)}"
            if label in metrics and "t2v" in metrics[label]:
                note += f" · split t2v R@1 {metrics[label]['t2v']['R1']:.1f}"
            hits = [{"clip_id": clip_ids[c], "score": float(sim[q, c]), "image": thumb(clip_ids[c]),
                     "gt": c == gt_column} for c in top]
            section["columns"].append({"label": label, "note": note, "hits": hits})
            entry["models"][label] = {"top": [clip_ids[c] for c in top], "gt_rank": rank}
        sections.append(section)
        summary["queries"].append(entry)
    intro = (f"{len(queries)} test captions (seed {opts.seed}); top {opts.top_k} of {len(clip_ids)} clips per "
             f"model; {opts.thumb_frames} uniform frames per clip; the ground truth is framed green.")
    return render_page("Retrieval gallery", sections, intro), summary


def _label_pairs(values: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        label, sep, target = value.rpartition("=")
        if not sep or not label or not target:
            raise UserError(f"{flag}: expected LABEL=VALUE, got {value!r}")
        pairs.append((label, target))
    return pairs


@stage_main("gallery")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip gallery", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + GalleryOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames-index", required=True, help="FrameIndex JSON of the dataset")
    parser.add_argument("--annotations", required=True, help="annotation JSONL of the split (test)")
    parser.add_argument("--model", action="append", required=True, help="LABEL=DIR, once per column, in order")
    parser.add_argument("--encoder", action="append", help="LABEL=NAME: video encoder override of a model")
    parser.add_argument("--metrics", action="append", help="LABEL=JSON: its clipvip evaluate metrics (R@1 shown)")
    parser.add_argument("--out", required=True, help="HTML page to write")
    parser.add_argument("--summary", default=None, help="also write the ranked clip ids as JSON")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of GalleryOptions keys")
    args = parser.parse_args(argv)
    from clipvip.data import FrameIndex, read_annotations

    opts = GalleryOptions.from_dict(parse_options(args.options))
    models = _label_pairs(args.model, "--model")
    labels = [label for label, _ in models]
    encoders = dict(_label_pairs(args.encoder, "--encoder"))
    metrics = {}
    for label, path in _label_pairs(args.metrics, "--metrics"):
        with open(path) as fh:
            metrics[label] = json.load(fh)
    for label in list(encoders) + list(metrics):
        if label not in labels:
            raise UserError(f"label {label!r} is not one of the --model labels ({', '.join(labels)})")
    page, summary = build_gallery(models, FrameIndex(args.frames_index),
                                  read_annotations(args.annotations, opts.text_mode), opts, encoders, metrics)
    write_text_atomic(args.out, page)
    if args.summary:
        write_text_atomic(args.summary, json.dumps(summary, indent=2) + "\n")
    print(f"gallery: {len(summary['queries'])} queries x {len(models)} models; wrote {args.out}")
    return 0
