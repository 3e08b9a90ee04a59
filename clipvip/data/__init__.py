"""The training / evaluation input pipeline: annotations, frame sampling, transforms, tokenisation,
datasets over the HDF5 frame stores, a resumable distributed sampler and the DataLoader.

Usage:
    from clipvip.data import (read_annotations, FinetuneDataset, TokenizingCollator, load_tokenizer,
                              ResumableDistributedSampler, build_loader, to_device)
    from clipvip.frames import FrameIndex

    anns = read_annotations("msrvtt_train.jsonl", text_mode="sample")
    ds = FinetuneDataset(FrameIndex("results/frames/msrvtt/index.json"), anns, num_frames=12,
                         image_size=224, train=True, seed=0)
    sampler = ResumableDistributedSampler(len(ds), num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = build_loader(ds, sampler, batch_size=32, num_workers=2,
                          collate_fn=TokenizingCollator(load_tokenizer("results/pretrained/clip"), 50))
    for epoch in range(epochs):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)
        for batch in loader:   # pixel_values uint8 [B,T,3,S,S], input_ids/attention_mask [B,L], text, clip_id
            batch = to_device(batch, device)   # pixels -> CLIP-normalised float32 on the device (once)
            ...
            sampler.advance(len(batch["clip_id"]))

Submodules: ``annotations`` (JSONL readers), ``sampling`` (frame indices), ``transforms`` (uint8 crop in
workers, CLIP normalisation on the device), ``text`` (tokenizer + collate), ``datasets``, ``sampler``, ``loader``.
``DATA_DEFAULTS`` are the defaults of the data keys a stage's options may carry.
"""
from .annotations import read_annotations, read_captions
from .datasets import FinetuneDataset, PretrainDataset
from .loader import build_loader, to_device, worker_init_fn
from .sampler import ResumableDistributedSampler
from .sampling import jitter_indices, nearest_positions, uniform_indices
from .text import TokenizingCollator, load_tokenizer, tokenize
from .transforms import CLIP_MEAN, CLIP_STD, PIXEL_KEYS, crop_uint8, normalize_pixels, video_transform

# The paper's protocol (REFERENCE "Data protocol"); MSR-VTT text length 50, post-pretraining 70.
DATA_DEFAULTS = {
    "num_frames": 12,
    "image_size": 224,
    "max_text_len": 50,
    "text_mode": "sample",
    "num_workers": 2,
    "caption_fallback": "texts",
}

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DATA_DEFAULTS", "FinetuneDataset", "PIXEL_KEYS", "PretrainDataset",
    "ResumableDistributedSampler", "TokenizingCollator", "build_loader", "crop_uint8", "jitter_indices",
    "load_tokenizer", "nearest_positions", "normalize_pixels", "read_annotations", "read_captions", "to_device",
    "tokenize", "uniform_indices", "video_transform", "worker_init_fn",
]
