"""Build the demo's tiny models offline: a CLIP (+ tokenizer) and an image captioner (+ processor).

Usage:
    clipvip tiny-models --out R/pretrained --options '{"clip": {"image_size": 64}, "captioner": {"kind": "blip"}}'

    from clipvip.tiny_models import build_tiny_captioner
    build_tiny_captioner("R/pretrained/captioner", kind="git", image_size=32)

Writes ``OUT/clip`` (``clipvip.model.tiny.build_tiny_clip(OUT/clip, **options["clip"])``), ``OUT/captioner``
(randomly initialised, seeded; loads back with ``AutoModelForImageTextToText`` + ``AutoProcessor`` exactly
like a hub name such as ``Salesforce/blip-image-captioning-base``) and, last, ``OUT/DONE.json``.

With ``train`` steps > 0 (``TinyTrainOptions``; the demo's default) both are then *pre-trained* on a still-image
corpus drawn by the demo's renderer (``clipvip.demo_data.render_still``: one shape, its colour, size and grid
cell; captions like "a small red square in the top left", half of them with a motion clause the still cannot
show, as web alt-text names actions: ``still_alt_text``): the CLIP with the symmetric InfoNCE loss of CLIP's
own training, the captioner with next-token cross-entropy on short descriptions ("a red square"). Plain,
seeded PyTorch loops: they stand in for OpenAI's CLIP training and BLIP's captioning data. The CLIP then
knows *what* is in a frame and the words of video captions, but nothing about motion; losses are in ``OUT/pretrain_log.json``.

Both captioner kinds use, as BLIP and GIT do, a lower-case WordPiece tokenizer (``tokenizer: wordpiece``), its
vocabulary learnt from the renderer's still captions (``captioner_wordpiece``): BLIP's ``[DEC]`` or GIT's
``[CLS]`` starts a caption, ``[SEP]`` ends it. ``tokenizer: clip`` takes the real CLIP BPE instead
(``clipvip.tokenizer.build_clip_tokenizer``; ``<|startoftext|>`` starts, ``<|endoftext|>`` ends and pads); no
vocabulary is downloaded either way.
A random captioner writes gibberish, but deterministically (greedy/beam search, fixed seed).

VideoCLIP's tiny BERT (the demo's stand-in for ``bert-base-uncased``; ``--only bert``, its own workflow rule so
that building it never reruns the CLIP and captioner):

    clipvip tiny-models --out R/pretrained --only bert --corpus R/demo/annotations/demo_pretrain_train.jsonl ... \
        --options '{"bert": {"hidden_size": 64, "layers": 4}}'

writes ``OUT/bert`` (atomically): a seeded random ``BertModel`` built from a ``BertConfig`` (``TinyBertOptions``)
and a WordPiece ``BertTokenizerFast`` whose vocabulary is trained on the ``text`` of the ``--corpus`` annotation
JSONLs (``clipvip.model.videoclip.build_tiny_bert``); ``VideoCLIPModel.from_pretrained(OUT/bert)`` loads it as it
would the hub BERT. It is *not* pre-trained on text (bert-base-uncased is): VideoCLIP starts from a random text
tower on the demo.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from clipvip.registry import TINY_CAPTIONERS
from clipvip.stage import (OptionError, StageOptions, UserError, atomic_path, option, parse_options,
                           stage_main, write_json_atomic)


POSITION_INITS = ("random", "sincos")  # the tiny CLIP's vision position embeddings at init (clipvip.model.tiny)


@dataclass
class TinyClipOptions(StageOptions):
    STAGE = "tiny-models"
    image_size: int = option(64, "input resolution", minimum=16)
    patch_size: int = option(16, "ViT patch size", minimum=2)
    hidden_size: int = option(64, "vision width", minimum=8)
    layers: int = option(2, "vision layers", minimum=1)
    heads: int = option(2, "attention heads (vision and text)", minimum=1)
    text_hidden: int = option(64, "text width", minimum=8)
    text_layers: int = option(2, "text layers", minimum=1)
    projection_dim: int = option(64, "joint embedding size", minimum=8)
    max_position_embeddings: int = option(77, "text positions", minimum=8)
    position_init: str = option("random", "vision position embeddings at init: random (N(0, 0.02), HF's) | sincos "
                                "(MAE's 2D sine-cosine table, still learnt; clipvip.model.tiny)",
                                choices=POSITION_INITS)
    position_scale: float = option(2.0, "per-channel amplitude of the sincos table (patch tokens are ~1.6)",
                                   minimum=0.0)
    seed: int = option(0, "init seed")

    def check(self, where: str) -> None:
        if self.position_init == "sincos" and self.hidden_size % 4:
            raise OptionError(f"{where}.hidden_size", f"{self.hidden_size} is not a multiple of 4 (sincos "
                              "position embeddings split it into column and row sines and cosines)")


@dataclass
class TinyCaptionerOptions(StageOptions):
    STAGE = "tiny-models"
    kind: str = option("blip", "captioner family (clipvip.registry.TINY_CAPTIONERS)", choices=TINY_CAPTIONERS.names)
    image_size: int = option(32, "input resolution", minimum=16)
    patch_size: int = option(16, "ViT patch size", minimum=2)
    hidden_size: int = option(32, "width of vision and text", minimum=8)
    layers: int = option(1, "layers of vision and text", minimum=1)
    heads: int = option(2, "attention heads", minimum=1)
    max_position_embeddings: int = option(64, "text positions", minimum=8)
    tokenizer: str = option("wordpiece", "text vocabulary: 'wordpiece' = a lower-case WordPiece vocabulary learnt "
                            "from the renderer's still captions, the kind BLIP and GIT use (bert-base-uncased; "
                            "BLIP starts captions with [DEC]); 'clip' = the real 49408-token CLIP BPE (17x "
                            "slower to train: its output softmax dominates)", choices=("wordpiece", "clip"))
    vocab_size: int = option(512, "WordPiece vocabulary size (at most)", minimum=16)
    seed: int = option(0, "init seed")


@dataclass
class TinyTrainOptions(StageOptions):
    STAGE = "tiny-models"
    clip_steps: int = option(0, "image-text contrastive steps of the tiny CLIP (0 = leave it random)", minimum=0)
    clip_batch_size: int = option(128, "images per CLIP step", minimum=2)
    clip_lr: float = option(2e-3, "AdamW peak lr of the CLIP (linear warm-up, cosine decay)", minimum=0.0)
    clip_motion_text: float = option(0.5, "share of the CLIP's alt-texts with a motion clause the still cannot "
                                     "show (clipvip.demo_data.still_alt_text): its text tower knows the words of "
                                     "video captions, as OpenAI's CLIP does", minimum=0.0, maximum=1.0)
    clip_position_pairs: float = option(0.0, "share of each CLIP batch that repeats another still in another "
                                        "cell: negatives only the position separates", minimum=0.0, maximum=0.5)
    clip_shape_pairs: float = option(0.0, "share of each CLIP batch that repeats another still with another "
                                     "shape: negatives only the shape separates", minimum=0.0, maximum=0.5)
    clip_motion_clause: str = option("random", "direction of those clauses: random (the still cannot show it) | "
                                     "arrival (a motion ending where the shape is; clipvip.demo_data."
                                     "arrival_motions)", choices=("random", "arrival"))
    captioner_steps: int = option(0, "captioning steps of the tiny captioner (0 = leave it random)", minimum=0)
    captioner_batch_size: int = option(64, "images per captioner step", minimum=1)
    captioner_lr: float = option(2e-3, "AdamW peak lr of the captioner", minimum=0.0)
    warmup_ratio: float = option(0.1, "share of steps with linear lr warm-up", minimum=0.0, maximum=1.0)
    weight_decay: float = option(0.05, "AdamW weight decay", minimum=0.0)
    frame_size: int = option(64, "side of the rendered still images (the demo corpus' frame_size)", minimum=16)
    max_text_len: int = option(32, "text tokens of the CLIP's captions", minimum=8, maximum=77)
    threads: int | None = option(None, "torch CPU threads; None = torch's default", minimum=1)
    seed: int = option(0, "image corpus and training seed")

    def check(self, where: str) -> None:
        if self.clip_position_pairs + self.clip_shape_pairs > 0.5:
            raise OptionError(f"{where}.clip_shape_pairs", f"clip_position_pairs {self.clip_position_pairs} + "
                              f"clip_shape_pairs {self.clip_shape_pairs} > 0.5: every repeated still needs its own "
                              "original in the batch")


@dataclass
class TinyBertOptions(StageOptions):
    STAGE = "tiny-models"
    hidden_size: int = option(64, "BERT width (the tiny CLIP's text width)", minimum=8)
    layers: int = option(4, "BERT layers (VideoCLIP's video tower takes the first num_video_layers)", minimum=1)
    heads: int = option(2, "attention heads", minimum=1)
    intermediate_size: int = option(256, "MLP width (4 x hidden, as BERT)", minimum=8)
    max_position_embeddings: int = option(128, "positions: >= VideoCLIP's max_text_len (63) and max_video_len + 2 "
                                          "(34)", minimum=8)
    vocab_size: int = option(1000, "WordPiece vocabulary size (at most; learnt from --corpus)", minimum=16)
    seed: int = option(0, "init seed")

    def check(self, where: str) -> None:
        if self.hidden_size % self.heads:
            raise OptionError(f"{where}.heads", f"hidden_size {self.hidden_size} is not a multiple of {self.heads}")


@dataclass
class TinyModelsOptions(StageOptions):
    STAGE = "tiny-models"
    clip: dict = option({}, "TinyClipOptions of the tiny CLIP")
    captioner: dict = option({}, "TinyCaptionerOptions of the tiny captioner")
    train: dict = option({}, "TinyTrainOptions: image-text pre-training of both (default: none, random models)")
    bert: dict = option({}, "TinyBertOptions of VideoCLIP's tiny BERT (built only with --only bert)")

    def check(self, where: str) -> None:
        # Nested sections are checked (and filled) by their own options classes.
        self.clip = TinyClipOptions.from_dict(self.clip, f"{where}.clip").to_dict()
        self.captioner = TinyCaptionerOptions.from_dict(self.captioner, f"{where}.captioner").to_dict()
        self.train = TinyTrainOptions.from_dict(self.train, f"{where}.train").to_dict()
        self.bert = TinyBertOptions.from_dict(self.bert, f"{where}.bert").to_dict()


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
TINY_CAPTIONERS.register("blip", _blip)
TINY_CAPTIONERS.register("git", _git)


def captioner_wordpiece(kind: str, vocab_size: int, max_length: int):
    """A WordPiece tokenizer learnt from the words the demo's renderer uses in still captions and alt-texts.

    Its start token is the one the captioner family starts captions with: BLIP's decoder start ``[DEC]``
    (replacing ``[CLS]``, as BLIP does), GIT's ``[CLS]``; ``[SEP]`` ends a caption."""
    import numpy as np

    from clipvip.demo_data import still_alt_text, still_caption, still_short_caption, still_specs
    from clipvip.tokenizer import build_wordpiece_tokenizer

    rng = np.random.default_rng(0)
    specs = still_specs(rng, 2000)
    corpus = [t for s in specs for t in (still_caption(s, rng), still_alt_text(s, rng, 1.0), still_short_caption(s))]
    start = {"blip": "[DEC]"}.get(kind, "[CLS]")
    return build_wordpiece_tokenizer(corpus, vocab_size, extra_specials=("[DEC]",) if start == "[DEC]" else (),
                                     bos_token=start, eos_token="[SEP]", model_max_length=max_length)


def build_tiny_captioner(out_dir, **options) -> Path:
    """Save a seeded random tiny captioner (``kind``: a ``TINY_CAPTIONERS`` name) and its processor."""
    import torch

    from clipvip.tokenizer import build_clip_tokenizer

    o = TinyCaptionerOptions.from_dict(options).to_dict()
    if o["tokenizer"] == "clip":
        tokenizer = build_clip_tokenizer(model_max_length=o["max_position_embeddings"])
    else:
        tokenizer = captioner_wordpiece(o["kind"], o["vocab_size"], o["max_position_embeddings"])
    torch.manual_seed(int(o["seed"]))
    model, processor = TINY_CAPTIONERS.get(o["kind"])(o, tokenizer)
    model.generation_config.do_sample = False
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _schedule(step: int, steps: int, warmup_ratio: float) -> float:
    import math

    warmup = max(1, int(round(warmup_ratio * steps)))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _optimizer(model, lr: float, weight_decay: float, steps: int, warmup_ratio: float):
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _schedule(step, steps, warmup_ratio))
    return opt, sched


def _still_batch(rng, count: int, frame_size: int, position_share: float = 0.0, shape_share: float = 0.0):
    """``(specs, uint8 images [count, size, size, 3])`` of a fresh random still-image batch; ``position_share``
    of it repeats other stills of the batch in another cell (negatives that only the position separates),
    ``shape_share`` repeats others with another shape, at the same spot (negatives only the shape separates)."""
    import numpy as np

    from clipvip.demo_data import SHAPES, render_still, still_specs

    moved, reshaped = int(round(position_share * count)), int(round(shape_share * count))
    if 2 * (moved + reshaped) > count:
        raise ValueError(f"position share {position_share} + shape share {shape_share} > 0.5: every repeated "
                         "still needs its own original in the batch")
    specs = still_specs(rng, count - moved - reshaped)
    for original in specs[:moved]:
        cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != (original["row"], original["column"])]
        row, column = cells[int(rng.integers(len(cells)))]
        specs.append({**original, "row": row, "column": column,
                      "jitter": [float(v) for v in rng.uniform(-0.5, 0.5, 2)]})
    for original in specs[moved:moved + reshaped]:
        specs.append({**original, "shape": str(rng.choice([x for x in SHAPES if x != original["shape"]]))})
    return specs, np.stack([render_still(s, frame_size) for s in specs])


def pretrain_tiny_clip(model_dir, options: dict | TinyTrainOptions) -> list[float]:
    """Contrastive image-text training of the CLIP in ``model_dir`` on rendered stills; saved in place.

    Symmetric InfoNCE over the batch (``CLIPModel``'s own loss, learnable temperature clamped to ln 100);
    identical captions in a batch are positives of each other (soft targets), as in the video training.
    Returns the loss every 10 steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel, CLIPTokenizerFast

    from clipvip.data import normalize_pixels
    from clipvip.demo_data import still_alt_text

    o = TinyTrainOptions.from_dict(options) if not isinstance(options, TinyTrainOptions) else options
    torch.manual_seed(o.seed)
    rng = np.random.default_rng([o.seed, 7])
    model = CLIPModel.from_pretrained(model_dir)
    tokenizer = CLIPTokenizerFast.from_pretrained(model_dir)
    opt, sched = _optimizer(model, o.clip_lr, o.weight_decay, o.clip_steps, o.warmup_ratio)
    size = int(model.config.vision_config.image_size)
    losses = []
    model.train()
    for step in range(o.clip_steps):
        specs, images = _still_batch(rng, o.clip_batch_size, o.frame_size, o.clip_position_pairs,
                                     o.clip_shape_pairs)
        texts = [still_alt_text(s, rng, o.clip_motion_text, o.clip_motion_clause) for s in specs]
        pixels = normalize_pixels(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        if pixels.shape[-1] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        enc = tokenizer(texts, padding=True, truncation=True, max_length=o.max_text_len, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
        image, text = F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)
        logits = model.logit_scale.exp() * text @ image.T
        keys = [(s["colour"], s["shape"], s["size"], s["row"], s["column"]) for s in specs]
        same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100.0))
        if step % 10 == 0 or step == o.clip_steps - 1:
            losses.append(round(float(loss.detach()), 4))
    model.save_pretrained(model_dir)
    return losses


def pretrain_tiny_captioner(model_dir, options: dict | TinyTrainOptions) -> list[float]:
    """Next-token training of the captioner in ``model_dir`` on stills -> "a red square"; saved in place."""
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from clipvip.demo_data import still_short_caption

    o = TinyTrainOptions.from_dict(options) if not isinstance(options, TinyTrainOptions) else options
    torch.manual_seed(o.seed + 1)
    rng = np.random.default_rng([o.seed, 8])
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    opt, sched = _optimizer(model, o.captioner_lr, o.weight_decay, o.captioner_steps, o.warmup_ratio)
    eos = tokenizer.eos_token_id
    losses = []
    model.train()
    for step in range(o.captioner_steps):
        specs, images = _still_batch(rng, o.captioner_batch_size, o.frame_size)
        pixels = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        enc = tokenizer([still_short_caption(s) for s in specs], padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if tokenizer.cls_token_id is not None and bool((ids[:, 0] == tokenizer.cls_token_id).all()):
            ids[:, 0] = tokenizer.bos_token_id  # BLIP: [DEC] takes [CLS]'s place (a no-op for GIT)
        elif ids[0, 0] != tokenizer.bos_token_id:  # every caption starts with the start token
            ids = torch.cat([torch.full_like(ids[:, :1], tokenizer.bos_token_id), ids], 1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        labels = ids.masked_fill(mask == 0, -100)  # the end token keeps its label, also where pad == eos
        loss = _captioner_loss(model, pixels, ids, mask, labels, eos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == o.captioner_steps - 1:
            losses.append(round(float(loss.detach()), 4))
    model.save_pretrained(model_dir)
    return losses


def _captioner_loss(model, pixels, ids, mask, labels, eos):
    """Mean next-token cross-entropy of the captions (BLIP and GIT shift the labels themselves)."""
    return model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss


def captioner_accuracy(model_dir, frame_size: int = 64, count: int = 128, seed: int = 1000) -> dict:
    """Share of held-out stills (the videos' small shapes) whose greedy caption names the right colour / shape
    (chance: 1/8, 1/4): whether the auxiliary captions will carry information."""
    import numpy as np

    from clipvip.captions import Captioner
    from clipvip.demo_data import render_still, still_specs

    specs = [dict(s, size="small") for s in still_specs(np.random.default_rng([seed, 9]), count)]
    captioner = Captioner(str(model_dir), "cpu", num_beams=1, max_new_tokens=12)
    captions = [c for i in range(0, count, 64)
                for c in captioner([render_still(s, frame_size) for s in specs[i:i + 64]])]
    hits = lambda key: round(float(np.mean([s[key] in c.split() for s, c in zip(specs, captions)])), 3)  # noqa: E731
    return {"colour": hits("colour"), "shape": hits("shape"), "examples": captions[:4]}


PARTS = ("clip", "captioner")  # each its own workflow job: the CLIP's pre-training never waits for the captioner's


def _part_options(options) -> tuple[TinyModelsOptions, TinyTrainOptions]:
    opts = options if isinstance(options, TinyModelsOptions) else TinyModelsOptions.from_dict(options)
    train = TinyTrainOptions.from_dict(opts.train)
    if train.threads:
        import torch

        torch.set_num_threads(train.threads)
    return opts, train


def part_options(options: dict, part: str) -> dict:
    """The ``tiny_models`` options one part uses (its geometry, the shared and its own ``train`` keys): what
    its workflow rule passes, so changing the captioner's steps never rebuilds the CLIP and vice versa."""
    other = [p for p in PARTS if p != part]
    train = {k: v for k, v in (options.get("train") or {}).items() if not any(k.startswith(f"{o}_") for o in other)}
    return {part: options.get(part) or {}, "train": train}


def _build_part(out_dir, options, part: str, build, pretrain) -> dict:
    """``OUT/<part>`` from ``build(folder, **geometry)``, then ``pretrain(folder, train)`` (a log dict, empty when
    the part has no steps), and, last, ``OUT/DONE_<part>.json``: its resolved options (``part_options``) and
    training log -- written atomically, so its presence means the part is complete."""
    opts, train = _part_options(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"DONE_{part}.json").unlink(missing_ok=True)
    folder = build(out / part, **getattr(opts, part))
    done = {part: str(folder), "options": part_options(opts.to_dict(), part), "pretrain": pretrain(folder, train)}
    write_json_atomic(out / f"DONE_{part}.json", done)
    return done


def _timed(log: dict, key: str, started: float) -> dict:
    import time

    return {**log, f"{key}_seconds": round(time.perf_counter() - started, 1)}


def build_demo_clip(out_dir, options: dict | TinyModelsOptions | None = None) -> dict:
    """``OUT/clip`` (built, then image-text pre-trained when ``train.clip_steps``) and ``OUT/DONE_clip.json``."""
    import time

    from clipvip.model.tiny import build_tiny_clip

    def pretrain(folder, train):
        started = time.perf_counter()
        if not train.clip_steps:
            return {}
        return _timed({"clip_loss": pretrain_tiny_clip(folder, train)}, "clip", started)

    return _build_part(out_dir, options, "clip", build_tiny_clip, pretrain)


def build_demo_captioner(out_dir, options: dict | TinyModelsOptions | None = None) -> dict:
    """``OUT/captioner`` (built, then trained on "a red square" when ``train.captioner_steps``, with its held-out
    accuracy) and ``OUT/DONE_captioner.json``."""
    import time

    def pretrain(folder, train):
        started = time.perf_counter()
        if not train.captioner_steps:
            return {}
        log = _timed({"captioner_loss": pretrain_tiny_captioner(folder, train)}, "captioner", started)
        return {**log, "captioner_heldout": captioner_accuracy(folder, train.frame_size, seed=train.seed + 1000)}

    return _build_part(out_dir, options, "captioner", build_tiny_captioner, pretrain)


def build_tiny_models(out_dir, options: dict | None = None) -> dict:
    """Both parts (``DONE_clip.json``, ``DONE_captioner.json``), then ``OUT/pretrain_log.json`` and ``OUT/DONE.json`` last."""
    opts = options if isinstance(options, TinyModelsOptions) else TinyModelsOptions.from_dict(options)
    out = Path(out_dir)
    (out / "DONE.json").unlink(missing_ok=True)
    clip, captioner = build_demo_clip(out, opts), build_demo_captioner(out, opts)
    log = {**clip["pretrain"], **captioner["pretrain"]}
    write_json_atomic(out / "pretrain_log.json", log)
    done = {"clip": clip["clip"], "captioner": captioner["captioner"], "options": opts.to_dict(), "pretrain": log}
    write_json_atomic(out / "DONE.json", done)
    return done


def corpus_texts(paths) -> list[str]:
    """Every ``text`` (a string or a list of strings) of annotation JSONLs, in file order; a line without text
    (e.g. timed subtitles) contributes its subtitle lines' texts."""
    texts = []
    for path in paths:
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise UserError(f"--corpus {path}:{number}: not JSON ({exc})") from None
                value = record.get("text") if isinstance(record, dict) else None
                if value is None and isinstance(record, dict) and isinstance(record.get("subtitles"), list):
                    value = [s.get("text") for s in record["subtitles"] if isinstance(s, dict)]
                values = [value] if isinstance(value, str) else list(value or [])
                texts += [t for t in values if isinstance(t, str) and t.strip()]
    if not texts:
        raise UserError(f"--corpus {' '.join(map(str, paths)) or '(none)'}: no text to learn a vocabulary from")
    return texts


def build_demo_bert(out_dir, corpus: list[str], options: dict | TinyBertOptions | None = None) -> Path:
    """``out_dir``: a tiny random BERT + WordPiece tokenizer learnt from ``corpus`` (written atomically)."""
    import shutil

    from clipvip.model.videoclip import build_tiny_bert

    o = options if isinstance(options, TinyBertOptions) else TinyBertOptions.from_dict(options)
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        build_tiny_bert(tmp, hidden_size=o.hidden_size, layers=o.layers, heads=o.heads,
                        intermediate_size=o.intermediate_size, max_position_embeddings=o.max_position_embeddings,
                        vocab_size=o.vocab_size, corpus=corpus, seed=o.seed)
        write_json_atomic(tmp / "tiny_bert.json", {"options": o.to_dict(), "corpus_texts": len(corpus)})
        if out.exists():
            shutil.rmtree(out)
    return out


@stage_main("tiny-models")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip tiny-models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for clip/, captioner/ and DONE.json (or bert/)")
    parser.add_argument("--options", default=None,
                        help='JSON: {"clip": {build_tiny_clip kwargs}, "captioner": {"kind": "blip"|"git", ...}, '
                             '"bert": {TinyBertOptions}}')
    parser.add_argument("--only", choices=(*PARTS, "bert"), default=None,
                        help="clip / captioner: build (and pre-train) only that part, OUT/<part>/ and OUT/DONE_<part>.json "
                             "last; bert: only OUT/bert (VideoCLIP's tiny BERT); default: clip and captioner, then "
                             "OUT/DONE.json")
    parser.add_argument("--corpus", nargs="+", default=[],
                        help="--only bert: annotation JSONLs whose texts the WordPiece vocabulary is learnt from")
    args = parser.parse_args(argv)
    opts = TinyModelsOptions.from_dict(parse_options(args.options))
    if args.only == "bert":
        print(build_demo_bert(Path(args.out) / "bert", corpus_texts(args.corpus), opts.bert))
        return 0
    if args.corpus:
        parser.error("--corpus is only used with --only bert")
    build = {"clip": build_demo_clip, "captioner": build_demo_captioner}.get(args.only, build_tiny_models)
    print(json.dumps(build(args.out, opts), indent=2))
    return 0
