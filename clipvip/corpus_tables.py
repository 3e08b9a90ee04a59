"""``clipvip corpus-arrow``: write the corpus Arrow tables that training memory-maps (``clipvip.data.corpus``).

Usage:
    clipvip corpus-arrow annotations --input R/demo/annotations/demo_pretrain_train.jsonl \
        --index R/frames/demo_pretrain/index.arrow --out R/corpus/demo_pretrain/train.arrow
    clipvip corpus-arrow captions --inputs R/captions/demo_pretrain/*.jsonl --out R/captions/demo_pretrain/captions.arrow

Written once by a workflow rule, shared by every rank and DataLoader worker through the page cache, so a
process's private memory does not grow with the corpus (docs/corpus_scale.md).
"""
from __future__ import annotations

import argparse
import json

from clipvip.stage import UserError, stage_main


@stage_main("corpus-arrow")
def main(argv: list[str] | None = None) -> int:
    from clipvip.data.corpus import build_annotation_table, build_caption_table

    parser = argparse.ArgumentParser(prog="clipvip corpus-arrow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("annotations", help="annotation JSONL -> Arrow (joined with the frame index)")
    a.add_argument("--input", required=True)
    a.add_argument("--index", help="index.arrow of the dataset's frame store (adds shard/row columns)")
    a.add_argument("--out", required=True)
    c = sub.add_parser("captions", help="caption JSONL shards -> one sorted Arrow table")
    c.add_argument("--inputs", nargs="+", required=True)
    c.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.what == "annotations":
            info = build_annotation_table(args.input, args.out, args.index)
        else:
            info = build_caption_table(args.inputs, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"corpus-arrow {args.what}: {json.dumps(info)} -> {args.out}")
    return 0
