"""`snakemake -n` wall time on a dataset of 10,000 frame-store shards (target: under 30 s).

Usage:
    .venv/bin/python benchmarks/snakemake_dryrun.py [--quick] [--shards 10000]

Writes a throw-away config with one real-data dataset (an annotation JSONL of N clip ids, shard size 1, so N
shards) into a temp folder and times `snakemake -n` of the whole DAG (split ids → frames → index → captions →
pre-training → fine-tuning → evaluation → tables). A 100-shard run is timed in the same invocation for scale.
The last line is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, n_clips: int) -> Path:
    ann = tmp / f"ann_{n_clips}"
    ann.mkdir()
    for split, ids in {"train": range(0, n_clips - 2), "val": [n_clips - 2], "test": [n_clips - 1]}.items():
        with open(ann / f"{split}.jsonl", "w") as fh:
            for i in ids:
                fh.write(json.dumps({"clip_id": f"v{i:07d}", "text": "a person does something"}) + "\n")
    config = {
        "results": str(tmp / f"results_{n_clips}"),
        "base_model": "openai/clip-vit-base-patch32",
        "demo": {"enabled": False},
        "frames": {"shard_size": 1},
        "datasets": {
            "big": {"video_dir": str(tmp / "videos"), "annotations": {s: str(ann / f"{s}.jsonl") for s in
                                                                   ("train", "val", "test")}},
        },
        "captions": {"model": "Salesforce/blip-image-captioning-base"},
        "pretrain": {"enabled": True, "dataset": "big"},
        "finetune": {"datasets": ["big"]},
    }
    path = tmp / f"config_{n_clips}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run_seconds(config: Path) -> float:
    snakemake = Path(sys.executable).with_name("snakemake")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-n", "--quiet", "--cores", "1", "--configfile", str(config)],
        cwd=REPO, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="same measurement (it already takes < 1 min)")
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        small = dry_run_seconds(write_config(Path(tmp), 100))
        big = dry_run_seconds(write_config(Path(tmp), args.shards))
    print(f"snakemake -n: 100 shards {small:.1f} s, {args.shards} shards {big:.1f} s")
    target = 30.0
    print(json.dumps({"benchmark": "snakemake_dryrun", "value": round(big, 2), "unit": f"s for {args.shards} shards",
                      "target": target, "ok": big < target}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
