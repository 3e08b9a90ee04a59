"""Frame stores: decoded, resized, JPEG-encoded video frames in HDF5 shards, and the stages that build them.

Usage:
    from clipvip.frames import FrameStore, FrameIndex
    index = FrameIndex("results/frames/demo_msrvtt/index.json")
    index.uniform("msr_00000")          # uint8 [T,H,W,3]: decoded frames np.linspace(0, N-1, T).astype(int)
    index.pool("msr_00000")             # (uint8 [P,H,W,3], decoded indices int [P])
    index.middle("msr_00000")           # uint8 [H,W,3]: decoded frame (N - 1) // 2  (the "middle" frame)
    index.meta("msr_00000")             # num_frames, fps, duration, *_indices, height, width, decoder, ...

Stages (see ``clipvip.cli``): ``clipvip split-ids`` -> ``split_ids_main``, ``clipvip frames`` -> ``main``,
``clipvip frames-index`` -> ``index_main``.

Modules: ``extract`` (writing a shard), ``store`` (reading), ``shards`` (id lists, index), ``manifest``
(failure TSVs). Decoding lives in ``clipvip.video_io``.
"""
from clipvip.frames.extract import FrameOptions, extract_shard, frames_to_store, main, middle_index, pool_indices
from clipvip.data.manifest import read_failures
from clipvip.frames.shards import build_index, index_main, read_clip_ids, shard_count, split_ids_main
from clipvip.data.frame_store import FrameIndex, FrameStore, IncompleteStoreError
from clipvip.data.sampling import uniform_indices

__all__ = ["FrameStore", "FrameIndex", "IncompleteStoreError", "FrameOptions", "extract_shard", "main",
           "split_ids_main", "index_main", "build_index", "read_clip_ids", "shard_count", "read_failures",
           "uniform_indices", "pool_indices", "middle_index", "frames_to_store"]
