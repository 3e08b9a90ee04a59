"""``method: videoclip``: the trainer's VideoCLIP task (issues 14 + 15) -- per-second features + timed subtitles.

Usage:
    clipvip train --stage pretrain --features-index R/features/how2/index.json --annotations subs.jsonl \
        --frames-index R/features/how2/index.json --init bert-base-uncased --out R/runs/videoclip \
        --checkpoint-dir R/checkpoints/videoclip --options '{"method": "videoclip"}'
    (``--frames-index`` is required by the command line; with method videoclip it may name the feature index,
    which ``--features-index`` overrides.)

Data: ``--annotations`` is a timed-subtitle JSONL (``clipvip.data.subtitles.read_subtitles``); features come from
``clipvip.data.feature_store.FeatureIndex``. Item k of an epoch is video ``k // clips_per_video``, draw
``k % clips_per_video`` of ``OverlappedSampler(mode=pair_sampling)`` (seeded by [seed, epoch, video, draw], so a
resumed run sees the same pairs); ``group_size = clips_per_video`` keeps a video's pairs in one batch under the
shared ``ResumableDistributedSampler`` (random batching). Plain (untimed) records whose ``text`` is a list of
captions (MSR-VTT train: 5 paraphrases) follow ``text_mode``: ``sample`` (default) pairs each draw with ONE of
the clip's captions (``caption_index``: seeded by [seed, CAPTION_STREAM, epoch, video, draw], so a resumed run
sees the same), as MMPT fine-tuning and CLIP-ViP's ``FinetuneDataset`` do; ``join`` keeps them joined into one
paragraph (DiDeMo-style sets). Timed subtitles are unaffected (spans over their lines); ``batching: retrieval`` batches whole clusters of similar
videos instead (``retrieval_layout`` / ``retrieval_embeddings``, ``clipvip.data.retrieval_batches``). An item: the window's feature rows (at most
``max_video_len``) and the span's BERT tokens (``[CLS] .. [SEP]``, at most ``max_text_len``). Videos listed in the
subtitles without features are ``missing`` (reported in config.json). Model: ``VideoCLIPModel.from_pretrained(
--init)`` (a BERT, or a saved VideoCLIP folder); loss ``videoclip``; optimizer Adam (no decay) and
``WarmupDecayLR`` (``adjust_ds_config``); export: ``VideoCLIPModel.save_pretrained`` + tokenizer.
Validation (``--val-annotations``): ``clipvip.videoclip_eval.evaluate_videoclip`` on those subtitles' clips
(the whole text of a clip -- with ``text_mode: sample`` each caption of a caption list -- vs its first 32 s,
texts at most ``max_text_len`` tokens).
"""
from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipvip.stage import UserError

CAPTION_STREAM = 1  # seeds the caption draw apart from the sampler's [seed, epoch, index, draw] stream


class VideoCLIPStep(nn.Module):
    """The module DeepSpeed wraps: batch -> ``(loss, terms)`` through ``LOSSES["videoclip"]``."""

    def __init__(self, model):
        super().__init__()
        from clipvip.registry import LOSSES

        self.model = model
        self.loss_fn = LOSSES.get("videoclip")

    def register_zero3_externals(self) -> None:  # no parameters outside submodules
        return None

    def forward(self, batch: dict):
        out = self.model(batch["features"], batch["video_mask"], batch["input_ids"], batch["attention_mask"])
        return self.loss_fn({k: v.float() for k, v in out.items()}, None)


class VideoCLIPDataset(torch.utils.data.Dataset):
    def __init__(self, features, subtitles: dict, tokenizer, opts, seed: int = 0, mode: str | None = None):
        from clipvip.data.overlapped import OverlappedSampler

        self.features = features
        self.videos = [v for v in sorted(subtitles) if v in features and subtitles[v].lines]
        self.missing = [v for v in sorted(subtitles) if v not in features]
        if not self.videos:
            raise UserError(f"no clip of the subtitles ({len(subtitles)}) has features in the feature index "
                            f"({len(features)} clips)")
        self.subtitles = subtitles
        self.clips_per_video = opts.clips_per_video
        self.max_video_len = opts.max_video_len
        self.max_text_len = opts.max_text_len
        self.text_mode = getattr(opts, "text_mode", "sample")
        if self.text_mode not in ("sample", "join"):
            raise ValueError(f"text_mode must be 'sample' or 'join', got {self.text_mode!r}")
        self.seed = int(seed)
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
        tok = tokenizer

        def tokenize(text):
            return tok(text, add_special_tokens=False)["input_ids"]

        self.sampler = OverlappedSampler(tokenize=tokenize, mode=mode or opts.pair_sampling, seed=seed,
                                         max_text_len=max(1, self.max_text_len - 2))
        # Shared memory: set_epoch in the main process reaches persistent DataLoader workers (as _StoreDataset).
        self._epoch = multiprocessing.RawValue("q", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def caption_index(self, clip_id: str, epoch: int, index: int, draw: int) -> int | None:
        """``text_mode: sample`` on an untimed record with several captions: the caption of draw ``draw`` of
        video ``index`` in ``epoch`` (a pure function of them and the seed); else None (the record as it is)."""
        subs = self.subtitles[clip_id]
        if self.text_mode != "sample" or subs.timed or len(subs.captions) < 2:
            return None
        rng = np.random.default_rng([self.seed, CAPTION_STREAM, int(epoch), int(index), int(draw)])
        return int(rng.integers(len(subs.captions)))

    def __getitem__(self, k: int) -> dict:
        v, draw = divmod(int(k), self.clips_per_video)
        clip_id = self.videos[v]
        feats = self.features.features(clip_id)
        epoch = self.epoch
        subs = self.subtitles[clip_id]
        chosen = self.caption_index(clip_id, epoch, v, draw)
        if chosen is not None:
            subs = subs.caption(chosen)
        pair = self.sampler.sample(subs, float(len(feats)), epoch, index=v, draw=draw)
        rows = pair.feature_rows(self.max_video_len)
        rows = rows[rows < len(feats)]
        if len(rows) == 0:
            rows = np.array([len(feats) - 1])
        return {"features": torch.from_numpy(feats[rows].astype(np.float32)), "token_ids": pair.token_ids,
                "clip_id": clip_id, "text": pair.text}

    def collate(self, items: list[dict]) -> dict:
        width = max(len(it["features"]) for it in items)
        dim = items[0]["features"].shape[1]
        feats = torch.zeros(len(items), width, dim)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, it in enumerate(items):
            feats[i, : len(it["features"])] = it["features"]
            mask[i, : len(it["features"])] = 1
        rows = [[self.cls, *it["token_ids"][: self.max_text_len - 2], self.sep] for it in items]
        text_width = max(len(r) for r in rows)
        ids = torch.full((len(items), text_width), self.pad, dtype=torch.long)
        amask = torch.zeros(len(items), text_width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            amask[i, : len(r)] = 1
        return {"features": feats, "video_mask": mask, "input_ids": ids, "attention_mask": amask,
                "clip_ids": [it["clip_id"] for it in items]}


def _durations(features) -> dict:
    return {cid: float(len(features.features(cid))) for cid in features.ids()}


class VideoCLIPTask:
    name = "videoclip"
    local_loss = False  # the loss gathers across ranks (the official MMContraLoss does not; see README)

    def _features(self, t):
        from clipvip.data.feature_store import FeatureIndex

        path = getattr(t.args, "features_index", None) or t.args.frames_index
        try:
            return FeatureIndex(path)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise UserError(f"--features-index {path}: not a feature index ({exc}); run `clipvip features`") from None

    def build_model(self, t) -> None:
        from transformers import AutoTokenizer

        from clipvip.model.videoclip import VideoCLIPModel

        opts, args = t.opts, t.args
        t.features = self._features(t)
        t.model = VideoCLIPModel.from_pretrained(args.init, feature_dim=t.features.dim,
                                                 num_video_layers=opts.num_video_layers,
                                                 max_video_len=opts.max_video_len)
        if t.model.feature_dim != t.features.dim:
            raise UserError(f"--init {args.init}: the model takes {t.model.feature_dim}-d features, the feature "
                            f"index holds {t.features.dim}-d ones")
        t.tokenizer = AutoTokenizer.from_pretrained(str(args.init))

    def build_data(self, t):
        from clipvip.data.subtitles import read_subtitles

        opts, args = t.opts, t.args
        subs = {s.clip_id: s for s in read_subtitles(args.annotations, durations=_durations(t.features))}
        dataset = VideoCLIPDataset(t.features, subs, t.tokenizer, opts, seed=opts.seed)
        val = None
        if args.val_annotations:
            val_features = t.features
            if args.val_frames_index and args.val_frames_index != args.frames_index:
                from clipvip.data.feature_store import FeatureIndex

                val_features = FeatureIndex(args.val_frames_index)
            val = dict(features=val_features,
                       subtitles={s.clip_id: s for s in read_subtitles(args.val_annotations,
                                                                       durations=_durations(val_features))})
        return dataset, dataset.collate, val

    def retrieval_layout(self, t) -> tuple[int, int]:
        """``batching: retrieval``: (videos, pairs per video); item ``v * clips_per_video + d`` is draw d of v."""
        return len(t.dataset.videos), t.opts.clips_per_video

    def retrieval_embeddings(self, t, rows, epoch: int) -> np.ndarray:
        """The official ``VideoVectorPool`` pass for videos ``rows`` (indices into ``t.dataset.videos``): per
        video, the mean over its ``clips_per_video`` draws of (pooled video + pooled text) / 2, with *aligned*
        pairs (window = span) as RetriTask samples them for this pass (seed [seed, epoch, video, draw], the
        training pairs' stream). The caller sets eval mode and no_grad. -> float32 [len(rows), hidden]."""
        from clipvip.data import to_device
        from clipvip.data.loader import build_loader
        from clipvip.data.retrieval_batches import mix_embeddings

        opts = t.opts
        if getattr(t, "retrieval_dataset", None) is None:
            t.retrieval_dataset = VideoCLIPDataset(t.features, t.dataset.subtitles, t.tokenizer, opts, seed=opts.seed,
                                                   mode="aligned")
        ds, c = t.retrieval_dataset, opts.clips_per_video
        ds.set_epoch(epoch)
        items = [int(v) * c + d for v in rows for d in range(c)]
        per_forward = max(1, opts.eval_batch_size // c) * c   # whole videos per forward
        loader = build_loader(torch.utils.data.Subset(ds, items), None, per_forward, t.plan.eval_workers, ds.collate,
                              persistent_workers=False)
        video, text = [], []
        dtype = next(t.model.parameters()).dtype
        for batch in loader:
            batch = to_device(batch, t.device, dtype)
            video.append(t.model.encode_video(batch["features"], batch["video_mask"].bool()).float().cpu())
            text.append(t.model.encode_text(batch["input_ids"], batch["attention_mask"]).float().cpu())
        return mix_embeddings(torch.cat(video), torch.cat(text), c)

    def adjust_ds_config(self, t, cfg: dict) -> dict:
        """Adam without weight decay and WarmupDecayLR (warm-up, then linear decay to 0 over the run)."""
        opts, total = t.opts, t.total_steps
        cfg = dict(cfg)
        params = dict(cfg["optimizer"]["params"], weight_decay=opts.weight_decay, adam_w_mode=False)
        cfg["optimizer"] = {"type": "Adam", "params": params}
        warmup = opts.warmup_steps if opts.warmup_steps else max(1, int(round(total * opts.warmup_ratio)))
        warmup = max(1, min(warmup, total - 1)) if total > 1 else 1
        cfg["scheduler"] = {"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(total, warmup + 1), "warmup_num_steps": warmup, "warmup_type": "linear",
            "warmup_min_lr": opts.lr * opts.warmup_min_ratio, "warmup_max_lr": opts.lr}}
        return cfg

    def step_module(self, t):
        return VideoCLIPStep(t.model)

    def param_groups(self, t) -> list[dict]:
        return [{"params": [p for p in t.model.parameters() if p.requires_grad], "lr": t.opts.lr,
                 "weight_decay": t.opts.weight_decay}]

    def evaluate(self, t) -> dict:
        from clipvip.videoclip_eval import evaluate_videoclip, subtitle_annotations

        return evaluate_videoclip(t.model, t.tokenizer, t.val["features"],
                                  subtitle_annotations(t.val["subtitles"], text_mode=t.opts.text_mode),
                                  batch_size=t.opts.eval_batch_size, device=t.device,
                                  max_text_len=t.opts.max_text_len)

    def export_files(self, t) -> dict[str, str]:
        return {}

    def export_model(self, t, tag: str) -> None:
        from clipvip import stage
        from clipvip.model.videoclip import VideoCLIPModel
        from clipvip.trainer import checkpoints as ck

        state = ck.consolidated_state_dict(t.ckpt_dir, tag, t.opts.zero_stage)
        model = VideoCLIPModel(t.model.bert_config, **t.model.extra_config())
        model.load_state_dict(state, strict=True)
        out_dir = Path(t.out / "model")
        with stage.atomic_path(out_dir) as tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            with torch.no_grad():
                model.save_pretrained(tmp, tokenizer=t.tokenizer)
            if out_dir.exists():
                shutil.rmtree(out_dir)
