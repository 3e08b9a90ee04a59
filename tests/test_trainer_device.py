"""CPU-side guards of the GPU path: every tensor the trainer hands to a collective is on the engine's device.

NCCL accepts only CUDA tensors; gloo accepts CPU ones, so a CPU-built flag tensor passes every CPU test and
raises at the first step on a GPU cluster. These tests run the real ``Trainer.train_step`` flag path and the
collectives helper with ``torch.distributed`` replaced by a recorder, and the device set to ``meta`` (a
device that is neither the CPU nor available to any test machine): a tensor created without ``device=`` shows
up as ``cpu`` in the record.
"""
from __future__ import annotations

import inspect
import types

import pytest
import torch
import torch.distributed as dist

from clipvip.trainer import collectives as coll
from clipvip.trainer import loop

META = torch.device("meta")


class Stop(Exception):
    """Raised by the recorder after the first all-reduce: the test needs no numbers, only the device."""


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def all_reduce(tensor, op=None, group=None, async_op=False):
        calls.append(("all_reduce", tensor.device, op))
        raise Stop

    def broadcast_object_list(objs, src=0, group=None, device=None):
        calls.append(("broadcast_object_list", torch.device(device) if device is not None else None, None))

    def barrier(group=None, async_op=False, device_ids=None):
        calls.append(("barrier", device_ids, None))

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(dist, "barrier", barrier)
    return calls


def test_flags_are_built_and_reduced_on_the_given_device(recorder):
    with pytest.raises(Stop):
        coll.all_reduce_flags([True, torch.zeros((), device=META)], META)
    assert recorder == [("all_reduce", META, dist.ReduceOp.MAX)]
    flags = coll.flags_tensor([1, False, torch.tensor(True)], META)
    assert flags.device == META and flags.dtype == torch.float32 and flags.shape == (3,)
    coll.broadcast_object({"step": 3}, META)
    assert recorder[-1] == ("broadcast_object_list", META, None)


class _Engine:
    """What train_step needs of a DeepSpeed engine; its loss lives on the 'accelerator' (meta)."""

    def __init__(self, loss_device=META):
        self.backward_called, self.loss_device = False, loss_device

    def get_lr(self):
        return [1e-3]

    def __call__(self, batch):
        loss = torch.ones((), device=self.loss_device)
        return loss, {"L(V,S)": loss}

    def backward(self, loss):
        self.backward_called = True


def _trainer_on(device, loss_device) -> loop.Trainer:
    trainer = loop.Trainer.__new__(loop.Trainer)  # no process group, no DeepSpeed: only the step's state
    trainer.torch, trainer.device, trainer.dtype = torch, device, torch.float32
    trainer.engine, trainer.accum, trainer.micro, trainer.main = _Engine(loss_device), 1, 1, True
    trainer.opts = types.SimpleNamespace(debug_nan_at_step=None)
    trainer.info = types.SimpleNamespace(rank=0)
    trainer.state, trainer.stop, trainer.manual_clip = {"step": 0}, False, 0.0
    return trainer


# loss on the device (the real case), and on the CPU: whatever the loss's device, the flags follow the engine's.
@pytest.mark.parametrize("loss_device", [META, torch.device("cpu")], ids=["loss-on-device", "loss-on-cpu"])
def test_train_step_flag_all_reduce_uses_the_engine_device(recorder, loss_device):
    trainer = _trainer_on(META, loss_device)
    with pytest.raises(Stop):
        trainer.train_step(iter([{}]))
    assert [c[:2] for c in recorder] == [("all_reduce", META)], recorder
    assert not trainer.engine.backward_called  # the agreement precedes backward


def test_trainer_issues_collectives_only_through_the_helper():
    source = inspect.getsource(loop)
    for call in ("distributed.all_reduce", "distributed.barrier", "distributed.broadcast", "dist.all_reduce",
                 "distributed.all_gather"):
        assert call not in source, f"clipvip/trainer/loop.py calls {call} directly; use trainer.collectives"


def test_barrier_names_the_gpu_under_nccl(recorder):
    coll.barrier(torch.device("cuda", 3))
    assert recorder[-1] == ("barrier", [3], None)
    coll.barrier(torch.device("cpu"))
    assert recorder[-1] == ("barrier", None, None)


def test_loss_is_computed_in_fp32_from_bf16_towers():
    """A bf16 model's features reach the loss as fp32 (clipvip.losses computes in its inputs' dtype)."""
    from clipvip.trainer.step import ContrastiveStep

    seen = {}

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.bfloat16))

        def encode_video(self, px):
            return torch.nn.functional.normalize(px.flatten(1), dim=-1)

        def encode_text(self, ids, mask):
            return torch.nn.functional.normalize(ids.to(torch.bfloat16), dim=-1)

    step = ContrastiveStep(Tiny(), "vs", dedup_texts=False)
    inner = step.loss_fn

    def spy(feats, scale, groups=None):
        seen.update({k: v.dtype for k, v in feats.items()}, scale=scale.dtype)
        return inner(feats, scale, groups=groups)

    step.loss_fn = spy
    batch = {"pixel_values": torch.randn(4, 1, 3, 2, 2, dtype=torch.bfloat16), "input_ids": torch.randn(4, 12),
             "attention_mask": None}
    loss, _ = step(batch)
    assert seen == {"V": torch.float32, "S": torch.float32, "scale": torch.float32} and loss.dtype == torch.float32
