# Helpers of the VideoCLIP rules (videoclip.smk): kept apart, as `snakemake --lint` asks. Defaults, cross
# references and options of the `videoclip` section: clipvip/config.py (videoclip_*), checked at parse time.
from clipvip.config import (
    videoclip_datasets,
    videoclip_evaluate_options,
    videoclip_finetune_options,
    videoclip_pretrain_options,
)

VIDEOCLIP = config["videoclip"]
VIDEOCLIP_DIR = f"{R}/runs/videoclip"
DEMO_BERT = f"{PRETRAINED_DIR}/bert"
# <stage> of {R}/eval/videoclip-<stage>/<ds>/<split>.json -> the table's stage column
VIDEOCLIP_STAGES = {"zeroshot": "zero-shot", "finetuned": "fine-tuned"}


def videoclip_builds_tiny_bert():
    """The demo's tiny BERT is built by the tiny_bert rule when videoclip.init names it."""
    return DEMO["enabled"] and VIDEOCLIP["enabled"] and VIDEOCLIP["init"].rstrip("/") == DEMO_BERT


def videoclip_init_input():
    return [DEMO_BERT] if videoclip_builds_tiny_bert() else local_model_input(VIDEOCLIP["init"])


def videoclip_bert_corpus():
    """The tiny BERT's WordPiece vocabulary is learnt from the training texts of VideoCLIP's datasets."""
    return sorted({DATASETS[ds]["annotations"]["train"] for ds in videoclip_datasets(config)})


def videoclip_pretrained_model():
    return f"{VIDEOCLIP_DIR}/pretrain/model"


def videoclip_finetuned_model(ds):
    return f"{VIDEOCLIP_DIR}/finetune/{ds}/model"


def videoclip_finetune_init():
    return videoclip_pretrained_model() if VIDEOCLIP["pretrain"]["enabled"] else VIDEOCLIP["init"]


def videoclip_finetune_init_input():
    return [videoclip_pretrained_model()] if VIDEOCLIP["pretrain"]["enabled"] else videoclip_init_input()


def videoclip_val_args(wc):
    ann = DATASETS[wc.ds]["annotations"]
    if "val" not in ann:
        return ""
    return f"--val-annotations {ann['val']} --val-frames-index {feature_index(wc.ds)}"


def videoclip_eval_stages():
    # zero-shot: the post-pretrained model, or init itself (a released checkpoint) without post-pretraining
    stages = ["zeroshot"] if VIDEOCLIP["evaluate"]["zero_shot"] else []
    return stages + (["finetuned"] if VIDEOCLIP["finetune"]["enabled"] else [])


def videoclip_eval_targets():
    """VideoCLIP's evaluation JSONs (the tables list them after CLIP-ViP's); none while videoclip is off."""
    if not VIDEOCLIP["enabled"]:
        return []
    split = config["evaluate"]["split"]
    return [
        f"{R}/eval/videoclip-{stage}/{ds}/{split}.json"
        for stage in videoclip_eval_stages()
        for ds in VIDEOCLIP["finetune"]["datasets"]
        if split in DATASETS[ds]["annotations"]
    ]


def videoclip_train_logs():
    if not VIDEOCLIP["enabled"]:
        return []
    logs = [f"{VIDEOCLIP_DIR}/pretrain/metrics.jsonl"] if VIDEOCLIP["pretrain"]["enabled"] else []
    if not VIDEOCLIP["finetune"]["enabled"]:
        return logs
    return logs + [f"{VIDEOCLIP_DIR}/finetune/{ds}/metrics.jsonl" for ds in VIDEOCLIP["finetune"]["datasets"]]


def videoclip_row_model(wc):
    return videoclip_finetune_init() if wc.vcstage == "zeroshot" else videoclip_finetuned_model(wc.ds)


def videoclip_row_model_input(wc):
    return videoclip_finetune_init_input() if wc.vcstage == "zeroshot" else [videoclip_finetuned_model(wc.ds)]


def videoclip_row_identity(wc):
    return {"dataset": wc.ds, "split": wc.split, "method": "VideoCLIP", "stage": VIDEOCLIP_STAGES[wc.vcstage],
            "encoder": "videoclip", "loss": "videoclip"}
