"""``clipvip evaluate-recognition``: action-recognition top-1 / top-5 of a model on one labelled split.

Usage:
    clipvip evaluate-recognition --model R/runs/recognition/demo_actions/model \\
        --frames-index R/frames/demo_actions/index.json --annotations R/demo/annotations/demo_actions_test.jsonl \\
        --classes R/demo/annotations/demo_actions_classes.txt --out R/eval_recognition/vita/demo_actions/test.json \\
        --row '{"method": "Vita-CLIP", "protocol": "supervised", "dataset": "demo_actions", "split": "test"}' \\
        --options '{"num_frames": 8, "views": 3}'
    (``clipvip evaluate --task recognition ...`` forwards here.)

Models:
  - a Vita-CLIP folder (``video_encoder: vita``; ``clipvip train --task recognition`` writes one): class texts
    are its learned prompts. A class of ``--classes`` that is one of its training classes uses its trained
    class-specific context (CSC); any other class gets the zero-shot prompt ``template`` (default: the model's
    ``vita.unseen_template``, "a photo of a {}.") through the frozen text tower: **no trained per-class vector**.
    ``zero_shot: true`` forces the prompt for every class (the zero-shot protocol: K600's new classes, HMDB51,
    UCF101); ``zero_shot: false`` requires every class to be a training class (the supervised protocol).
    With a shared context (``vita.csc: false``) every class uses the shared trained context.
  - any other CLIP / CLIP-ViP folder or hub name: zero-shot with class-name prompts ``template`` through
    ``encode_text`` (a plain CLIP runs per-frame MeanPool unless ``video_encoder`` says otherwise).
Scores: ``exp(logit_scale) · cos(video, class text)``; with ``views`` > 1 temporal views per clip (official: 3)
the per-view softmax is averaged (``clipvip.recognition.multi_view_accuracy``). Ties count against the
prediction. Frames: ``sampling`` stride (official Vita-CLIP, ``sampling_rate`` 16) or uniform.

Output JSON (atomic): the ``--row`` fields, ``row_keys``, ``top1``, ``top5``, ``num_clips``, ``num_views``,
``num_classes``, ``class_text`` (``csc`` / ``shared`` / ``prompt``: what the class texts were),
``trained_classes`` (classes scored with a trained per-class vector; 0 = zero-shot), ``missing_clips``,
``missing_ids``, ``complete``, ``model``, ``classes``, ``options``, ``seconds``. Missing clips: as ``clipvip
evaluate`` (none allowed on test unless ``max_missing_fraction``).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipvip.registry import VIDEO_ENCODERS
from clipvip.stage import (StageOptions, UserError, available_cpus, option, parse_options, resolve_device,
                           stage_main, write_json_atomic)

DEFAULT_MAX_MISSING = {"test": 0.0}
OTHER_SPLITS_MAX_MISSING = 0.05


@dataclass
class RecognitionEvalOptions(StageOptions):
    STAGE = "evaluate-recognition"
    num_frames: int = option(8, "T frames per view (Vita-CLIP: 8)", minimum=1)
    views: int = option(1, "temporal views per clip, softmax averaged (official multi-view testing: 3)", minimum=1)
    sampling: str = option("stride", "stride (official Vita-CLIP) | uniform (the CLIP-ViP protocol)",
                           choices=("stride", "uniform"))
    sampling_rate: int = option(16, "stride sampling: decoded frames between sampled frames", minimum=1)
    zero_shot: bool | None = option(None, "Vita models: null = training classes use their trained context, "
                                    "others the prompt; true = no class uses a trained per-class vector; false = "
                                    "every class must be a training class")
    template: str | None = option(None, "zero-shot prompt with {} for the class name; null = the Vita model's "
                                  "unseen_template, else 'a photo of a {}.'")
    video_encoder: str | None = option(None, "override the folder's encoder (null: its own; meanpool for a plain "
                                       "CLIP)", choices=VIDEO_ENCODERS.names)
    batch_size: int = option(16, "clips per encoding batch", minimum=1)
    device: str = option("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    num_workers: int | None = option(None, "frame-loading processes; None = CPUs of the job - 1 (max 8) on GPU, "
                                     "0 on CPU", minimum=0)
    image_size: int | None = option(None, "crop size; None = the model's vision_config.image_size", minimum=16)
    max_missing_fraction: float | None = option(None, "share of the split's clips that may lack frames; None = 0 "
                                                "for test, 0.05 otherwise", minimum=0.0, maximum=1.0)
    seed: int = option(0, "dataset seed (test views are deterministic; kept for completeness)")

    def check(self, where: str) -> None:
        from clipvip.stage import OptionError

        if self.template is not None and "{}" not in self.template:
            raise OptionError(f"{where}.template", f"{self.template!r} has no {{}} for the class name")

    def missing_limit(self, split: str) -> float:
        if self.max_missing_fraction is not None:
            return self.max_missing_fraction
        return DEFAULT_MAX_MISSING.get(split, OTHER_SPLITS_MAX_MISSING)


def _workers(requested: int | None, device: str) -> int:
    if requested is not None:
        return requested
    return min(8, max(0, available_cpus() - 1)) if str(device).startswith("cuda") else 0


def load_model(model: str, opts: RecognitionEvalOptions):
    """``(model, tokenizer, is_vita)``: a Vita folder through ``build_vita_model`` (its classes and prompts),
    anything else through ``CLIPViPModel.from_pretrained``."""
    from transformers import PretrainedConfig

    from clipvip.model import CLIPViPModel
    from clipvip.model.vita import build_vita_model
    from clipvip.trainer.tasks import load_tokenizer

    try:
        raw, _ = PretrainedConfig.get_config_dict(str(model))
    except OSError as exc:
        raise UserError(f"--model {model}: {(str(exc).strip().splitlines() or ['cannot load'])[0]}") from None
    encoder = opts.video_encoder or raw.get("video_encoder") or "meanpool"
    if raw.get("model_type") != "clipvip" and not opts.video_encoder:
        encoder = "meanpool"  # a plain CLIP: per-frame CLIP (CLIP4Clip meanP), as the retrieval zero-shot row
    if encoder == "vita":
        loaded = build_vita_model(model)
    else:
        loaded = CLIPViPModel.from_pretrained(model, video_encoder=encoder)
        loaded = loaded[0] if isinstance(loaded, tuple) else loaded
    return loaded.eval(), load_tokenizer(str(model)), encoder == "vita"


def prompt_features(model, tokenizer, names: list[str], template: str):
    """Plain class-name prompts through the model's own text path: L2-normalised ``[C, P]``."""
    import torch

    from clipvip.model.vita_text import clean_class_name

    texts = [template.format(clean_class_name(n)) for n in names]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    device = model.text_projection.weight.device
    with torch.no_grad():
        return model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))


def run(model_dir: str, frames_index: str, annotations: str, classes: str, out: str, row: dict | None = None,
        options: dict | RecognitionEvalOptions | None = None, split: str | None = None) -> dict:
    """The stage as a function; returns what it writes to ``out``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from clipvip.data import FrameIndex
    from clipvip.data.recognition import (RecognitionDataset, collate_recognition, read_class_list,
                                          read_recognition_annotations)
    from clipvip.data.transforms import normalize_pixels
    from clipvip.model.vita import class_text_features
    from clipvip.model.vita_text import UNSEEN_TEMPLATE
    from clipvip.recognition import multi_view_accuracy

    opts = options if isinstance(options, RecognitionEvalOptions) else RecognitionEvalOptions.from_dict(options)
    row = dict(row or {})
    split = split or row.get("split") or "test"
    started = time.perf_counter()
    for flag, path in (("--frames-index", frames_index), ("--annotations", annotations), ("--classes", classes)):
        if not Path(path).is_file():
            raise UserError(f"{flag}: {path} does not exist")
    names = read_class_list(classes)
    anns = read_recognition_annotations(annotations, names)
    index = FrameIndex(frames_index)
    ids = [a["clip_id"] for a in anns]
    missing = [c for c in ids if c not in index]
    limit = opts.missing_limit(split)
    if len(missing) > limit * len(ids):
        raise UserError(f"{len(missing)} of {len(ids)} {split} clips of {annotations} have no frames (first: "
                        f"{', '.join(missing[:10])}); max_missing_fraction={limit} for split {split}: fix the "
                        "videos and rerun frames, or raise max_missing_fraction to report incomplete numbers")
    device = resolve_device(opts.device)
    model, tokenizer, is_vita = load_model(model_dir, opts)
    model.to(device)
    size = opts.image_size or model.config.vision_config.image_size
    dataset = RecognitionDataset(index, anns, opts.num_frames, size, train=False, num_views=opts.views,
                                 sampling=opts.sampling, sampling_rate=opts.sampling_rate, seed=opts.seed)
    if is_vita:
        text = model.video_encoder.text
        if opts.template is not None:
            text.unseen_template = opts.template
            text._ids_cache.clear()
        seen = text.seen(names)
        if text.csc:
            trained = 0 if opts.zero_shot else sum(seen)
            kind = "csc" if trained else "prompt"
        else:
            trained, kind = 0, "shared"
        try:
            with torch.no_grad():
                class_feats = class_text_features(model, tokenizer, names, zero_shot=opts.zero_shot)
        except ValueError as exc:
            raise UserError(f"--classes {classes}: {exc}") from None
    else:
        trained, kind = 0, "prompt"
        class_feats = prompt_features(model, tokenizer, names, opts.template or UNSEEN_TEMPLATE)
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=False, num_workers=_workers(opts.num_workers, device),
                        collate_fn=collate_recognition)
    dtype = next(model.parameters()).dtype
    all_logits, all_labels = [], []
    with torch.no_grad():
        scale = model.logit_scale.exp().float()
        for batch in loader:
            pixels = batch["pixel_values"]
            if pixels.ndim == 5:
                pixels = pixels[:, None]
            bsz, views = pixels.shape[:2]
            video = model.encode_video(normalize_pixels(pixels.flatten(0, 1), device, dtype=dtype)).float()
            logits = (scale * video @ class_feats.float().T).view(bsz, views, -1)
            all_logits.append(logits.cpu().numpy())
            all_labels.append(batch["label"].numpy())
    logits, labels = np.concatenate(all_logits), np.concatenate(all_labels)
    result = multi_view_accuracy(logits, labels)
    data = {**row, "row_keys": list(row), **result, "num_clips": int(len(labels)), "num_views": int(logits.shape[1]),
            "num_classes": len(names), "class_text": kind, "trained_classes": int(trained),
            "missing_clips": len(dataset.missing), "missing_ids": list(dataset.missing),
            "complete": not dataset.missing, "max_missing_fraction": limit, "model": str(model_dir),
            "classes": str(classes), "options": opts.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    write_json_atomic(out, data)
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipvip evaluate-recognition", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + RecognitionEvalOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("recognition",), default="recognition",
                        help="accepted for `clipvip evaluate --task recognition` forwarding")
    parser.add_argument("--model", required=True, help="model folder (Vita, CLIP-ViP or plain CLIP) or hub name")
    parser.add_argument("--frames-index", required=True, help="FrameIndex JSON of the dataset")
    parser.add_argument("--annotations", required=True, help='labelled JSONL of the split ({"clip_id", "label"})')
    parser.add_argument("--classes", required=True, help="class list scored against (one name per line)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--row", default=None, help="JSON object: table row identity (method, protocol, dataset, ...)")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"),
                        help="the annotations' split (default: the --row's split, else test)")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of RecognitionEvalOptions keys")
    return parser


# ------------------------------------------------------------------------------- workflow config (parse time)
# The `recognition` section of the workflow config: what clipvip.config.check_stage_options checks and what
# workflow/rules/recognition.smk builds its rules from (one place for both).
def section(config: dict) -> dict:
    return config.get("recognition") or {}


def eval_datasets(config: dict) -> list[str]:
    """Datasets evaluated: the training datasets (supervised) then the zero-shot ones."""
    rec = section(config)
    return list(rec.get("datasets") or []) + [d for d in rec.get("zero_shot") or {} if d not in rec["datasets"]]


def train_options(config: dict, dataset: str) -> dict:
    """``clipvip train --task recognition --options`` of a training dataset."""
    rec = section(config)
    return {**(rec.get("options") or {}), **(rec.get("per_dataset") or {}).get(dataset, {}), "task": "recognition"}


def model_dataset(config: dict, dataset: str) -> str:
    """The training dataset whose Vita model scores ``dataset`` (itself, or the zero-shot entry's model)."""
    rec = section(config)
    if dataset in rec["datasets"]:
        return dataset
    return (rec["zero_shot"].get(dataset) or {}).get("model") or rec["datasets"][0]


def classes_file(config: dict, dataset: str) -> str:
    entry = (section(config).get("zero_shot") or {}).get(dataset) or {}
    return entry.get("classes") or config["datasets"][dataset].get("classes")


def eval_options(config: dict, dataset: str) -> dict:
    """``clipvip evaluate-recognition --options`` for ``dataset``: the frames of its model's training (T,
    sampling, stride), then the section's ``evaluate`` block."""
    from clipvip.trainer.options import TrainOptions

    trained = TrainOptions.from_dict(train_options(config, model_dataset(config, dataset)), "finetune")
    frames = {"num_frames": trained.num_frames, "sampling": trained.sampling, "sampling_rate": trained.sampling_rate}
    return {**frames, **(section(config).get("evaluate") or {})}


def check_config(config: dict) -> None:
    """Cross references and every options block of the section (raises ``OptionError``)."""
    from clipvip.stage import OptionError
    from clipvip.trainer.options import TrainOptions

    rec = section(config)
    datasets = config["datasets"]
    for i, name in enumerate((config.get("finetune") or {}).get("datasets") or []):
        if datasets.get(name, {}).get("task") == "recognition":
            raise OptionError(f"finetune.datasets.{i}", f"{name!r} is a recognition dataset (label lines, no "
                              "text): list it under recognition.datasets")
    for name, ds in datasets.items():
        if ds.get("task") == "recognition" and not ds.get("classes"):
            raise OptionError(f"datasets.{name}.classes", "required for a recognition dataset (task: recognition)")
    if not rec.get("datasets"):
        if rec.get("zero_shot"):
            raise OptionError("recognition.zero_shot", "needs recognition.datasets (the models to evaluate)")
        return
    for i, name in enumerate(rec["datasets"]):
        if name not in datasets:
            raise OptionError(f"recognition.datasets.{i}", f"{name!r} is not one of datasets ({', '.join(datasets)})")
        if datasets[name].get("task") != "recognition":
            raise OptionError(f"datasets.{name}.task", "must be recognition to train Vita-CLIP on it")
        if "train" not in datasets[name]["annotations"]:
            raise OptionError(f"datasets.{name}.annotations", "recognition training needs a 'train' split")
        TrainOptions.from_dict(train_options(config, name), "finetune", "recognition.options")
    for name in rec.get("per_dataset") or {}:
        if name not in rec["datasets"]:
            raise OptionError(f"recognition.per_dataset.{name}", "not listed in recognition.datasets")
    for name, entry in (rec.get("zero_shot") or {}).items():
        where = f"recognition.zero_shot.{name}"
        if name not in datasets:
            raise OptionError(where, f"{name!r} is not one of datasets ({', '.join(datasets)})")
        if name in rec["datasets"]:
            raise OptionError(where, "a training dataset is evaluated supervised; zero-shot needs its own dataset "
                              "entry (its unseen classes' clips)")
        if datasets[name].get("task") != "recognition":
            raise OptionError(f"datasets.{name}.task", "must be recognition for zero-shot recognition")
        if (entry or {}).get("model") and entry["model"] not in rec["datasets"]:
            raise OptionError(f"{where}.model", f"{entry['model']!r} is not one of recognition.datasets")
        if not classes_file(config, name):
            raise OptionError(f"{where}.classes", "required (or datasets.<name>.classes)")
    split = rec.get("split", "test")
    for name in eval_datasets(config):
        if split not in datasets[name]["annotations"]:
            raise OptionError(f"datasets.{name}.annotations", f"recognition evaluation needs a {split!r} split")
        RecognitionEvalOptions.from_dict(eval_options(config, name), "recognition.evaluate")
    init = rec.get("init")
    if init:
        from clipvip.config import _check_model_reference, variants

        if init in variants(config):
            if not (config.get("pretrain") or {}).get("enabled"):
                raise OptionError("recognition.init", f"{init!r} is a variant, but post-pretraining is off")
        else:
            _check_model_reference("recognition.init", init, config)  # a folder that must exist, or a hub name


@stage_main("evaluate-recognition")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = run(args.model, args.frames_index, args.annotations, args.classes, args.out,
               parse_options(args.row, "--row"), RecognitionEvalOptions.from_dict(parse_options(args.options)),
               split=args.split)
    print(f"evaluate-recognition: {data['num_clips']} clips x {data['num_views']} views, {data['num_classes']} "
          f"classes ({data['class_text']}, {data['trained_classes']} with a trained vector): top-1 "
          f"{data['top1']:.1f} top-5 {data['top5']:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
