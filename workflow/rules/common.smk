# Helpers shared by every stage: config validation, dataset ids and shards, variants, stage options as JSON.
import functools
import json
import os

from clipvip.config import (
    dataset_settings,
    finetune_options,
    pretrain_options,
    validate_config,
    variants,
)
from clipvip.frames import read_clip_ids, shard_count


validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

R = config["results"]
DATASETS = config["datasets"]
VARIANTS = variants(config)
DEMO = config["demo"]
DEMO_DIR = f"{R}/demo"
PRETRAINED_DIR = f"{R}/pretrained"


wildcard_constraints:
    ds="[A-Za-z0-9_.]+",
    shard="[0-9]{5}",
    variant="[A-Za-z0-9_]+-[A-Za-z0-9_]+",
    split="train|val|test",
    row="base|pretrained-[A-Za-z0-9_]+-[A-Za-z0-9_]+|finetuned-[A-Za-z0-9_]+-[A-Za-z0-9_]+",


def as_json(value):
    """Stage options travel as one JSON argument; sorted keys keep the text (and reruns) stable."""
    return json.dumps(value, sort_keys=True)


def is_demo_dataset(ds):
    return DEMO["enabled"] and DATASETS[ds]["video_dir"].startswith(DEMO_DIR)


def annotation_files(ds):
    return sorted(set(DATASETS[ds]["annotations"].values()))


@functools.cache
def dataset_clip_ids(ds):
    """Clip ids of a dataset, known at parse time: the demo's are computed, real ones read from the JSONL."""
    if is_demo_dataset(ds):
        from clipvip.demo_data import clip_ids

        return clip_ids(DEMO["corpus"], ds)
    missing = [p for p in annotation_files(ds) if not os.path.exists(p)]
    if missing:
        raise WorkflowError(f"dataset {ds}: annotation file(s) not found: {', '.join(missing)}")
    return read_clip_ids(annotation_files(ds))


def shards(ds):
    n = shard_count(len(dataset_clip_ids(ds)), config["frames"]["shard_size"])
    return [f"{k:05d}" for k in range(n)]


def frames_options(ds):
    opts = {k: v for k, v in config["frames"].items() if k != "shard_size"}
    return {**opts, "num_frames": DATASETS[ds]["num_frames"]}


def frame_index(ds):
    return f"{R}/frames/{ds}/index.json"


def local_model_input(path):
    """A model given as a folder the workflow builds (or that exists) is an input; a hub name is not."""
    if DEMO["enabled"] and path.startswith(PRETRAINED_DIR):
        return [f"{PRETRAINED_DIR}/DONE.json"]
    return [path] if os.path.exists(path) else []


def pretrained_model(variant):
    return f"{R}/runs/pretrain/{variant}/model"


def finetune_init(variant):
    return pretrained_model(variant) if config["pretrain"]["enabled"] else config["base_model"]


def eval_rows():
    rows = []
    if config["evaluate"]["zero_shot"]:
        rows.append("base")
        if config["pretrain"]["enabled"]:
            rows += [f"pretrained-{v}" for v in VARIANTS]
    rows += [f"finetuned-{v}" for v in VARIANTS]
    return rows


def eval_targets():
    split = config["evaluate"]["split"]
    return [
        f"{R}/eval/{row}/{ds}/{split}.json"
        for row in eval_rows()
        for ds in config["finetune"]["datasets"]
        if split in DATASETS[ds]["annotations"]
    ]


def train_logs():
    logs = []
    if config["pretrain"]["enabled"]:
        logs += [f"{R}/runs/pretrain/{v}/metrics.jsonl" for v in VARIANTS]
    logs += [f"{R}/runs/finetune/{v}/{ds}/metrics.jsonl" for v in VARIANTS for ds in config["finetune"]["datasets"]]
    return logs


def all_targets():
    targets = [f"{R}/tables/retrieval.md"]
    targets += [frame_index(ds) for ds in DATASETS]
    return targets


def demo_annotation_outputs():
    return sorted(
        {p for ds in DATASETS if is_demo_dataset(ds) for p in DATASETS[ds]["annotations"].values()}
    )


def caption_files(ds):
    return expand(f"{R}/captions/{ds}/{{shard}}.jsonl", shard=shards(ds))


def train_resources():
    # `mpi` tells the SLURM jobstep plugin that the shell starts its own ranks (profiles set it to "srun").
    return {"launcher": config["launch"]["launcher"], "tasks": config["launch"]["tasks"], "mpi": ""}


def finetune_val_args(wc):
    ann = DATASETS[wc.ds]["annotations"]
    if "val" not in ann:
        return ""
    return f"--val-annotations {ann['val']} --val-frames-index {frame_index(wc.ds)}"


def row_model(row, ds):
    if row == "base":
        return config["base_model"]
    stage, variant = row.split("-", 1)
    return pretrained_model(variant) if stage == "pretrained" else f"{R}/runs/finetune/{variant}/{ds}/model"


def row_model_input(wc):
    if wc.row == "base":
        return local_model_input(config["base_model"])
    return [row_model(wc.row, wc.ds)]


def row_identity(wc):
    identity = {"dataset": wc.ds, "split": wc.split}
    if wc.row == "base":
        return {**identity, "method": "CLIP (zero-shot)", "stage": "zero-shot",
                "encoder": config["evaluate"]["zero_shot_encoder"], "loss": "-"}
    stage, variant = wc.row.split("-", 1)
    return {**identity, "method": "CLIP-ViP", "stage": "zero-shot" if stage == "pretrained" else "fine-tuned",
            "encoder": VARIANTS[variant]["video_encoder"], "loss": VARIANTS[variant]["loss"]}


def evaluate_options(wc):
    opts = {**dataset_settings(config, wc.ds), **config["evaluate"]["options"]}
    if wc.row == "base":
        opts["video_encoder"] = config["evaluate"]["zero_shot_encoder"]
    return opts
