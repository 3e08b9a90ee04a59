"""Losses against straightforward loop references, multi-positive groups, DSL, and the 2-rank gloo gather."""
from __future__ import annotations

import math
import os
import socket

import pytest
import numpy as np
import torch
import torch.nn.functional as F

from clipvip.losses import LOSSES, gather_features, joint_loss
from clipvip.metrics import dual_softmax


def _feats(seed=0, n=5, d=8, keys="VSFC"):
    g = torch.Generator().manual_seed(seed)
    return {k: F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1) for k in keys}


def _ce_row(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    row = torch.stack(logits)
    return -(row[target] - torch.logsumexp(row, dim=0))


def ref_pair(a, b, s):
    """L(A,B) with explicit per-row loops."""
    n = a.shape[0]
    a2b = sum(_ce_row([s * a[i] @ b[j] for j in range(n)], i) for i in range(n)) / n
    b2a = sum(_ce_row([s * b[i] @ a[j] for j in range(n)], i) for i in range(n)) / n
    return a2b + b2a


def ref_joint(v, sub, cap, s):
    """L(V,S,C) written from the paper's description: explicit logit lists per video row."""
    n = v.shape[0]
    t2v = sum(_ce_row([s * sub[i] @ v[j] for j in range(n)], i) for i in range(n)) / n
    t2v = t2v + sum(_ce_row([s * cap[i] @ v[j] for j in range(n)], i) for i in range(n)) / n
    v2t = 0
    for i in range(n):
        negatives = [s * v[i] @ sub[j] for j in range(n) if j != i] + [s * v[i] @ cap[j] for j in range(n) if j != i]
        v2t = v2t + _ce_row([s * v[i] @ sub[i]] + negatives, 0) / n
        v2t = v2t + _ce_row([s * v[i] @ cap[i]] + negatives, 0) / n
    return t2v + v2t


REFERENCE_TERMS = {
    "vs": [("V", "S")],
    "vs_fc": [("V", "S"), ("F", "C")],
    "vs_vc": [("V", "S"), ("V", "C")],
    "vs_vc_fc": [("V", "S"), ("V", "C"), ("F", "C")],
    "vsc_fc": [("V", "S", "C"), ("F", "C")],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_TERMS))
def test_each_loss_equals_loop_reference(name):
    feats = _feats(seed=1)
    logit_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    total, terms = LOSSES[name](feats, logit_scale)
    s = logit_scale.exp()
    expected = {}
    for term in REFERENCE_TERMS[name]:
        key = f"L({','.join(term)})"
        expected[key] = ref_pair(*(feats[k] for k in term), s) if len(term) == 2 else ref_joint(
            *(feats[k] for k in term), s)
    assert set(terms) == set(expected)
    for key in expected:
        torch.testing.assert_close(terms[key], expected[key], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(total, sum(expected.values()), rtol=1e-10, atol=1e-10)


def test_joint_video_to_text_row_shares_negatives_and_excludes_other_positive():
    # Make the caption of video 0 identical to video 0: if C_0 were a negative of the S-first row, the loss
    # would grow; with it excluded, the S-first row only sees S_j and C_j (j != 0).
    feats = _feats(seed=2, n=3, keys="VSC")
    v, sub, cap = feats["V"], feats["S"], feats["C"].clone()
    cap[0] = v[0]
    s = torch.tensor(50.0, dtype=torch.float64)
    full = joint_loss(v, sub, cap, s)
    # Rebuild the four groups explicitly and check the S-first row of video 0.
    row0 = torch.cat([s * v[0:1] @ sub.T, s * v[0:1] @ cap[1:].T], dim=1)[0]
    assert row0.numel() == 1 + 2 + 2  # S_0, S_1, S_2, C_1, C_2 — C_0 absent
    torch.testing.assert_close(full, ref_joint(v, sub, cap, s), rtol=1e-10, atol=1e-10)
    cap_neg = cap.clone()
    cap_neg[0] = -v[0]  # changing C_0 must not change the S-first video->text term of row 0
    def s_first_row0(c):
        logits = torch.cat([s * v @ sub.T, (s * v @ c.T).masked_fill(torch.eye(3, dtype=torch.bool), -1e4)], 1)
        return F.cross_entropy(logits[:1], torch.tensor([0]))
    torch.testing.assert_close(s_first_row0(cap), s_first_row0(cap_neg))
    torch.testing.assert_close(s_first_row0(cap), _ce_row(list(row0), 0))


def test_text_alias_T_and_missing_key_error():
    feats = _feats(seed=3, keys="VS")
    scale = torch.tensor(2.0, dtype=torch.float64)
    a, _ = LOSSES["vs"](feats, scale)
    b, terms = LOSSES["vs"]({"V": feats["V"], "T": feats["S"]}, scale)
    torch.testing.assert_close(a, b)
    assert list(terms) == ["L(V,S)"]
    with pytest.raises(KeyError, match="missing"):
        LOSSES["vsc_fc"](feats, scale)


def test_groups_unique_ids_change_nothing_and_duplicates_become_positives():
    feats = _feats(seed=4, n=4, keys="VSFC")
    scale = torch.tensor(math.log(30.0), dtype=torch.float64)
    plain, _ = LOSSES["vsc_fc"](feats, scale)
    unique, _ = LOSSES["vsc_fc"](feats, scale, groups={"S": torch.arange(4), "C": torch.arange(4) + 7})
    torch.testing.assert_close(plain, unique)

    # Captions 1 and 2 are the same text: multi-positive soft targets in both directions.
    ids = torch.tensor([0, 1, 1, 2])
    v, c = feats["V"], feats["S"]
    _, terms = LOSSES["vs"]({"V": v, "S": c}, scale, groups={"S": ids})
    s = scale.exp()
    total = 0
    for a, b in ((v, c), (c, v)):
        for i in range(4):
            row = torch.stack([s * a[i] @ b[j] for j in range(4)])
            logp = row - torch.logsumexp(row, 0)
            positives = [j for j in range(4) if ids[j] == ids[i]]
            total = total - sum(logp[j] for j in positives) / len(positives) / 4
    torch.testing.assert_close(terms["L(V,S)"], total, rtol=1e-10, atol=1e-10)


def test_dual_softmax_matches_definition():
    g = torch.Generator().manual_seed(5)
    sim = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1  # texts x videos
    out = torch.from_numpy(dual_softmax(sim.numpy()))
    for j in range(4):
        e = torch.exp(100 * (sim[:, j] - sim[:, j].max()))  # softmax over the texts for video j
        torch.testing.assert_close(out[:, j], sim[:, j] * e / e.sum())
    # The prior is over queries: a text that is not the best query for any video loses its scores.
    sim = np.array([[0.9, 0.8], [0.5, 0.1]])
    assert np.abs(dual_softmax(sim)[1]).max() < 1e-6 and dual_softmax(sim)[0, 1] > 0.79


def test_gather_features_is_identity_without_distributed():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_features(x) is x


# --------------------------------------------------------------------------------------- 2-rank gloo check
LOCAL_ROWS = (3, 2)  # uneven on purpose: exercises the padded gather


def _full_features():
    feats = _feats(seed=6, n=sum(LOCAL_ROWS), d=8, keys="VSFC")
    return {k: v.float() for k, v in feats.items()}


def _rank_main(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start = sum(LOCAL_ROWS[:rank])
        local = {k: v[start : start + LOCAL_ROWS[rank]].clone().requires_grad_(True) for k, v in _full_features().items()}
        logit_scale = torch.tensor(math.log(20.0), requires_grad=True)
        total, terms = LOSSES["vsc_fc"](local, logit_scale)
        total.backward()
        torch.save(
            {"total": total.detach(), "grads": {k: v.grad for k, v in local.items()}, "scale_grad": logit_scale.grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_equal_single_process_full_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    world = len(LOCAL_ROWS)
    torch.multiprocessing.spawn(_rank_main, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)

    full = {k: v.clone().requires_grad_(True) for k, v in _full_features().items()}
    logit_scale = torch.tensor(math.log(20.0), requires_grad=True)
    total, _ = LOSSES["vsc_fc"](full, logit_scale)
    total.backward()
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(out["total"], total.detach(), rtol=1e-6, atol=1e-6)
        start = sum(LOCAL_ROWS[:rank])
        for key, grad in out["grads"].items():
            # every rank computes the same full loss and the gather's backward sums them: world x the slice
            expected = world * full[key].grad[start : start + LOCAL_ROWS[rank]]
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["scale_grad"], logit_scale.grad, rtol=1e-5, atol=1e-6)
    # DDP/DeepSpeed averaging over ranks then reproduces the single-process gradient of any parameter:
    # mean_r(world * dL/dx_r * dx_r/dθ) = Σ_r dL/dx_r dx_r/dθ = dL/dθ  (and logit_scale: mean of equal values).
