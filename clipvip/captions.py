"""``clipvip captions``: caption each clip's middle frame with an image captioner (resumable).

Usage:
    clipvip captions --frames R/frames/demo_pretrain/00000.h5 --out R/captions/demo_pretrain/00000.jsonl \
        [--ids R/frames/demo_pretrain/ids/00000.txt] [--failures OUT.failures.tsv] \
        --options '{"model": "R/pretrained/captioner", "batch_size": 16, "num_beams": 3}'

    from clipvip.captions import caption_shard
    stats = caption_shard("00000.h5", "00000.jsonl", {"model": "Salesforce/blip-image-captioning-base"})

Options: ``CaptionOptions`` (``model`` is required: hub name or local folder of any captioner that
``AutoModelForImageTextToText`` + ``AutoProcessor`` load, e.g. BLIP or GIT). Decoding is deterministic (no
sampling). Model families whose ``generate()`` inputs differ register a kind in
``clipvip.registry.CAPTIONER_KINDS`` under their ``config.model_type`` (``git`` here; ``default`` otherwise).

Output: JSONL lines ``{"clip_id", "caption", "model"}``, one per captioned clip, in the shard's order.
Expected clips = the shard's stored ids + the frames stage's failure manifest (``<k>.failures.tsv`` next to
the shard) + ``--ids`` if given. Clips that cannot be captioned go to the failure TSV (``clip_id``,
``reason``, ``detail``): frames-stage failures carried over with ``reason`` ``frames:<reason>``,
``not_in_store`` (listed in ``--ids`` but in neither the store nor its manifest) and ``caption_error``
(an exception while loading or captioning that clip alone).

Failures are loud: the first 10 are printed to stderr as ``clip_id: reason: detail`` lines (the rule's log),
and ``--failures-copy`` writes the TSV a second time outside the rule's outputs (the workflow uses
``R/failures/captions/<ds>/<k>.failures.tsv``), so the reasons survive a failed Snakemake job, which deletes
its outputs. When the shard's own failures (``caption_error``, ``not_in_store``; frames failures were
already judged by the frames stage) exceed ``max_failure_fraction`` of its clips (default 0.1), the job
exits 1 and does NOT publish ``OUT``: post-pretraining never sees a shard of missing captions.

Resumability: each finished batch is appended to ``OUT.partial`` (flushed, fsynced every
``checkpoint_every`` batches). A rerun after a kill keeps the partial's complete lines (a torn last line is
cut off; lines from a different ``model`` discard the partial), logs ``resuming: k done``, captions only the
rest, writes the failure TSV and finally renames the partial onto ``OUT`` atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from clipvip.registry import CAPTIONER_KINDS
from clipvip.stage import (StageOptions, UserError, hide_progress, option, parse_options, resolve_device,
                           stage_main)

log = logging.getLogger("clipvip.captions")


@dataclass
class CaptionOptions(StageOptions):
    STAGE = "captions"
    model: str = option(help="image captioner: hub name (e.g. Salesforce/blip-image-captioning-base) or folder")
    batch_size: int = option(16, "middle frames per generate() call", minimum=1)
    num_beams: int = option(3, "beam search width (1 = greedy)", minimum=1)
    max_new_tokens: int = option(20, "caption length limit in tokens", minimum=1)
    prompt: str | None = option(None, "text the caption continues (stripped from the output)")
    device: str = option("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    checkpoint_every: int = option(1, "batches between fsyncs of the partial file", minimum=1)
    seed: int = option(0, "torch seed before loading the captioner")
    max_failure_fraction: float = option(0.1, "the shard job fails (exit 1, no captions JSONL published) when more "
                                         "of its stored clips than this cannot be captioned", minimum=0.0,
                                         maximum=1.0)


# ------------------------------------------------------------------------------------- captioner kinds
def _strip_prompt(text: str, prompt: str | None) -> str:
    """Drop a leading copy of the prompt (captioners such as BLIP echo it), compared case-insensitively."""
    text = " ".join(text.split())
    if prompt:
        head = " ".join(prompt.split()).lower()
        if text.lower().startswith(head):
            text = text[len(head):]
    return text.strip()


def _default_inputs(processor, model, images: list[np.ndarray], prompt: str | None) -> dict:
    if prompt:
        return processor(images=images, text=[prompt] * len(images), return_tensors="pt")
    return processor(images=images, return_tensors="pt")


def _default_decode(processor, inputs: dict, output_ids, prompt: str | None) -> list[str]:
    return [_strip_prompt(t, prompt) for t in processor.batch_decode(output_ids, skip_special_tokens=True)]


def _git_inputs(processor, model, images: list[np.ndarray], prompt: str | None) -> dict:
    """GIT continues ``[CLS/BOS] + prompt`` (no end token), so the ids are built by hand."""
    import torch

    tok = processor.tokenizer
    start = tok.cls_token_id if tok.cls_token_id is not None else model.config.bos_token_id
    ids = [start] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    input_ids = torch.tensor([ids] * len(images))
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _git_decode(processor, inputs: dict, output_ids, prompt: str | None) -> list[str]:
    new_tokens = output_ids[:, inputs["input_ids"].shape[1]:]
    return [" ".join(t.split()) for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]


@dataclass(frozen=True)
class CaptionerKind:
    """How to build ``generate()`` inputs and read captions back, where model families differ."""

    inputs: Callable
    decode: Callable


# config.model_type -> kind; anything else (BLIP, BLIP-2, ...) uses the processor's own text handling.
CAPTIONER_KINDS.register("default", CaptionerKind(_default_inputs, _default_decode))
CAPTIONER_KINDS.register("git", CaptionerKind(_git_inputs, _git_decode))


class Captioner:
    """``Captioner(model_name_or_dir, device)(images uint8 [H,W,3] list) -> list[str]``."""

    def __init__(self, model: str, device: str = "auto", num_beams: int = 3, max_new_tokens: int = 20,
                 prompt: str | None = None, seed: int = 0):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch.manual_seed(int(seed))
        self.device = resolve_device(device)
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model).to(self.device).eval()
        model_type = self.model.config.model_type
        self.kind = CAPTIONER_KINDS.get(model_type if model_type in CAPTIONER_KINDS else "default")
        self.generate_kwargs = {"num_beams": int(num_beams), "max_new_tokens": int(max_new_tokens), "do_sample": False}
        self.prompt = prompt

    def __call__(self, images: list[np.ndarray]) -> list[str]:
        import torch

        inputs = self.kind.inputs(self.processor, self.model, images, self.prompt)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            output_ids = self.model.generate(**inputs, **self.generate_kwargs)
        return self.kind.decode(self.processor, inputs, output_ids.cpu(), self.prompt)


# ---------------------------------------------------------------------------------------- partial file
def read_partial(path: Path, model: str) -> list[dict]:
    """Complete lines of a partial file; cuts a torn last line off; discards it if another model wrote it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - end)
        with open(path, "r+b") as fh:
            fh.truncate(end)
    records = [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]
    if any(r.get("model") != model for r in records):
        log.warning("%s: written by another model; starting over", path)
        path.unlink()
        return []
    return records


def expected_clips(store, failures_tsv: Path, ids_file: str | None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(clip ids to caption, failure rows carried over) for one shard."""
    from clipvip.data.manifest import read_failures

    stored = list(store.ids())
    carried = []
    if failures_tsv.exists():
        for row in read_failures(failures_tsv).itertuples(index=False):
            carried.append((row.clip_id, f"frames:{row.reason}", getattr(row, "detail", "")))
    if ids_file:
        known = set(stored) | {c for c, _, _ in carried}
        try:
            with open(ids_file) as fh:
                listed = [line.strip() for line in fh if line.strip()]
        except OSError as exc:
            raise UserError(f"--ids: cannot read {ids_file}: {exc.strerror or exc}") from None
        carried += [(c, "not_in_store", f"listed in {ids_file} but neither stored nor in {failures_tsv.name}")
                    for c in listed if c not in known]
        order = {c: i for i, c in enumerate(listed)}
        stored.sort(key=lambda c: order.get(c, len(order)))
    return stored, carried


def _fsync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------- stage
class _StopForTest(Exception):
    """Raised by the ``_stop_after_batches`` hook to simulate a killed job."""


class TooManyCaptionFailures(UserError):
    """More of a shard's clips failed than ``max_failure_fraction``: nothing was published (exit 1)."""


def caption_shard(frames: str | os.PathLike, out: str | os.PathLike, options: dict | CaptionOptions,
                  failures: str | None = None,
                  ids: str | None = None, _stop_after_batches: int | None = None,
                  failures_copy: str | os.PathLike | None = None) -> dict:
    """Caption a shard; returns ``{"resumed", "captioned", "failed", "total"}`` (see the module docstring).

    Raises ``TooManyCaptionFailures`` (after writing the failure TSV, its copy and the log lines, and without
    publishing ``out``) when the shard's own failures exceed ``max_failure_fraction``."""
    from clipvip.data.frame_store import FrameStore
    from clipvip.data.manifest import default_failures_path, log_first_failures, write_failures

    opts = options if isinstance(options, CaptionOptions) else CaptionOptions.from_dict(options)
    model_name = opts.model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    failures_path = Path(failures) if failures else out.with_name(out.name.removesuffix(".jsonl") + ".failures.tsv")

    if not Path(frames).exists():
        raise UserError(f"--frames: frame store {frames} does not exist")
    store = FrameStore(frames)
    todo_all, failed = expected_clips(store, default_failures_path(frames), ids)
    done = {r["clip_id"] for r in read_partial(partial, model_name)}
    if done:
        print(f"captions: resuming: {len(done)} done", file=sys.stderr)
    todo = [c for c in todo_all if c not in done]

    captioner = None
    if todo:
        try:
            captioner = Captioner(model_name, opts.device, opts.num_beams, opts.max_new_tokens, opts.prompt,
                                  opts.seed)
        except (OSError, ValueError) as exc:  # no such folder / hub name, not an image-to-text model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"captions.model {model_name!r} cannot be loaded as an image captioner: {first}") from None
    batch_size, every = opts.batch_size, opts.checkpoint_every
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    captioned = 0
    with open(partial, "a", encoding="utf-8") as fh:
        for number, batch in enumerate(tqdm(batches, desc=f"captions {out.name}", unit="batch",
                                            disable=hide_progress(None), mininterval=2.0), 1):
            results, errors = _caption_batch(captioner, store, batch)
            failed += errors
            fh.write("".join(json.dumps({"clip_id": c, "caption": t, "model": model_name}) + "\n" for c, t in results))
            captioned += len(results)
            if number % every == 0 or number == len(batches):
                _fsync(fh)
            if _stop_after_batches is not None and number >= _stop_after_batches:
                _fsync(fh)
                raise _StopForTest(f"stopped after {number} batches")
        _fsync(fh)
    store.close()
    for path in [failures_path] + ([Path(failures_copy)] if failures_copy else []):
        write_failures(path, failed)
    own = [row for row in failed if not row[1].startswith("frames:")]  # frames failures were judged there
    attempted = len(todo_all) + sum(1 for row in own if row[1] == "not_in_store")
    log_first_failures("captions", failed)
    if len(own) > opts.max_failure_fraction * attempted:
        where = (f"{failures_copy} (kept; the rule's output {failures_path} is deleted with a failed job)"
                 if failures_copy else str(failures_path))
        raise TooManyCaptionFailures(
            f"{len(own)} of {attempted} clips could not be captioned, more than max_failure_fraction="
            f"{opts.max_failure_fraction}; no captions written to {out} (finished ones stay in {partial} for "
            f"a rerun); reasons in {where}")
    os.replace(partial, out)
    stats = {"resumed": len(done), "captioned": captioned, "failed": len(failed), "total": len(todo_all)}
    print(f"captions: {out}: {len(done) + captioned} captions ({len(done)} resumed), {len(failed)} failures "
          f"in {failures_path}", file=sys.stderr)
    return stats


def _caption_batch(captioner: Captioner, store, batch: list[str]):
    """Caption a batch; on an exception fall back to one clip at a time so only the bad clips fail."""
    images, ok, errors = [], [], []
    for clip_id in batch:
        try:
            images.append(store.middle(clip_id))
            ok.append(clip_id)
        except Exception as exc:  # noqa: BLE001 - any unreadable clip is recorded, not fatal
            errors.append((clip_id, "caption_error", f"middle frame: {type(exc).__name__}: {exc}"))
    if not ok:
        return [], errors
    try:
        return list(zip(ok, captioner(images))), errors
    except Exception:  # noqa: BLE001
        results = []
        for clip_id, image in zip(ok, images):
            try:
                results.append((clip_id, captioner([image])[0]))
            except Exception as exc:  # noqa: BLE001
                errors.append((clip_id, "caption_error", f"{type(exc).__name__}: {exc}"))
        return results, errors


@stage_main("captions")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip captions", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + CaptionOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", required=True, help="frame-store shard <k>.h5 (its <k>.failures.tsv is read too)")
    parser.add_argument("--out", required=True, help="captions JSONL to write")
    parser.add_argument("--failures", default=None, help="failure TSV (default <out stem>.failures.tsv)")
    parser.add_argument("--ids", default=None, help="optional shard id list; ids in neither store nor manifest fail")
    parser.add_argument("--failures-copy", default=None,
                        help="second copy of the failure TSV outside the rule's outputs (a failed Snakemake job "
                             "deletes its outputs; this copy survives), e.g. R/failures/captions/<ds>/<k>.failures.tsv")
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of CaptionOptions keys")
    args = parser.parse_args(argv)
    try:
        caption_shard(args.frames, args.out, CaptionOptions.from_dict(parse_options(args.options)), args.failures,
                      args.ids, failures_copy=args.failures_copy)
    except TooManyCaptionFailures as exc:
        print(f"clipvip captions: error: {exc}", file=sys.stderr)
        return 1
    return 0
