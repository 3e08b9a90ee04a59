"""``clipvip search``: free-text queries against the videos of a frame store, through a cached faiss index.

Usage:
    clipvip search --model R/runs/finetune/vip-vsc_fc/demo_msrvtt/model \
        --frames-index R/frames/demo_msrvtt/index.json [--top-k 5] [--num-frames 12] [--json] \
        [--html hits.html] "a red square moves right" "a blue circle moves up"

Every clip of the store is encoded once (``num_frames`` uniform frames, ``clipvip.retrieval.encode_videos``)
into a faiss ``IndexFlatIP`` over L2-normalised features (inner product = cosine), cached next to the frame
index as ``<index dir>/search/<fingerprint>.faiss`` + ``<fingerprint>.ids.json``. The fingerprint covers the
model (its folder's config and weight files: names, sizes, mtimes; or the hub name), the frame store (the
index file's content hash and the sizes/mtimes of the shards and id table beside it) and the encoding settings
(frames, crop size, encoder override), so a re-trained model or a re-extracted store builds a new index and
anything else reuses it; stderr says ``search: built index`` or ``search: reused index``. Answers: a table of
rank, clip id and score per query (``--json``: a JSON list instead), and with ``--html`` the thumbnail strips.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from clipvip.stage import UserError, atomic_path, resolve_device, stage_main, write_text_atomic

MODEL_FILES = (".json", ".safetensors", ".bin", ".pt", ".txt", ".model")


def model_fingerprint(model: str) -> dict:
    """What identifies a model: its folder's config/weight/tokenizer files (name, size, mtime), or its hub name."""
    path = Path(model)
    if not path.is_dir():
        return {"hub": model}
    files = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in MODEL_FILES:
            st = f.stat()
            files[f.name] = [st.st_size, st.st_mtime_ns]
    if "config.json" not in files:
        raise UserError(f"--model {model}: no config.json in the folder")
    return {"dir": str(path.resolve()), "files": files}


def store_fingerprint(frames_index: str) -> dict:
    """The frame index file's content hash plus the sizes/mtimes of the shards and tables beside it."""
    path = Path(frames_index)
    if not path.is_file():
        raise UserError(f"--frames-index {frames_index} does not exist")
    files = {}
    for f in sorted(path.parent.iterdir()):
        if f.is_file() and f.suffix in (".h5", ".arrow", ".tsv"):
            st = f.stat()
            files[f.name] = [st.st_size, st.st_mtime_ns]
    return {"index_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "files": files}


def fingerprint(model: str, frames_index: str, settings: dict) -> str:
    blob = json.dumps({"model": model_fingerprint(model), "store": store_fingerprint(frames_index),
                       "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_paths(frames_index: str, key: str) -> tuple[Path, Path]:
    folder = Path(frames_index).parent / "search"
    return folder / f"{key}.faiss", folder / f"{key}.ids.json"


def load_model(model_dir: str, device: str, video_encoder: str | None = None):
    from clipvip.data import load_tokenizer
    from clipvip.model import CLIPViPModel

    overrides = {"video_encoder": video_encoder} if video_encoder else {}
    model = CLIPViPModel.from_pretrained(model_dir, **overrides).to(device).eval()
    return model, load_tokenizer(model_dir)


def build_or_load_index(model_dir: str, frames_index: str, num_frames: int = 12, batch_size: int = 16,
                        device: str = "cpu", video_encoder: str | None = None, image_size: int | None = None,
                        model=None, log=print):
    """``(faiss index, clip ids, "built" | "reused", cache path)``; ``model`` is loaded only to build."""
    import faiss

    settings = {"num_frames": num_frames, "image_size": image_size, "video_encoder": video_encoder}
    key = fingerprint(model_dir, frames_index, settings)
    index_path, ids_path = cache_paths(frames_index, key)
    if index_path.is_file() and ids_path.is_file():
        index = faiss.read_index(str(index_path))
        ids = json.loads(ids_path.read_text())["clip_ids"]
        if index.ntotal == len(ids):
            log(f"search: reused index {index_path} ({len(ids)} clips)")
            return index, ids, "reused", index_path
    from clipvip.data import FinetuneDataset, FrameIndex
    from clipvip.retrieval import encode_videos

    if model is None:
        model, _ = load_model(model_dir, device, video_encoder)
    store = FrameIndex(frames_index)
    ids = list(store.ids())
    if not ids:
        raise UserError(f"--frames-index {frames_index}: the store holds no clip")
    size = image_size or int(model.config.vision_config.image_size)
    dataset = FinetuneDataset(store, [{"clip_id": c, "texts": [""]} for c in ids], num_frames=num_frames,
                              image_size=size, train=False)
    ids = [dataset.records[i]["clip_id"] for i in range(len(dataset.records))]
    feats = encode_videos(model, dataset, batch_size, device, progress=False).numpy().astype(np.float32)
    faiss.normalize_L2(feats)
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    with atomic_path(index_path) as tmp:
        faiss.write_index(index, str(tmp))
    write_text_atomic(ids_path, json.dumps({"clip_ids": ids, "model": str(model_dir),
                                            "frames_index": str(frames_index), "settings": settings}) + "\n")
    log(f"search: built index {index_path} ({len(ids)} clips)")
    return index, ids, "built", index_path


def search(index, ids: list[str], model, tokenizer, queries: list[str], top_k: int = 5, max_text_len: int = 77,
           batch_size: int = 16, device: str = "cpu") -> list[dict]:
    """``[{"query", "hits": [{"rank", "clip_id", "score"}]}]`` for each query (cosine scores)."""
    import faiss

    from clipvip.retrieval import encode_texts

    max_len = min(max_text_len, int(model.config.text_config.max_position_embeddings))
    feats = encode_texts(model, tokenizer, list(queries), max_len, batch_size, device, progress=False)
    feats = feats.numpy().astype(np.float32)
    faiss.normalize_L2(feats)
    scores, rows = index.search(feats, min(top_k, len(ids)))
    return [{"query": q, "hits": [{"rank": r + 1, "clip_id": ids[int(c)], "score": float(s)}
                                  for r, (c, s) in enumerate(zip(row, score)) if c >= 0]}
            for q, row, score in zip(queries, rows, scores)]


def results_html(results: list[dict], frames_index: str, thumb_frames: int = 4, thumb_height: int = 64,
                 title: str = "clipvip search") -> str:
    from clipvip.analysis.thumbnails import render_page, strip_data_uri
    from clipvip.data import FrameIndex

    store = FrameIndex(frames_index)
    sections = [{"query": r["query"], "columns": [{"label": "top clips", "hits": [
        {**hit, "image": strip_data_uri(store.uniform(hit["clip_id"], thumb_frames), thumb_height), "gt": False}
        for hit in r["hits"]]}]} for r in results]
    return render_page(title, sections, f"frame store {frames_index}")


@stage_main("search")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip search", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="+", help="text queries")
    parser.add_argument("--model", required=True, help="model folder (ours or a plain HF CLIP) with its tokenizer")
    parser.add_argument("--frames-index", required=True, help="FrameIndex JSON of the store to search")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--num-frames", type=int, default=12, help="uniform frames per clip for encoding")
    parser.add_argument("--max-text-len", type=int, default=77)
    parser.add_argument("--video-encoder", default=None, help="override the model's encoder (meanpool for CLIP)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.add_argument("--html", default=None, help="also write the hits as thumbnail strips to this HTML file")
    args = parser.parse_args(argv)
    for name in ("top_k", "num_frames", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.video_encoder:
        from clipvip.registry import VIDEO_ENCODERS

        VIDEO_ENCODERS.get(args.video_encoder)  # unknown name: one error line with a suggestion
    if not Path(args.model).is_dir():
        raise UserError(f"--model {args.model}: not a model folder")
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device, args.video_encoder)
    index, ids, _, _ = build_or_load_index(args.model, args.frames_index, args.num_frames, args.batch_size, device,
                                           args.video_encoder, model=model,
                                           log=lambda m: print(m, file=sys.stderr))
    results = search(index, ids, model, tokenizer, args.queries, args.top_k, args.max_text_len, args.batch_size,
                     device)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from tabulate import tabulate

        for r in results:
            print(f"query: {r['query']}")
            print(tabulate([[h["rank"], h["clip_id"], f"{h['score']:.4f}"] for h in r["hits"]],
                           headers=["rank", "clip_id", "score"]))
            print()
    if args.html:
        write_text_atomic(args.html, results_html(results, args.frames_index))
        print(f"search: wrote {args.html}", file=sys.stderr)
    return 0
