"""Text<->video retrieval metrics (pure numpy, exact).

Usage:
    from clipvip.metrics import all_metrics, retrieval_metrics
    sim = text_features @ video_features.T           # [num_texts, num_videos], cosine similarities
    result = all_metrics(sim, text_to_video_index)   # {"t2v": {...}, "v2t": {...}, "t2v_dsl": ..., "v2t_dsl": ...}
    result["t2v"]  ->  {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.5, "MnR": 1.5}

Definitions (each query has one or more ground-truth items):
    * rank = 1 + the number of NON-ground-truth items scoring above the best ground-truth score, plus the items
      tied with it as ``ties`` says (``TIE_RULES``):
      - ``expected`` (default): items within ``TIE_TOL`` (1e-6) of it tie, and the tie is broken uniformly at
        random *in expectation*: with ``a`` items above and ``t`` tied the rank is uniform on a+1 .. a+t+1, R@K
        counts the probability that it is <= K and MdR / MnR use the mean rank a + 1 + t/2. A constant
        similarity matrix then scores chance (R@1 = 100/N), and two videos an encoder cannot tell apart (a
        time-reversed twin under MeanPool, whose float32 mean of the same frames is equal or differs in the last
        bit, depending on summation order) split the hit instead of rounding noise deciding it.
      - ``pessimistic``: every item scoring >= the ground truth ranks above it (a constant matrix gives every
        query the worst rank; exact comparison, so near-ties fall to rounding).
      - ``optimistic``: only items scoring strictly above it count (the official CLIP-ViP/CLIP4Clip code's
        ``np.where(sorted == diag)`` rule; a constant matrix gives every query rank 1).
    * R@K = percentage of queries with rank <= K; MdR / MnR = median / mean of the 1-based ranks.
    * text->video (t2v): every caption is a query; its ground truth is its video.
    * video->text (v2t): every video is a query over all captions; with several captions per video (MSR-VTT
      train-style sets) the video scores a hit at the best rank among its captions, i.e. the minimum over
      its captions c of 1 + #(other videos' captions scoring >= c).
    * DSL (dual softmax, Cheng et al. 2021 "CAMoE"): ``scores = sim * softmax(100 * sim)`` with the
      softmax over the *queries* for each gallery item. t2v DSL: text x video matrix, softmax over texts
      for each video (axis 0), exactly as CLIP-ViP's ``np_softmax(sim_matrix*100, axis=0)``.
      v2t DSL (default ``v2t_dsl="transpose"``): the same rule on the transposed matrix (video x text,
      softmax over videos for each text), so each direction uses the prior over its own queries.
      CLIP-ViP's released evaluation instead reuses the t2v-DSL matrix transposed for v2t
      (``compute_metrics(sim_matrix.T)`` after the axis-0 softmax); ``v2t_dsl="clipvip"`` reproduces that.
    * order accuracy (``order_accuracy``): for every text query, does its true video score higher than the
      same video with its frames in reverse order? Percentage over queries, a tie (within 1e-6) counts one half, so an
      encoder blind to frame order scores exactly 50.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
TIE_RULES = ("expected", "pessimistic", "optimistic")  # how items tied with the ground truth rank (see above)
TIE_TOL = 1e-6  # |score difference| within which ``expected`` ties (order_accuracy's tolerance too)
DSL_TEMPERATURE = 100.0


def dual_softmax(sim: np.ndarray, temperature: float = DSL_TEMPERATURE) -> np.ndarray:
    """``sim * softmax(temperature * sim, axis=0)`` for a query x item matrix (softmax over the queries).

    float64; the column maximum is subtracted before ``exp`` so it is exact for any finite input.
    """
    sim = np.asarray(sim, dtype=np.float64)
    logits = temperature * sim
    weights = np.exp(logits - logits.max(axis=0, keepdims=True))
    return sim * weights / weights.sum(axis=0, keepdims=True)


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(TIE_RULES)}; got {ties!r}")


def rank_ranges(scores: np.ndarray, positive: np.ndarray, ties: str = "expected",
                tol: float = TIE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """``(lowest, highest)`` 1-based rank each row's best positive can take under the tie rule ``ties``.

    ``scores`` and ``positive`` (bool) are [num_queries, num_items]; every row needs >= 1 positive. Only
    ``expected`` gives a range (tied negatives within ``tol``); the other rules give lowest == highest.
    """
    _check_ties(ties)
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} differ in shape")
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one ground-truth item")
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    negative = ~positive
    if ties == "pessimistic":
        ranks = 1 + ((scores >= best) & negative).sum(axis=1)
        return ranks, ranks
    if ties == "optimistic":
        ranks = 1 + ((scores > best) & negative).sum(axis=1)
        return ranks, ranks
    above = ((scores > best + tol) & negative).sum(axis=1)
    tied = ((np.abs(scores - best) <= tol) & negative).sum(axis=1)
    return 1 + above, 1 + above + tied


def ranks_from_positives(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """1-based pessimistic rank of each row's best positive: 1 + #negatives scoring >= that positive."""
    return rank_ranges(scores, positive, "pessimistic")[0]


def summarize_ranks(ranks: Sequence[int] | np.ndarray, highest: Sequence[int] | np.ndarray | None = None
                    ) -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) of an array of ranks.

    With ``highest`` each query's rank is uniform on ``ranks[i] .. highest[i]`` (ties broken at random):
    R@K is the expected share of queries ranked <= K, MdR / MnR the median / mean of the mean ranks."""
    low = np.asarray(ranks, dtype=np.float64)
    if low.size == 0:
        raise ValueError("no queries to summarize")
    high = low if highest is None else np.asarray(highest, dtype=np.float64)
    if high.shape != low.shape or (high < low).any():
        raise ValueError("highest ranks must match ranks in shape and be >= them")
    width = high - low + 1
    out = {f"R{k}": float(100.0 * np.mean(np.clip((k - low + 1) / width, 0.0, 1.0))) for k in (1, 5, 10)}
    mean_rank = (low + high) / 2
    out["MdR"] = float(np.median(mean_rank))
    out["MnR"] = float(np.mean(mean_rank))
    return out


def _summarize(scores: np.ndarray, positive: np.ndarray, ties: str) -> dict[str, float]:
    return summarize_ranks(*rank_ranges(scores, positive, ties))


def retrieval_metrics(sim: np.ndarray, gt: Sequence[int] | np.ndarray, ties: str = "expected") -> dict[str, float]:
    """Metrics of a query x item similarity matrix where query i's ground truth is item ``gt[i]``."""
    sim = np.asarray(sim)
    gt = np.asarray(gt, dtype=np.int64)
    if sim.ndim != 2 or gt.shape != (sim.shape[0],):
        raise ValueError(f"need sim [Q, N] and gt [Q]; got {sim.shape} and {gt.shape}")
    positive = np.zeros(sim.shape, dtype=bool)
    positive[np.arange(len(gt)), gt] = True
    return _summarize(sim, positive, ties)


def _text_video_positive(text_to_video: np.ndarray, num_videos: int) -> np.ndarray:
    positive = np.zeros((len(text_to_video), num_videos), dtype=bool)
    positive[np.arange(len(text_to_video)), text_to_video] = True
    return positive


def t2v_metrics(sim: np.ndarray, text_to_video: Sequence[int] | np.ndarray, ties: str = "expected"
                ) -> dict[str, float]:
    """Text->video: every text (row of the text x video ``sim``) is a query."""
    return retrieval_metrics(sim, text_to_video, ties)


def v2t_metrics(sim: np.ndarray, text_to_video: Sequence[int] | np.ndarray, ties: str = "expected"
                ) -> dict[str, float]:
    """Video->text on a text x video ``sim``: a video hits at the best rank among its own captions."""
    sim = np.asarray(sim)
    text_to_video = np.asarray(text_to_video, dtype=np.int64)
    positive = _text_video_positive(text_to_video, sim.shape[1])
    return _summarize(sim.T, positive.T, ties)


def all_metrics(
    sim_text_by_video: np.ndarray,
    text_to_video_index: Sequence[int] | np.ndarray,
    v2t_dsl: str = "transpose",
    ties: str = "expected",
) -> dict[str, dict[str, float]]:
    """``t2v``, ``v2t``, ``t2v_dsl``, ``v2t_dsl`` for a text x video similarity matrix.

    ``text_to_video_index[i]`` is the column of text i's video; every video needs >= 1 text.
    ``v2t_dsl``: "transpose" (softmax over videos per text) or "clipvip" (the released code's reuse of the
    t2v-DSL matrix); ``ties``: ``TIE_RULES``; see the module docstring.
    """
    sim = np.asarray(sim_text_by_video, dtype=np.float64)
    idx = np.asarray(text_to_video_index, dtype=np.int64)
    if sim.ndim != 2 or idx.shape != (sim.shape[0],):
        raise ValueError(f"need sim [texts, videos] and index [texts]; got {sim.shape} and {idx.shape}")
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= sim.shape[1]:
        raise ValueError("text_to_video_index out of range")
    t2v_dsl_scores = dual_softmax(sim)
    if v2t_dsl == "transpose":
        v2t_dsl_scores = dual_softmax(sim.T).T
    elif v2t_dsl == "clipvip":
        v2t_dsl_scores = t2v_dsl_scores
    else:
        raise ValueError(f"v2t_dsl must be 'transpose' or 'clipvip', got {v2t_dsl!r}")
    return {
        "t2v": t2v_metrics(sim, idx, ties),
        "v2t": v2t_metrics(sim, idx, ties),
        "t2v_dsl": t2v_metrics(t2v_dsl_scores, idx, ties),
        "v2t_dsl": v2t_metrics(v2t_dsl_scores, idx, ties),
    }


def order_accuracy(true_scores: Sequence[float] | np.ndarray, reversed_scores: Sequence[float] | np.ndarray,
                   tol: float = TIE_TOL) -> float:
    """Percentage of queries whose true video outscores the same video played backwards (ties count 1/2).

    ``true_scores[i]`` = similarity of query i with its ground-truth video, ``reversed_scores[i]`` = with that
    video's frames reversed. Scores within ``tol`` tie: an order-blind encoder (MeanPool averages the same
    frames in another order, which float32 sums only up to rounding) scores exactly 50.0.
    """
    true_scores = np.asarray(true_scores, dtype=np.float64)
    reversed_scores = np.asarray(reversed_scores, dtype=np.float64)
    if true_scores.shape != reversed_scores.shape or true_scores.ndim != 1:
        raise ValueError(f"need two [Q] score arrays; got {true_scores.shape} and {reversed_scores.shape}")
    if true_scores.size == 0:
        raise ValueError("no queries to score")
    tie = np.abs(true_scores - reversed_scores) <= tol
    wins = ((true_scores > reversed_scores) & ~tie).astype(np.float64) + 0.5 * tie
    return float(100.0 * wins.mean())
