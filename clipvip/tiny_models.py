"""Build the demo's tiny models offline: a CLIP (+ tokenizer) and an image captioner (+ processor).

Usage:
    clipvip tiny-models --out R/pretrained --options '{"clip": {"image_size": 64}, "captioner": {"kind": "blip"}}'

    from clipvip.tiny_models import build_tiny_captioner
    build_tiny_captioner("R/pretrained/captioner", kind="git", image_size=32)

Writes ``OUT/clip`` (``clipvip.model.tiny.build_tiny_clip(OUT/clip, **options["clip"])``), ``OUT/captioner``
(randomly initialised, seeded; loads back with ``AutoModelForImageTextToText`` + ``AutoProcessor`` exactly
like a hub name such as ``Salesforce/blip-image-captioning-base``) and, last, ``OUT/DONE.json``.

Both captioner kinds use the real CLIP BPE tokenizer (``clipvip.tokenizer.build_clip_tokenizer``), so no
vocabulary download is needed; ``<|startoftext|>`` starts and ``<|endoftext|>`` ends (and pads) a caption.
A random captioner writes gibberish, but deterministically (greedy/beam search, fixed seed).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from clipvip.cli import parse_options

CAPTIONER_DEFAULTS = {"kind": "blip", "image_size": 32, "patch_size": 16, "hidden_size": 32, "layers": 1,
                      "heads": 2, "max_position_embeddings": 64, "seed": 0}


def _text_ids(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _vision(o: dict) -> dict:
    return dict(hidden_size=o["hidden_size"], intermediate_size=4 * o["hidden_size"], num_hidden_layers=o["layers"],
                num_attention_heads=o["heads"], image_size=o["image_size"], patch_size=o["patch_size"])


def _text(o: dict, tokenizer) -> dict:
    return dict(hidden_size=o["hidden_size"], intermediate_size=4 * o["hidden_size"], num_hidden_layers=o["layers"],
                num_attention_heads=o["heads"], max_position_embeddings=o["max_position_embeddings"],
                **_text_ids(tokenizer))


def _blip(o: dict, tokenizer):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    text = _text(o, tokenizer)
    text.update(sep_token_id=tokenizer.eos_token_id, encoder_hidden_size=o["hidden_size"])
    model = BlipForConditionalGeneration(BlipConfig(vision_config=_vision(o), text_config=text))
    size = {"height": o["image_size"], "width": o["image_size"]}
    return model, BlipProcessor(image_processor=BlipImageProcessorPil(size=size), tokenizer=tokenizer)


def _git(o: dict, tokenizer):
    from transformers import CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor

    model = GitForCausalLM(GitConfig(vision_config=_vision(o), **_text(o, tokenizer)))
    images = CLIPImageProcessorPil(size={"shortest_edge": o["image_size"]},
                                   crop_size={"height": o["image_size"], "width": o["image_size"]})
    return model, GitProcessor(image_processor=images, tokenizer=tokenizer)


# kind -> builder(options, tokenizer) -> (model, processor)
CAPTIONER_BUILDERS = {"blip": _blip, "git": _git}


def build_tiny_captioner(out_dir, **options) -> Path:
    """Save a seeded random tiny captioner (``kind``: one of ``CAPTIONER_BUILDERS``) and its processor."""
    import torch

    from clipvip.tokenizer import build_clip_tokenizer

    o = {**CAPTIONER_DEFAULTS, **options}
    if o["kind"] not in CAPTIONER_BUILDERS:
        raise ValueError(f"captioner kind {o['kind']!r}; choose from {sorted(CAPTIONER_BUILDERS)}")
    tokenizer = build_clip_tokenizer(model_max_length=o["max_position_embeddings"])
    torch.manual_seed(int(o["seed"]))
    model, processor = CAPTIONER_BUILDERS[o["kind"]](o, tokenizer)
    model.generation_config.do_sample = False
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_models(out_dir, options: dict | None = None) -> dict:
    """``OUT/clip``, ``OUT/captioner`` and ``OUT/DONE.json`` (written last, atomically)."""
    from clipvip.model.tiny import build_tiny_clip

    options = options or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = build_tiny_clip(out / "clip", **options.get("clip", {}))
    captioner = build_tiny_captioner(out / "captioner", **options.get("captioner", {}))
    done = {"clip": str(clip), "captioner": str(captioner), "options": options}
    tmp = out / f"DONE.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(done, indent=2) + "\n")
    os.replace(tmp, out / "DONE.json")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip tiny-models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for clip/, captioner/ and DONE.json")
    parser.add_argument("--options", default=None,
                        help='JSON: {"clip": {build_tiny_clip kwargs}, "captioner": {"kind": "blip"|"git", ...}}')
    args = parser.parse_args(argv)
    print(json.dumps(build_tiny_models(args.out, parse_options(args.options)), indent=2))
    return 0
