"""DeepSpeed checkpoint housekeeping and the consolidated fp32 model export.

Usage:
    tag = step_tag(120)                        # "global_step120"
    prune(ckpt_dir, keep=2, protect={best})    # rank 0, after a save
    export_model(ckpt_dir, tag, zero_stage, config, tokenizer, out / "model")   # rank 0

Layout of ``--checkpoint-dir``: DeepSpeed's ``<tag>/`` folders + ``latest`` (written by us, not DeepSpeed, only
after every rank finished saving, so a kill mid-save leaves the previous checkpoint as the one resumed), periodic
tags ``global_step<N>``, the best-validation tag ``best_step<N>``, and ``status.json``
(``{"status": "running"|"done"|"preempted"|"diverged"|"error", "step"[, "message"]}``) which the launching parent reads to map
torchrun's generic failure to our exit code, ``metrics.jsonl`` (the master copy of the training log: Snakemake
deletes a failed job's outputs, the resumed run must still report every step) and ``fingerprint.json``.

The fingerprint identifies *what* is trained: stage, options that change the result, and the identity (size
and mtime) of the init model and data files. A checkpoint folder whose fingerprint differs (changed lr, a
re-trained init model, new annotations) is discarded instead of resumed, so a rerun after a config change
or ``--forcerun`` trains anew, while a rerun after a kill or preemption resumes.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from clipvip import stage

EXIT_DIVERGED = 3    # NaN/inf loss: last good checkpoint kept, nothing saved
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed after SIGTERM/SIGUSR1; rerun to resume
EXIT_USER_ERROR = 2  # a rank hit bad input (clipvip.stage.UserError); status.json carries the message
STATUS_CODES = {"done": 0, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED, "error": EXIT_USER_ERROR}


# Options that change how a run is executed, not what it computes: they may differ between kill and resume.
NOT_FINGERPRINTED = {"launcher", "nprocs", "dist_backend", "num_workers", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_batch_size", "debug_nan_at_step", "compile"}


def _path_identity(path: str | None):
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        return str(path)  # a hub name
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    return [str(p.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def run_fingerprint(stage: str, options: dict, paths: dict) -> dict:
    return {
        "stage": stage,
        "options": {k: v for k, v in sorted(options.items()) if k not in NOT_FINGERPRINTED
                    and not k.startswith("submitit_")},
        "inputs": {k: ([_path_identity(x) for x in v] if isinstance(v, list) else _path_identity(v))
                   for k, v in sorted(paths.items())},
    }


LAUNCHER_FILES = {"submitit"}  # job logs of the launcher that is running this very run: never discarded


def claim_checkpoint_dir(ckpt_dir: Path, fingerprint: dict) -> bool:
    """Rank 0: keep ``ckpt_dir`` if it belongs to this run, else empty it. Returns True when it was discarded."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / "fingerprint.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    stale = [p for p in ckpt_dir.iterdir() if p.name not in LAUNCHER_FILES]
    discarded = bool(stale) and previous != json.loads(json.dumps(fingerprint))
    if discarded:
        for entry in stale:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    write_json_atomic(path, fingerprint)
    return discarded


def step_tag(step: int) -> str:
    return f"global_step{step}"


def best_tag(step: int) -> str:
    return f"best_step{step}"


def tag_step(tag: str) -> int:
    match = re.search(r"(\d+)$", tag)
    return int(match.group(1)) if match else -1


def write_latest(ckpt_dir: Path, tag: str) -> None:
    """Point ``latest`` at ``tag`` (rank 0, after every rank's save returned)."""
    stage.write_text_atomic(Path(ckpt_dir) / "latest", tag)


def latest_tag(ckpt_dir: Path) -> str | None:
    path = Path(ckpt_dir) / "latest"
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def prune(ckpt_dir: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the ``keep`` newest ``global_step*`` tags and every ``best_step*`` not protected."""
    ckpt_dir = Path(ckpt_dir)
    periodic = sorted((p for p in ckpt_dir.glob("global_step*") if p.is_dir()), key=lambda p: tag_step(p.name))
    doomed = periodic[: max(0, len(periodic) - max(1, keep))]
    doomed += [p for p in ckpt_dir.glob("best_step*") if p.is_dir()]
    latest = latest_tag(ckpt_dir)
    for path in doomed:
        if path.name not in protect and path.name != latest:
            shutil.rmtree(path, ignore_errors=True)


def write_json_atomic(path: Path, value) -> None:
    """``clipvip.stage.write_json_atomic`` after turning non-JSON leaves (paths, dtypes) into strings."""
    stage.write_json_atomic(path, json.loads(json.dumps(value, default=str)))


def write_status(ckpt_dir: Path, status: str, step: int, message: str | None = None) -> None:
    value = {"status": status, "step": step}
    if message is not None:
        value["message"] = message
    write_json_atomic(Path(ckpt_dir) / "status.json", value)


def read_status(ckpt_dir: Path) -> dict:
    try:
        return json.loads((Path(ckpt_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def consolidated_state_dict(ckpt_dir: Path, tag: str, zero_stage: int, prefix: str = "model.") -> dict:
    """fp32 weights of the wrapped model from a DeepSpeed checkpoint, wrapper prefix stripped.

    ZeRO 1-3 keep the fp32 master in per-rank optimizer shards: DeepSpeed's own
    ``get_fp32_state_dict_from_zero_checkpoint`` reassembles them. At stage 0 there is no ZeRO shard; the
    whole module sits in ``mp_rank_00_model_states.pt`` (fp32 on CPU; cast in case of bf16/fp16 modules).
    """
    import torch

    if zero_stage == 0:
        states = torch.load(Path(ckpt_dir) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                            weights_only=False)
        state = {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def export_model(ckpt_dir: Path, tag: str, zero_stage: int, model_config, tokenizer, out_dir: Path,
                 extra_files: dict[str, str] | None = None) -> None:
    """Write ``out_dir`` = ``CLIPViPModel.save_pretrained`` + tokenizer (+ ``extra_files``: name -> text, e.g. a
    recognition model's ``classes.txt``), atomically (a temp folder beside it, renamed onto it when complete;
    removed if anything fails)."""
    import torch

    from clipvip.model import CLIPViPModel

    state = consolidated_state_dict(ckpt_dir, tag, zero_stage)
    model = CLIPViPModel(model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    persistent = set(model.state_dict())
    missing = [k for k in missing if k in persistent]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {tag} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    out_dir = Path(out_dir)
    with stage.atomic_path(out_dir) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed export by a process of the same pid
        tmp.mkdir(parents=True)
        with torch.no_grad():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out_dir.exists():  # a directory rename cannot replace a non-empty one: drop the old export last
            shutil.rmtree(out_dir)
