"""``clipvip evaluate``: text<->video retrieval metrics of a model on one dataset split.

Usage:
    clipvip evaluate --model R/runs/finetune/vip-vsc_fc/demo_msrvtt/model --frames-index R/frames/demo_msrvtt/index.json \
        --annotations R/demo/annotations/demo_msrvtt_test.jsonl --out R/eval/finetuned-vip-vsc_fc/demo_msrvtt/test.json \
        --row '{"method": "CLIP-ViP", "stage": "fine-tuned", "encoder": "vip", "loss": "vsc_fc",
                "dataset": "demo_msrvtt", "split": "test"}' \
        --options '{"num_frames": 12, "max_text_len": 50, "text_mode": "sample", "batch_size": 16}'

The scoring itself is ``clipvip.retrieval.evaluate_model`` (the trainer's validation calls it too); every
option, its default and meaning: ``EvaluateOptions``.

Output JSON (written atomically): the ``--row`` fields, ``row_keys`` (their names, for ``clipvip tables``),
``t2v``, ``v2t``, ``t2v_dsl``, ``v2t_dsl`` (each R1, R5, R10, MdR, MnR), ``order_acc`` (percent of captions whose
video outscores the same video with its frames reversed; 50 = order-blind; with ``order_acc: true``), ``num_queries``, ``num_videos``,
``missing_clips``, ``missing_ids``, ``complete`` (True only when every annotated clip was scored: the full
protocol), ``max_missing_fraction`` (the limit applied), ``model``, ``options`` and ``seconds``.

Missing clips (annotated, but without frames in the store) never shrink the test set silently: when more
than ``max_missing_fraction`` of the split's clips are missing (default: 0 for ``test`` -- any missing clip
fails --, 0.05 for other splits), the stage exits 2 with one line naming the first missing clips, their
count and the frames failure manifest that records why, and writes nothing. With a raised threshold the
numbers are written with ``complete: false`` and ``clipvip tables`` marks them.

A VideoCLIP model folder (``clipvip.videoclip_eval.is_videoclip_folder``): ``--frames-index`` names the feature
index (``clipvip features``); the same missing-clip policy (checked against the feature shards' failure
manifests) and output fields, ``max_text_len`` capped by its BERT (the value used is ``max_text_len`` in the
output; 63 is the official VideoCLIP length), ``order_acc`` with its per-second features reversed.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipvip.metrics import TIE_RULES
from clipvip.registry import VIDEO_ENCODERS
from clipvip.stage import (StageOptions, UserError, available_cpus, option, parse_options, resolve_device,
                           stage_main, write_json_atomic)

DEFAULT_MAX_MISSING = {"test": 0.0}  # other splits (val, train): OTHER_SPLITS_MAX_MISSING
OTHER_SPLITS_MAX_MISSING = 0.05

@dataclass
class EvaluateOptions(StageOptions):
    STAGE = "evaluate"
    num_frames: int = option(12, "T uniform frames per clip (np.linspace over the decoded frames)", minimum=1)
    max_text_len: int = option(50, "text tokens incl. start/end", minimum=8, maximum=77)
    text_mode: str = option("sample", "sample: every caption is a query | join: paragraph sentences joined",
                            choices=("sample", "join"))
    batch_size: int = option(16, "clips (and texts) per encoding batch", minimum=1)
    device: str = option("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    dsl: bool = option(True, "also report dual-softmax (DSL) re-scored metrics")
    order_acc: bool = option(True, "temporal-order accuracy: does each caption score its video above the same "
                             "frames reversed (ties 1/2; order-blind = 50)? One more video pass")
    v2t_dsl: str = option("transpose", "v2t DSL rule: transpose (softmax over videos) | clipvip (official)",
                          choices=("transpose", "clipvip"))
    ties: str = option("expected", "rank of a ground truth tied (within 1e-6) with other items: expected (random "
                       "tie-breaking, in expectation: a constant matrix scores chance) | pessimistic (ties rank "
                       "above it) | optimistic (the official code's)", choices=TIE_RULES)
    num_workers: int | None = option(None, "frame-loading processes; None = CPUs of the job - 1 (max 8) on "
                                     "GPU, 0 on CPU", minimum=0)
    image_size: int | None = option(None, "crop size; None = the model's vision_config.image_size", minimum=16)
    video_encoder: str | None = option(None, "override the model folder's encoder (e.g. meanpool turns a plain "
                                       "CLIP into the CLIP4Clip-style zero-shot baseline)",
                                       choices=VIDEO_ENCODERS.names)
    max_missing_fraction: float | None = option(None, "share of the split's annotated clips that may lack frames; "
                                                "above it the stage fails. None = 0 for test (the full "
                                                "protocol), 0.05 for val/train", minimum=0.0, maximum=1.0)

    def missing_limit(self, split: str) -> float:
        if self.max_missing_fraction is not None:
            return self.max_missing_fraction
        return DEFAULT_MAX_MISSING.get(split, OTHER_SPLITS_MAX_MISSING)


def __getattr__(name: str):
    """``evaluate_model`` / ``encode_videos`` / ``encode_texts`` moved to ``clipvip.retrieval``; old imports still
    work (lazily: importing this module for ``EvaluateOptions`` at Snakemake parse time must not import torch)."""
    if name in ("evaluate_model", "encode_videos", "encode_texts"):
        from clipvip import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def loader_workers(requested: int | None, device: str) -> int:
    """Explicit value, or on GPU the job's CPUs minus the main process (capped at 8); 0 on CPU."""
    if requested is not None:
        return requested
    return min(8, max(0, available_cpus() - 1)) if str(device).startswith("cuda") else 0


def _failure_manifest(frame_index) -> str:
    """Path of the frames failure manifest of a ``FrameIndex`` (or a shard's, for a single store)."""
    from clipvip.data.manifest import default_failures_path

    index = getattr(frame_index, "index", None)
    if isinstance(index, dict) and index.get("failures"):
        return str(Path(frame_index.path).parent / index["failures"])
    return str(default_failures_path(frame_index.path))


def check_missing(frame_index, annotations, annotations_path: str, split: str, limit: float) -> list[str]:
    """Annotated clips without frames; ``UserError`` naming them and their manifest when above ``limit``."""
    ids = [str(a["clip_id"]) for a in annotations]
    missing = [c for c in ids if c not in frame_index]
    if len(missing) <= limit * len(ids):
        return missing
    manifest = _failure_manifest(frame_index)
    reasons = {}
    try:
        table = frame_index.failures()
        reasons = dict(zip(table["clip_id"].astype(str), table["reason"].astype(str)))
    except (OSError, KeyError, AttributeError, ValueError):
        pass
    first = ", ".join(f"{c} ({reasons.get(c, 'not in the frame store nor its manifest')})" for c in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise UserError(f"{len(missing)} of {len(ids)} {split} clips of {annotations_path} have no frames: {first}"
                    f"{more}; their failures are recorded in {manifest}; max_missing_fraction={limit} for split "
                    f"{split} (scores over fewer clips are not the protocol's): fix the videos and rerun frames, "
                    f"or raise evaluate.options.max_missing_fraction to report incomplete numbers")


def run(model_dir: str, frames_index: str, annotations: str, out: str, row: dict | None = None,
        options: dict | None = None, split: str | None = None) -> dict:
    """The ``clipvip evaluate`` stage as a function; returns what it writes to ``out``.

    ``split`` (default: the row's ``split``, else ``test``) chooses the default ``max_missing_fraction``."""
    from clipvip.data import FrameIndex, load_tokenizer, read_annotations
    from clipvip.model import CLIPViPModel
    from clipvip.retrieval import evaluate_model

    opts = options if isinstance(options, EvaluateOptions) else EvaluateOptions.from_dict(options)
    row = dict(row or {})
    split = split or row.get("split") or "test"
    started = time.perf_counter()
    for flag, path in (("--frames-index", frames_index), ("--annotations", annotations)):
        if not Path(path).is_file():
            raise UserError(f"{flag}: {path} does not exist")
    try:
        anns = read_annotations(annotations, opts.text_mode)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from clipvip.videoclip_eval import is_videoclip_folder

    if is_videoclip_folder(model_dir):  # VideoCLIP: --frames-index names the feature index (`clipvip features`)
        from clipvip.videoclip_eval import FeatureMissingView, evaluate_videoclip_folder, open_feature_index

        features = open_feature_index(frames_index)
        limit = opts.missing_limit(split)
        missing = check_missing(FeatureMissingView(features, frames_index), anns, annotations, split, limit)
        if len(missing) == len(anns):  # only with max_missing_fraction 1.0
            raise UserError(f"none of the {len(anns)} {split} clips of {annotations} has features in {frames_index}")
        result = evaluate_videoclip_folder(model_dir, features, anns, batch_size=opts.batch_size,
                                           device=opts.device, dsl=opts.dsl, v2t_dsl=opts.v2t_dsl,
                                           ties=opts.ties, max_text_len=opts.max_text_len, order_acc=opts.order_acc)
        data = {**row, "row_keys": list(row), **result, "complete": not result["missing_ids"],
                "max_missing_fraction": limit, "model": str(model_dir), "options": opts.to_dict(),
                "seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(out, data)
        return data
    index = FrameIndex(frames_index)
    limit = opts.missing_limit(split)
    check_missing(index, anns, annotations, split, limit)  # fails before any model is loaded
    overrides = {"video_encoder": opts.video_encoder} if opts.video_encoder else {}
    device = resolve_device(opts.device)
    model = CLIPViPModel.from_pretrained(model_dir, **overrides).to(device)
    result = evaluate_model(
        model, load_tokenizer(model_dir), index, anns,
        num_frames=opts.num_frames, max_text_len=opts.max_text_len, batch_size=opts.batch_size, device=device,
        image_size=opts.image_size, dsl=opts.dsl, v2t_dsl=opts.v2t_dsl, order_acc=opts.order_acc, ties=opts.ties,
        num_workers=loader_workers(opts.num_workers, device),
    )
    data = {**row, "row_keys": list(row), **result, "complete": not result["missing_ids"],
            "max_missing_fraction": limit, "model": str(model_dir), "options": opts.to_dict(),
            "seconds": round(time.perf_counter() - started, 3)}
    write_json_atomic(out, data)
    return data


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--task=recognition" in argv or any(a == "--task" and b == "recognition" for a, b in zip(argv, argv[1:])):
        from clipvip.evaluate_recognition import main as recognition_main  # top-1/top-5, Vita-CLIP and zero-shot

        return recognition_main(argv)
    parser = argparse.ArgumentParser(prog="clipvip evaluate", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + EvaluateOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (ours or a plain HF CLIP) with its tokenizer")
    parser.add_argument("--frames-index", required=True, help="FrameIndex JSON of the dataset")
    parser.add_argument("--annotations", required=True, help="annotation JSONL of the split")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--row", default=None, help="JSON object: table row identity (method, stage, dataset, ...)")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"),
                        help="the annotations' split (default: the --row's split, else test): test allows no "
                             "missing clip unless max_missing_fraction says otherwise")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of EvaluateOptions keys")
    args = parser.parse_args(argv)
    data = run(args.model, args.frames_index, args.annotations, args.out, parse_options(args.row, "--row"),
               EvaluateOptions.from_dict(parse_options(args.options)), split=args.split)
    if not data["complete"]:
        print(f"clipvip evaluate: warning: INCOMPLETE: {data['missing_clips']} annotated clips have no frames "
              f"(first: {', '.join(data['missing_ids'][:10])}); these numbers are not the full protocol "
              f"(complete: false in {args.out})", file=sys.stderr)
    t2v = data["t2v"]
    print(f"evaluate: {data['num_queries']} queries x {data['num_videos']} videos "
          f"({data['missing_clips']} missing): t2v R@1 {t2v['R1']:.1f} R@5 {t2v['R5']:.1f} "
          f"R@10 {t2v['R10']:.1f} MdR {t2v['MdR']:.1f} MnR {t2v['MnR']:.1f}"
          + (f"; order_acc {data['order_acc']:.1f}" if "order_acc" in data else "") + f"; wrote {args.out}")
    return 0
