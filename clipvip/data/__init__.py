"""The data library: frame stores, failure manifests, annotations, frame sampling, transforms, tokenisation,
datasets over the HDF5 frame stores, a resumable distributed sampler and the DataLoader.

Usage:
    from clipvip.data import (FrameIndex, read_annotations, FinetuneDataset, TokenizingCollator, load_tokenizer,
                              ResumableDistributedSampler, build_loader, to_device)

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

Submodules: ``frame_store`` (FrameStore / FrameIndex: reading the HDF5 shards), ``manifest`` (failure TSVs),
``annotations`` (JSONL readers), ``sampling`` (frame indices), ``transforms`` (uint8 crop in workers, CLIP
normalisation on the device), ``text`` (tokenizer + collate), ``datasets``, ``sampler``, ``loader``.
Names are imported lazily, so ``from clipvip.data.manifest import ...`` (the frames stage) never imports torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FrameIndex": "frame_store", "FrameStore": "frame_store", "IncompleteStoreError": "frame_store",
    "read_failures": "manifest", "write_failures": "manifest",
    "read_annotations": "annotations", "read_captions": "annotations",
    "FinetuneDataset": "datasets", "PretrainDataset": "datasets",
    "build_loader": "loader", "to_device": "loader", "worker_init_fn": "loader",
    "ResumableDistributedSampler": "sampler",
    "jitter_indices": "sampling", "nearest_positions": "sampling", "uniform_indices": "sampling",
    "TokenizingCollator": "text", "load_tokenizer": "text", "tokenize": "text",
    "CLIP_MEAN": "transforms", "CLIP_STD": "transforms", "PIXEL_KEYS": "transforms", "crop_uint8": "transforms",
    "normalize_pixels": "transforms", "video_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipvip.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"clipvip.data.{_EXPORTS[name]}"), name)
