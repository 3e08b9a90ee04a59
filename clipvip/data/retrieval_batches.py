"""VideoCLIP's retrieval-augmented batches (fairseq MMPT ``RetriTask`` / ``VectorRetriever``) with faiss.

The trainer (``batching: retrieval``) uses ``RetrievalBatches``, which does all of the below per rebuild epoch
and is the loader's ``batch_sampler`` (class docstring). The pieces, once per epoch, before its first step:
    from clipvip.data.retrieval_batches import (ClusterBatchSampler, broadcast_clusters, mix_embeddings,
                                                sample_clusters)
    emb = mix_embeddings(pooled_video, pooled_text, clips_per_video=16)   # [N, D] float32, N videos
    clusters = sample_clusters(emb, videos_per_cluster=32, seed=42, epoch=epoch) if rank == 0 else None
    clusters = broadcast_clusters(clusters)                 # identical list on every rank
    batches.set_clusters(clusters, epoch)                   # each rank iterates its own share

Index (``build_index``): ``IndexIVFFlat(IndexFlatL2(D), D, nlist, METRIC_L2)`` trained on the first
``nlist * 48`` vectors (all when fewer), every vector added, ``nprobe = 1`` -- the official settings (512
lists). Below ``39 * nlist`` vectors (faiss's own minimum of training points per centroid, under which k-means
warns and the lists get too small to hold 2k neighbours with nprobe 1) an exact ``IndexFlatL2`` is used
instead; ``kind="ivf" | "flat"`` forces either.

Clusters (``sample_clusters``): ``N // k`` centres drawn without replacement; each centre's ``2k`` nearest
neighbours are searched (the official ``num_cands = 64`` for k = 32; the centre itself is usually among
them), the centre is put first and dropped from the results, and when more than k candidates remain, k of
them are kept at random (so the centre may drop out, as officially). With nprobe 1 a centre whose list holds
fewer than k vectors gives a smaller cluster (official behaviour; ``len(c) <= k``). A video can be in several
clusters or in none. Randomness: ``numpy.random.default_rng([seed, epoch, 0xC1A5])``. For the IVF index
(nprobe 1) the search is ``search_own_lists``: the neighbours ``index.search`` returns, computed with one
matrix product per inverted list (3.5x less CPU at 1 M vectors).

Rank rule for the trainer (``RetrievalBatches`` takes the first): either rank 0 builds the list and
``broadcast_clusters`` sends it, or every rank
calls ``sample_clusters`` on the same all-gathered embeddings with the same seed (deterministic: faiss
k-means is seeded, ``cp.seed``; the search is exact within lists) -- broadcasting is the safer of the two,
since float differences between devices could change a neighbour.

Deviation: the official code builds one index per rank over that rank's shard and concatenates the ranks'
cluster lists; here one index over all N videos is built (by one rank, or by every rank from the same
all-gathered embeddings: same seed and input give the same list) so neighbours cross shard borders.
"""
from __future__ import annotations

import time

import numpy as np

MIN_POINTS_PER_CENTROID = 39   # faiss warns below this many training points per centroid
TRAIN_POINTS_PER_CENTROID = 48  # official examples_per_cent_to_train
_STREAM = 0xC1A5


def mix_embeddings(pooled_video, pooled_text, clips_per_video: int) -> np.ndarray:
    """Official ``VideoVectorPool``: mean over each video's clips of (video + text) / 2 -> float32 [N, D].

    Rows must be grouped by video: rows ``i * clips_per_video ... (i + 1) * clips_per_video - 1`` are video i.
    """
    v = _numpy(pooled_video)
    t = _numpy(pooled_text)
    if v.shape != t.shape or v.ndim != 2 or v.shape[0] % clips_per_video:
        raise ValueError(f"pooled video {v.shape} and text {t.shape} must be equal [N*{clips_per_video}, D]")
    mixed = (v + t) / 2.0
    return np.ascontiguousarray(mixed.reshape(-1, clips_per_video, mixed.shape[1]).mean(axis=1), dtype=np.float32)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def index_kind(num_vectors: int, nlist: int = 512) -> str:
    """The rule: IVF when there are at least ``39 * nlist`` vectors, else exact flat search."""
    return "ivf" if num_vectors >= MIN_POINTS_PER_CENTROID * nlist else "flat"


def build_index(embeddings: np.ndarray, nlist: int = 512, nprobe: int = 1, kind: str = "auto",
                train_per_centroid: int = TRAIN_POINTS_PER_CENTROID, seed: int = 1234, timings: dict | None = None):
    """A faiss L2 index holding every row of ``embeddings`` (float32 [N, D]); see the module docstring.
    ``timings`` (a dict) receives ``train`` and ``add`` seconds."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got {x.shape}")
    if kind == "auto":
        kind = index_kind(len(x), nlist)
    dim = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "ivf":
        if len(x) < nlist:
            raise ValueError(f"an IVF index with {nlist} lists needs >= {nlist} vectors, got {len(x)}")
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        index.cp.seed = int(seed)
        t0 = time.perf_counter()
        index.train(x[: nlist * train_per_centroid])
        if timings is not None:
            timings["train"] = time.perf_counter() - t0
        index.nprobe = int(nprobe)
    else:
        raise ValueError(f"kind must be auto, ivf or flat, got {kind!r}")
    t0 = time.perf_counter()
    index.add(x)
    if timings is not None:
        timings.setdefault("train", 0.0)
        timings["add"] = time.perf_counter() - t0
    return index


def search_own_lists(index, x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """IVF search with nprobe 1 for queries that are rows of the indexed ``x``: each query's k nearest
    neighbours (L2) among the vectors of its own inverted list, padded with -1 -- what ``index.search``
    returns, computed per list with one BLAS product (faiss scans list vectors one query at a time: at 1 M
    random 512-d vectors, 31,250 queries took 42.5 s of CPU in ``index.search`` and 12.3 s here, with 99.97 %
    identical neighbour sets -- the rest differ in ties / float rounding). A row's list is where ``add`` put it (the nearest centroid), so no quantizer search
    is needed; results agree with ``index.search`` up to the order of equal distances."""
    import faiss

    invlists = index.invlists
    flat_codes = type(index).__name__ == "IndexIVFFlat" and invlists.code_size == 4 * x.shape[1]
    list_of = np.empty(len(x), dtype=np.int64)
    members, vectors = [], []
    for lst in range(index.nlist):
        size = invlists.list_size(lst)
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy() if size else np.zeros(0, dtype=np.int64)
        members.append(ids)
        list_of[ids] = lst
        if flat_codes and size:  # IVF-Flat stores the raw float32 rows contiguously per list: no gather
            vectors.append(faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
                           .view(np.float32).reshape(size, x.shape[1]))
        else:
            vectors.append(None)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    query_lists = list_of[queries]
    order = np.argsort(query_lists, kind="stable")
    bounds = np.searchsorted(query_lists[order], np.arange(index.nlist + 1))
    for lst in np.unique(query_lists):
        rows = order[bounds[lst]:bounds[lst + 1]]
        ids = members[lst]
        base = vectors[lst] if vectors[lst] is not None else x[ids]
        q = x[queries[rows]]
        dist = (base * base).sum(1)[None, :] - 2.0 * (q @ base.T)      # + |q|^2: the same for a row
        take = min(k, len(ids))
        part = np.argpartition(dist, take - 1, axis=1)[:, :take] if take < len(ids) else \
            np.broadcast_to(np.arange(len(ids)), (len(rows), len(ids)))
        part_d = np.take_along_axis(dist, part, axis=1)
        ranked = np.take_along_axis(part, np.argsort(part_d, axis=1, kind="stable"), axis=1)
        out[rows, :take] = ids[ranked]
    return out


def sample_clusters(embeddings: np.ndarray, videos_per_cluster: int = 32, num_candidates: int | None = None,
                    seed: int = 0, epoch: int = 0, nlist: int = 512, nprobe: int = 1, kind: str = "auto",
                    index=None, timings: dict | None = None) -> list[list[int]]:
    """``N // k`` clusters (lists of row indices of ``embeddings``) of at most k similar videos each."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, k = len(x), int(videos_per_cluster)
    if k < 1 or n < k:
        raise ValueError(f"need at least videos_per_cluster={k} videos, got {n}")
    cands = int(num_candidates) if num_candidates is not None else 2 * k
    t0 = time.perf_counter()
    if index is None:
        index = build_index(x, nlist=nlist, nprobe=nprobe, kind=kind, seed=seed, timings=timings)
    t1 = time.perf_counter()
    rng = np.random.default_rng([int(seed), int(epoch), _STREAM])
    centres = rng.choice(n, size=n // k, replace=False)
    if hasattr(index, "invlists") and getattr(index, "nprobe", 1) == 1 and index.ntotal == n:
        neighbours = search_own_lists(index, x, centres, min(cands, n))
    else:
        _, neighbours = index.search(x[centres], min(cands, n))
    t2 = time.perf_counter()
    clusters = []
    for centre, row in zip(centres.tolist(), neighbours):
        row = row[(row >= 0) & (row != centre)]
        members = np.concatenate([[centre], row])
        if len(members) > k:
            members = members[rng.choice(len(members), size=k, replace=False)]
        clusters.append([int(m) for m in members])
    if timings is not None:
        timings.update(index=t1 - t0, search=t2 - t1, sample=time.perf_counter() - t2)
    return clusters


def sequential_clusters(num_videos: int, videos_per_cluster: int = 32) -> list[list[int]]:
    """Consecutive groups of k videos (the official candidate list before any retrieval)."""
    k = int(videos_per_cluster)
    return [list(range(s, s + k)) for s in range(0, num_videos - k + 1, k)]


def broadcast_clusters(clusters: list[list[int]] | None, device=None, src: int = 0) -> list[list[int]]:
    """Rank ``src``'s cluster list on every rank (``broadcast_object_list``); identity when not distributed.

    ``device``: for NCCL, the current CUDA device (``broadcast_object_list`` moves the pickled bytes there).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        if clusters is None:
            raise ValueError("no clusters to broadcast (not distributed, and none given)")
        return clusters
    box = [clusters if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


class ClusterBatchSampler:
    """Batches of whole clusters: each yields ``[(video_index, draw), ...]`` for ``clusters_per_batch``
    clusters x ``clips_per_video`` draws (official: 1 cluster of 32 videos x 16 clips = 512 pairs per GPU).

    Rank r takes clusters ``r, r + W, r + 2W, ...`` of the list, after truncating it to a multiple of
    ``W * clusters_per_batch`` so every rank runs the same number of steps (``drop_last``; the official
    sharded iterator pads instead). ``draw`` is the clip number to pass to ``OverlappedSampler.sample(...,
    index=video_index, draw=draw)``. Use as a DataLoader ``batch_sampler`` over a dataset indexed by those
    tuples. Resume: ``state_dict()`` holds the cluster list, the epoch and the number of batches this rank
    consumed (``advance(1)`` per step, as ``ResumableDistributedSampler.advance`` counts samples).
    """

    def __init__(self, num_replicas: int = 1, rank: int = 0, clusters_per_batch: int = 1, clips_per_video: int = 16):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if clusters_per_batch < 1 or clips_per_video < 1:
            raise ValueError("clusters_per_batch and clips_per_video must be >= 1")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.clusters_per_batch, self.clips_per_video = int(clusters_per_batch), int(clips_per_video)
        self.clusters: list[list[int]] = []
        self.epoch = -1
        self.position = 0

    def has_epoch(self, epoch: int) -> bool:
        """True when the clusters of ``epoch`` are already here (restored by ``load_state_dict``)."""
        return self.epoch == int(epoch) and bool(self.clusters)

    def set_clusters(self, clusters: list[list[int]], epoch: int) -> None:
        self.clusters = [[int(v) for v in c] for c in clusters]
        self.epoch, self.position = int(epoch), 0

    def _share(self) -> list[list[int]]:
        per_step = self.num_replicas * self.clusters_per_batch
        usable = (len(self.clusters) // per_step) * per_step
        return self.clusters[:usable][self.rank :: self.num_replicas]

    @property
    def num_batches(self) -> int:
        return len(self._share()) // self.clusters_per_batch

    def batches(self) -> list[list[tuple[int, int]]]:
        share, g, c = self._share(), self.clusters_per_batch, self.clips_per_video
        return [[(v, d) for cluster in share[b * g:(b + 1) * g] for v in cluster for d in range(c)]
                for b in range(len(share) // g)]

    def __iter__(self):
        return iter(self.batches()[self.position:])

    def __len__(self) -> int:
        return self.num_batches - self.position

    def advance(self, num_batches: int = 1) -> None:
        self.position = min(self.position + int(num_batches), self.num_batches)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "clusters": [list(c) for c in self.clusters],
                "num_replicas": self.num_replicas, "clusters_per_batch": self.clusters_per_batch,
                "clips_per_video": self.clips_per_video}

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_replicas", "clusters_per_batch", "clips_per_video"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"batch sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        self.clusters = [[int(v) for v in c] for c in state["clusters"]]
        self.epoch = int(state["epoch"])
        self.position = min(int(state["position"]), self.num_batches)


def share_rows(num_videos: int, num_replicas: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s rows of the embedding pass: the contiguous block ``[r * s, (r + 1) * s)`` with
    ``s = ceil(N / W)``, cut at N and padded with row 0 to length s, so every rank runs the same number of
    forwards (ZeRO-3 forwards are collective) and the ranks' blocks, concatenated, start with rows 0..N-1."""
    size = -(-int(num_videos) // int(num_replicas))
    rows = np.arange(rank * size, min((rank + 1) * size, num_videos), dtype=np.int64)
    return np.concatenate([rows, np.zeros(size - len(rows), dtype=np.int64)])


def all_gather_rows(local: np.ndarray, device=None, chunk_rows: int = 65_536) -> np.ndarray:
    """Every rank's equally shaped float32 ``[s, D]`` block, concatenated in rank order, on every rank (host
    memory). Sent ``chunk_rows`` rows at a time on ``device`` (NCCL needs CUDA tensors; gloo takes CPU ones), so
    the device holds at most ``W * chunk_rows * D`` floats at once. Identity when not distributed."""
    import torch
    import torch.distributed as dist

    local = np.ascontiguousarray(local, dtype=np.float32)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local
    world, device = dist.get_world_size(), torch.device(device or "cpu")
    parts: list[list[np.ndarray]] = [[] for _ in range(world)]
    for start in range(0, max(1, len(local)), chunk_rows):
        piece = torch.from_numpy(local[start:start + chunk_rows]).to(device)
        boxes = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(boxes, piece)
        for r, box in enumerate(boxes):
            parts[r].append(box.cpu().numpy())
    return np.concatenate([np.concatenate(p) for p in parts])


def epoch_order(clusters: list[list[int]], seed: int, epoch: int, built_epoch: int) -> list[list[int]]:
    """The clusters in epoch ``epoch``'s order: as built for ``built_epoch`` (their centres are already in a
    random order), and for the epochs in between rebuilds a permutation seeded by ``[seed, epoch]``."""
    if int(epoch) == int(built_epoch):
        return clusters
    perm = np.random.default_rng([int(seed), int(epoch), _STREAM, 1]).permutation(len(clusters))
    return [clusters[i] for i in perm.tolist()]


def _pack(clusters: list[list[int]]) -> dict:
    """A cluster list as two int32 tensors (4 bytes a member in the checkpoint, not a pickled list of lists)."""
    import torch

    flat = [v for c in clusters for v in c]
    return {"members": torch.tensor(flat, dtype=torch.int32), "sizes": torch.tensor([len(c) for c in clusters],
                                                                                  dtype=torch.int32)}


def _unpack(packed: dict) -> list[list[int]]:
    members, sizes = packed["members"].tolist(), packed["sizes"].tolist()
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    return [members[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


class RetrievalBatches:
    """The trainer's batch sampler for ``batching: retrieval`` (what ``ResumableDistributedSampler`` is for
    random batching): the official ``RetriTask`` loop around ``ClusterBatchSampler``.

    ``set_epoch(epoch)``, before the epoch's first step: unless the epoch's batches were restored from a
    checkpoint, and when no cluster list exists yet or ``epoch - built_epoch >= every``, the embedding pass
    runs -- ``embed(rows, epoch) -> float32 [len(rows), D]`` (the task's, current model in eval mode under
    no_grad) on this rank's ``share_rows``, ``all_gather_rows`` to every rank -- then rank 0 alone builds the
    clusters (``sample_clusters``: faiss, the flat fallback below ``39 * nlist`` vectors) and
    ``broadcast_clusters`` sends its list to every rank (broadcast rather than building everywhere: float
    differences between devices could change a neighbour). It returns the build's statistics on rank 0 (None
    otherwise, and when nothing was built). Epochs between rebuilds reuse the list in a permuted order
    (``epoch_order``).

    Batches: lists of dataset indices ``video * clips_per_video + draw`` (each cluster's videos x their
    draws), rank r taking clusters ``r, r + W, ...`` (``ClusterBatchSampler``); a DataLoader
    ``batch_sampler``. ``advance(1)`` per micro-batch consumed. ``state_dict()``: the list as built, the epoch
    it was built for, the epoch and position (in micro-batches) -- a run resumed from it yields exactly the
    batches the uninterrupted run would have, without re-embedding (the weights of the build are gone).
    """

    def __init__(self, num_videos: int, embed, num_replicas: int = 1, rank: int = 0, videos_per_cluster: int = 32,
                 clusters_per_batch: int = 1, clips_per_video: int = 16, every: int = 1, seed: int = 0,
                 nlist: int = 512, device=None):
        k = int(videos_per_cluster)
        if num_videos // k < num_replicas * clusters_per_batch:
            raise ValueError(f"{num_videos} videos make {num_videos // k} clusters of {k}, fewer than the "
                             f"{num_replicas} rank(s) x {clusters_per_batch} cluster(s) one step needs")
        if every < 1:
            raise ValueError(f"every must be >= 1 epoch, got {every}")
        self.num_videos, self.embed, self.every = int(num_videos), embed, int(every)
        self.videos_per_cluster, self.seed, self.nlist, self.device = k, int(seed), int(nlist), device
        self.batches = ClusterBatchSampler(num_replicas, rank, clusters_per_batch, clips_per_video)
        self.clusters: list[list[int]] | None = None   # as built, for built_epoch
        self.built_epoch = -1
        self.epoch = 0

    @property
    def num_replicas(self) -> int:
        return self.batches.num_replicas

    @property
    def rank(self) -> int:
        return self.batches.rank

    @property
    def num_batches(self) -> int:
        """Micro-batches per epoch on every rank (the number of clusters is always ``N // k``)."""
        per_step = self.num_replicas * self.batches.clusters_per_batch
        return (self.num_videos // self.videos_per_cluster) // per_step

    @property
    def position(self) -> int:
        return self.batches.position

    def describe(self) -> dict:
        """The layout recorded in the run's config.json (``derived.retrieval_batching``)."""
        b = self.batches
        return {"videos": self.num_videos, "videos_per_cluster": self.videos_per_cluster,
                "clusters_per_epoch": self.num_videos // self.videos_per_cluster,
                "clusters_per_batch": b.clusters_per_batch, "pairs_per_video": b.clips_per_video,
                "batches_per_epoch": self.num_batches, "every": self.every, "nlist": self.nlist,
                "index": index_kind(self.num_videos, self.nlist), "built_by": "rank 0, broadcast"}

    def set_epoch(self, epoch: int) -> dict | None:
        epoch = int(epoch)
        self.epoch = epoch
        if self.batches.has_epoch(epoch):
            return None  # restored mid-epoch: the same list, the same position
        stats = None
        if self.clusters is None or epoch - self.built_epoch >= self.every or epoch < self.built_epoch:
            stats = self._build(epoch)
        self.batches.set_clusters(epoch_order(self.clusters, self.seed, epoch, self.built_epoch), epoch)
        return stats

    def _build(self, epoch: int) -> dict | None:
        t0 = time.perf_counter()
        rows = share_rows(self.num_videos, self.num_replicas, self.rank)
        local = np.asarray(self.embed(rows, epoch), dtype=np.float32)
        if local.shape[0] != len(rows) or local.ndim != 2:
            raise ValueError(f"the embedding pass returned {local.shape} for {len(rows)} videos")
        embeddings = all_gather_rows(local, self.device)[: self.num_videos]
        t1 = time.perf_counter()
        clusters, stats, timings = None, None, {}
        if self.rank == 0:
            clusters = sample_clusters(embeddings, self.videos_per_cluster, seed=self.seed, epoch=epoch,
                                       nlist=self.nlist, timings=timings)
        self.clusters = broadcast_clusters(clusters, device=self.device)
        self.built_epoch = epoch
        if self.rank == 0:
            sizes = np.array([len(c) for c in self.clusters])
            stats = {"epoch": epoch, "num_videos": self.num_videos, "num_clusters": len(sizes),
                     "mean_size": float(sizes.mean()), "min_size": int(sizes.min()),
                     "distinct_videos": int(len({v for c in self.clusters for v in c})),
                     "index": index_kind(self.num_videos, self.nlist), "nlist": self.nlist,
                     "dim": int(embeddings.shape[1]), "embed_seconds": t1 - t0,
                     "cluster_seconds": time.perf_counter() - t1, "seconds": time.perf_counter() - t0,
                     **{f"{k}_seconds": v for k, v in timings.items()}}
        return stats

    def __iter__(self):
        c = self.batches.clips_per_video
        for batch in self.batches:
            yield [v * c + d for v, d in batch]

    def __len__(self) -> int:
        return len(self.batches)

    def advance(self, num_batches: int = 1) -> None:
        self.batches.advance(num_batches)

    def state_dict(self) -> dict:
        b = self.batches
        return {"batching": "retrieval", "epoch": self.epoch, "position": b.position, "built_epoch": self.built_epoch,
                "clusters": _pack(self.clusters) if self.clusters is not None else None,
                "num_videos": self.num_videos, "videos_per_cluster": self.videos_per_cluster, "seed": self.seed,
                "every": self.every, "nlist": self.nlist, "num_replicas": b.num_replicas,
                "clusters_per_batch": b.clusters_per_batch, "clips_per_video": b.clips_per_video}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batching") != "retrieval":
            raise ValueError("the checkpoint's sampler state is not batching retrieval's (it was saved by a run "
                             "with random batching)")
        b = self.batches
        mine = {"num_videos": self.num_videos, "videos_per_cluster": self.videos_per_cluster, "seed": self.seed,
                "every": self.every, "nlist": self.nlist, "num_replicas": b.num_replicas,
                "clusters_per_batch": b.clusters_per_batch, "clips_per_video": b.clips_per_video}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"retrieval batch state has {key}={state[key]}, this run {value}")
        self.epoch, self.built_epoch = int(state["epoch"]), int(state["built_epoch"])
        self.clusters = _unpack(state["clusters"]) if state["clusters"] is not None else None
        if self.clusters is None:
            return
        b.set_clusters(epoch_order(self.clusters, self.seed, self.epoch, self.built_epoch), self.epoch)
        b.position = min(int(state["position"]), b.num_batches)


def expected_seconds_per_million(seconds: float, num_vectors: int) -> float:
    return seconds * 1_000_000 / max(1, num_vectors)


__all__ = ["ClusterBatchSampler", "RetrievalBatches", "all_gather_rows", "broadcast_clusters", "build_index",
           "epoch_order", "index_kind", "mix_embeddings", "sample_clusters", "sequential_clusters", "share_rows",
           "expected_seconds_per_million"]
