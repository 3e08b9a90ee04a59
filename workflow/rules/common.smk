# Helpers shared by every stage: config validation, dataset ids and shards, variants, stage options as JSON.
import functools
import json
import os

from clipvip.config import (
    dataset_settings,
    finetune_options,
    finetuned_variants,
    pretrain_options,
    validate_config,
    variants,
)
from clipvip.frames import read_clip_ids, shard_count
from clipvip.tiny_models import PARTS as TINY_PARTS, part_options as tiny_part_options


# Jobs re-read the workflow: the main process has checked everything before submitting any (see validate_config).
validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), checks=workflow.is_main_process)

R = config["results"]
DATASETS = config["datasets"]
VARIANTS = variants(config)
FINETUNED = finetuned_variants(config)  # the variants whose loss is in finetune.losses (default: all)
DEMO = config["demo"]
DEMO_DIR = f"{R}/demo"
PRETRAINED_DIR = f"{R}/pretrained"
# <encoder>-<loss>[-overlapped|-aligned][-retrieval] (clipvip.config.variants), and data-scale study variants
# <variant>-scale<fraction> (vip-vsc_fc-scale0p1)
VARIANT_RE = "[A-Za-z0-9_]+-[A-Za-z0-9_]+(?:-(?:overlapped|aligned))?(?:-retrieval)?(?:-scale[0-9p]+)?"


wildcard_constraints:
    ds="[A-Za-z0-9_.]+",
    shard="[0-9]{5}",
    variant=VARIANT_RE,
    split="train|val|test",
    row=f"base|(?:pretrained|finetuned)-{VARIANT_RE}",


def as_json(value):
    """Stage options travel as one JSON argument; sorted keys keep the text (and reruns) stable."""
    return json.dumps(value, sort_keys=True)


def is_demo_dataset(ds):
    return DEMO["enabled"] and DATASETS[ds]["video_dir"].startswith(DEMO_DIR)


def annotation_files(ds):
    return sorted(set(DATASETS[ds]["annotations"].values()))


@functools.cache
def dataset_clip_ids(ds):
    """Clip ids of a demo dataset (computed, tiny). Real datasets' ids are never read at parse time: their
    shard count comes from the split_ids checkpoint (see `shards`); this reads its id lists once they exist."""
    if is_demo_dataset(ds):
        from clipvip.demo_data import clip_ids

        return clip_ids(DEMO["corpus"], ds)
    ids_dir = getattr(checkpoints, f"split_ids_{ds}").get().output[0]
    ids = []
    for shard in shards(ds):
        with open(os.path.join(ids_dir, f"{shard}.txt")) as fh:
            ids += fh.read().split()
    return ids


def shards(ds):
    """Shard names 00000, 00001, ... of a dataset. Demo: from its computed ids. Real data: the id lists that
    the split_ids checkpoint wrote (call only from input functions: before the checkpoint ran this raises
    Snakemake's IncompleteCheckpointException, which defers the jobs that need the shard list)."""
    if is_demo_dataset(ds):
        n = shard_count(len(dataset_clip_ids(ds)), config["frames"]["shard_size"])
        return [f"{k:05d}" for k in range(n)]
    missing = [p for p in annotation_files(ds) if not os.path.exists(p)]
    if missing:
        raise WorkflowError(f"dataset {ds}: annotation file(s) not found: {', '.join(missing)}")
    ids_dir = getattr(checkpoints, f"split_ids_{ds}").get().output[0]
    return sorted(name[:5] for name in os.listdir(ids_dir) if len(name) == 9 and name.endswith(".txt")
                  and name[:5].isdigit())


def frames_options(ds):
    opts = {k: v for k, v in config["frames"].items() if k != "shard_size"}
    return {**opts, **DATASETS[ds].get("frames", {}), "num_frames": DATASETS[ds]["num_frames"]}


def frame_index(ds):
    return f"{R}/frames/{ds}/index.json"


def local_model_input(path):
    """A model given as a folder the workflow builds (or that exists) is an input; a hub name is not."""
    if DEMO["enabled"] and path.startswith(PRETRAINED_DIR):
        part = os.path.relpath(path, PRETRAINED_DIR).split(os.sep)[0]  # clip or captioner (rule tiny_models)
        parts = [part] if part in TINY_PARTS else TINY_PARTS
        return [f"{PRETRAINED_DIR}/DONE_{p}.json" for p in parts]
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
    rows += [f"finetuned-{v}" for v in FINETUNED]
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
    logs += [f"{R}/runs/finetune/{v}/{ds}/metrics.jsonl" for v in FINETUNED for ds in config["finetune"]["datasets"]]
    return logs


def all_targets():
    targets = [f"{R}/tables/retrieval.md"]
    targets += [frame_index(ds) for ds in DATASETS]
    targets += analysis_targets()  # workflow/rules/analysis.smk: domain gap, gallery, data-scale study
    targets += recognition_targets()  # workflow/rules/recognition.smk: Vita-CLIP recognition table
    return targets


def demo_annotation_outputs():
    return sorted(
        {p for ds in DATASETS if is_demo_dataset(ds) for p in DATASETS[ds]["annotations"].values()}
    )


def caption_files(ds):
    """The pre-training captions as training reads them: one merged, memory-mapped Arrow table."""
    return [f"{R}/captions/{ds}/captions.arrow"]


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
    identity = {**identity, "method": "CLIP-ViP", "stage": "zero-shot" if stage == "pretrained" else "fine-tuned",
                "encoder": VARIANTS[variant]["video_encoder"], "loss": VARIANTS[variant]["loss"]}
    if "data_scale" in VARIANTS[variant]:  # data-scale study rows: their own table rows ("-" = all data)
        identity["data"] = f"{VARIANTS[variant]['data_scale']:g}"
    # VideoCLIP's ideas (ablation.pair_sampling / batching): own columns, "-" = the defaults (clip, random)
    for key, column in (("pair_sampling", "pairs"), ("batching", "batching")):
        if key in VARIANTS[variant]:
            identity[column] = VARIANTS[variant][key]
    return identity


def evaluate_options(wc):
    opts = {**dataset_settings(config, wc.ds), **config["evaluate"]["options"]}
    if wc.row == "base":
        opts["video_encoder"] = config["evaluate"]["zero_shot_encoder"]
    return opts
