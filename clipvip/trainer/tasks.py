"""What differs between the trainer's tasks (option ``task``): model, data, the step module, optimizer groups,
validation and extra export files. ``clipvip.trainer.loop.Trainer`` calls these; plan, engine, resume,
checkpoints and launchers are shared.

Usage (the loop): ``task = make_task(opts.task)``; then ``task.build_model(trainer)``, ``task.build_data(trainer)``
-> ``(dataset, collate_fn, val)``, ``task.step_module(trainer)``, ``task.param_groups(trainer)``,
``task.evaluate(trainer)`` -> metrics dict, ``task.export_files(trainer)`` -> ``{name: text}`` written into
``model/``.

- ``retrieval``: ``ContrastiveStep`` (clipvip.trainer.step) over the configured loss, ``model.param_groups``,
  validation = ``clipvip.retrieval.evaluate_model``.
- ``recognition`` (Vita-CLIP): ``clipvip.recognition.RecognitionStep`` (CE over exp(s)·cos(video, class text))
  over the ``--class-list`` classes, ``RecognitionDataset`` (stride / uniform sampling), validation = top-1 /
  top-5 on ``--val-annotations`` through ``clipvip.recognition.evaluate_recognition``. The loss is local to a
  rank (every rank holds every class, no gather), so the logged loss is the mean over ranks (``local_loss``).
  The exported folder holds the class names twice: in ``config.json`` (``vita.class_names``, what
  ``build_vita_model(folder)`` reads) and as ``classes.txt``.
- ``video_encoder: vita`` in either task: the model comes from ``build_vita_model`` (CLIP frozen) and the
  optimizer holds only ``vita_param_groups`` (prompts, summary attention, temporal embedding, text context,
  ``logit_scale``). ``compile`` has no effect on it (Vita runs CLIP's layers itself, not the tower's forward).
"""
from __future__ import annotations

from pathlib import Path

from clipvip.stage import UserError


def load_tokenizer(init: str):
    if Path(init).is_dir():
        from clipvip.data.text import load_tokenizer as from_folder

        return from_folder(init)
    from transformers import CLIPTokenizerFast

    return CLIPTokenizerFast.from_pretrained(init)


def build_vita(init: str, opts, class_names: list[str] | None):
    """The frozen-CLIP Vita model for ``opts`` (``num_frames`` = T_train; ``opts.vita`` = VitaConfig keys)."""
    from clipvip.model.vita import build_vita_model

    try:
        return build_vita_model(init, class_names=class_names, vita={**opts.vita, "num_frames": opts.num_frames})
    except ValueError as exc:
        raise UserError(f"--init {init}: {exc}") from None


class RetrievalTask:
    name = "retrieval"
    local_loss = False  # the contrastive losses gather features: every rank computes the global loss

    def build_model(self, t) -> None:
        from clipvip.model import CLIPViPModel

        opts, args = t.opts, t.args
        if opts.video_encoder == "vita":
            t.model = build_vita(args.init, opts, None)
        else:
            loaded = CLIPViPModel.from_pretrained(args.init, video_encoder=opts.video_encoder,
                                                  temporal_init_std=opts.temporal_init_std)
            t.model = loaded[0] if isinstance(loaded, tuple) else loaded
        t.tokenizer = load_tokenizer(args.init)

    def build_data(self, t):
        from clipvip.data import FrameIndex
        from clipvip.data.annotations import read_annotations, read_captions
        from clipvip.data.datasets import FinetuneDataset, PretrainDataset
        from clipvip.data.text import TokenizingCollator

        opts, args = t.opts, t.args
        if args.stage == "finetune" and opts.pair_sampling != "clip":
            raise UserError(f"pair_sampling {opts.pair_sampling!r} is a post-pretraining option (windows of long "
                            "videos with timed subtitles); CLIP-ViP fine-tuning uses whole clips (clip)")
        windowed = args.stage == "pretrain" and opts.pair_sampling != "clip"
        subtitles = None
        if windowed:
            subtitles, anns = _timed_subtitles(args.annotations)
        else:
            anns = read_annotations(args.annotations, text_mode=opts.text_mode)
        index = FrameIndex(args.frames_index)
        if args.stage == "finetune":
            dataset = FinetuneDataset(index, anns, opts.num_frames, t.image_size, train=True, seed=opts.seed)
        else:
            from clipvip.registry import LOSSES

            captions = read_captions(args.captions) if args.captions else None
            # Missing captions beyond max_missing_captions stop the run (never a silent subtitle fallback).
            common = dict(max_missing_captions=opts.max_missing_captions,
                          captions_source=" ".join(map(str, args.captions)) or None,
                          needs_captions="C" in LOSSES.get(opts.loss).keys)
            if windowed:
                from clipvip.data.datasets import WindowedPretrainDataset

                dataset = WindowedPretrainDataset(
                    index, anns, subtitles, captions, opts.num_frames, t.image_size,
                    tokenize=_Tokenize(t.tokenizer), pair_sampling=opts.pair_sampling, seed=opts.seed,
                    max_text_len=opts.max_text_len, **common)
            else:
                dataset = PretrainDataset(index, anns, captions, opts.num_frames, t.image_size, seed=opts.seed,
                                          **common)
        val = None
        if args.val_annotations:
            val = dict(frame_index=FrameIndex(args.val_frames_index or args.frames_index),
                       annotations=read_annotations(args.val_annotations, text_mode=opts.text_mode))
        return dataset, TokenizingCollator(t.tokenizer, opts.max_text_len), val

    def retrieval_layout(self, t) -> tuple[int, int]:
        """``batching: retrieval``: (videos, pairs per video). A CLIP-ViP item is a whole clip with its text
        (``pair_sampling: clip``), so each clustered video is one item of its batch."""
        return len(t.dataset), 1

    def retrieval_embeddings(self, t, rows, epoch: int):
        """The cluster embedding of clips ``rows`` (dataset indices): (video + text) / 2 of one deterministic
        draw, the evaluation protocol's -- the store's uniform frames and the clip's first text (more draws of
        a whole clip would differ only by frame jitter). The caller sets eval mode and no_grad.
        -> float32 [len(rows), projection_dim]."""
        import torch

        from clipvip.data import to_device
        from clipvip.data.loader import build_loader
        from clipvip.data.retrieval_batches import mix_embeddings
        from clipvip.data.text import TokenizingCollator

        items = _EmbeddingItems(t.dataset, rows)
        loader = build_loader(items, None, t.opts.eval_batch_size, t.plan.eval_workers,
                              TokenizingCollator(t.tokenizer, t.opts.max_text_len), persistent_workers=False)
        dtype = next(t.model.parameters()).dtype
        video, text = [], []
        for batch in loader:
            batch = to_device(batch, t.device, dtype)
            video.append(t.model.encode_video(batch["pixel_values"]).float().cpu())
            text.append(t.model.encode_text(batch["input_ids"], batch["attention_mask"]).float().cpu())
        return mix_embeddings(torch.cat(video), torch.cat(text), 1)

    def step_module(self, t):
        from clipvip.trainer.step import ContrastiveStep

        return ContrastiveStep(t.model, t.opts.loss, dedup_texts=t.opts.dedup_texts)

    def param_groups(self, t) -> list[dict]:
        opts = t.opts
        if opts.video_encoder == "vita":
            from clipvip.model.vita import vita_param_groups

            return vita_param_groups(t.model, lr=opts.lr, weight_decay=opts.weight_decay)
        return t.model.param_groups(weight_decay=opts.weight_decay, lr=opts.lr,
                                    temporal_lr_mult=opts.temporal_lr_mult)

    def evaluate(self, t) -> dict:
        from clipvip.retrieval import evaluate_model

        opts = t.opts
        return evaluate_model(t.model, t.tokenizer, t.val["frame_index"], t.val["annotations"],
                              num_frames=opts.num_frames, max_text_len=opts.max_text_len,
                              batch_size=opts.eval_batch_size, device=t.device, image_size=t.image_size,
                              num_workers=t.plan.eval_workers, progress=False)

    def export_files(self, t) -> dict[str, str]:
        return {}


class _EmbeddingItems:
    """Items of the retrieval embedding pass: ``{"pixel_values": uniform frames, "text": first text}``."""

    def __init__(self, dataset, rows):
        self.dataset, self.rows = dataset, [int(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        record = self.dataset.records[self.rows[i]]
        return {"pixel_values": self.dataset.uniform_video(record["clip_id"]), "text": record["texts"][0]}


class RecognitionTask(RetrievalTask):
    name = "recognition"
    local_loss = True

    def build_model(self, t) -> None:
        from clipvip.data.recognition import read_class_list

        t.class_names = read_class_list(t.args.class_list)
        t.model = build_vita(t.args.init, t.opts, t.class_names)
        t.tokenizer = load_tokenizer(t.args.init)

    def _dataset(self, t, index, anns, train: bool):
        from clipvip.data.recognition import RecognitionDataset

        opts = t.opts
        return RecognitionDataset(index, anns, opts.num_frames, t.image_size, train=train,
                                  num_views=1 if train else opts.eval_views, sampling=opts.sampling,
                                  sampling_rate=opts.sampling_rate, seed=opts.seed)

    def build_data(self, t):
        from clipvip.data import FrameIndex
        from clipvip.data.recognition import collate_recognition, read_recognition_annotations

        args = t.args
        index = FrameIndex(args.frames_index)
        dataset = self._dataset(t, index, read_recognition_annotations(args.annotations, t.class_names), True)
        val = None
        if args.val_annotations:
            val_index = FrameIndex(args.val_frames_index) if args.val_frames_index else index
            val_anns = read_recognition_annotations(args.val_annotations, t.class_names)
            val = dict(dataset=self._dataset(t, val_index, val_anns, False))
        return dataset, collate_recognition, val

    def step_module(self, t):
        from clipvip.recognition import RecognitionStep

        return RecognitionStep(t.model, t.tokenizer, t.class_names, loss_name=t.opts.loss)

    def evaluate(self, t) -> dict:
        from clipvip.recognition import evaluate_recognition

        return evaluate_recognition(t.model, t.tokenizer, t.val["dataset"], t.class_names,
                                    batch_size=t.opts.eval_batch_size, device=t.device,
                                    num_workers=t.plan.eval_workers, zero_shot=False, progress=False)

    def export_files(self, t) -> dict[str, str]:
        return {"classes.txt": "".join(f"{name}\n" for name in t.class_names)}


class _Tokenize:
    """Token ids without specials (the overlapped sampler's token budget); a class so DataLoader workers pickle it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _timed_subtitles(path) -> tuple[dict, list[dict]]:
    """``pair_sampling: overlapped | aligned`` reads timed subtitles (``read_subtitles``, every bad line reported)
    -> ({clip_id: Subtitles}, records with the clip's whole text, for the clip-level parts: captions, embeddings)."""
    from clipvip.data.subtitles import read_subtitles

    if str(path).endswith(".arrow"):
        raise UserError(f"--annotations {path}: pair_sampling overlapped / aligned reads timed subtitles from the "
                        "annotation JSONL (lines with a 'subtitles' list); the Arrow table holds one text per clip")
    subs = read_subtitles(path)
    records = [{"clip_id": s.clip_id, "texts": [" ".join(line.text for line in s.lines)]} for s in subs]
    return {s.clip_id: s for s in subs}, records


TASKS = {"retrieval": RetrievalTask, "recognition": RecognitionTask}


def make_task(name: str):
    return TASKS[name]()
