# Helpers of the Vita-CLIP recognition rules (workflow/rules/recognition.smk): row models, identities, options.
# Option building and cross references live in clipvip/evaluate_recognition.py (also used at parse time by
# clipvip.config.check_stage_options).
from clipvip import evaluate_recognition as recognition_config

RECOGNITION = config["recognition"]
RECOGNITION_DATASETS = RECOGNITION["datasets"]


def recognition_init():
    init = RECOGNITION["init"]
    if not init:
        return config["base_model"]
    return pretrained_model(init) if init in VARIANTS and PRETRAIN["enabled"] else init


def recognition_init_input():
    init = RECOGNITION["init"]
    if init in VARIANTS and PRETRAIN["enabled"]:
        return [pretrained_model(init)]
    return local_model_input(recognition_init())


def recognition_classes(ds):
    return recognition_config.classes_file(config, ds)


def recognition_classes_input(ds):
    """The demo's class lists are written by demo_data (its DONE.json stands for them)."""
    return [f"{DEMO_DIR}/DONE.json"] if is_demo_dataset(ds) else [recognition_classes(ds)]


def recognition_model(ds):
    return f"{R}/runs/recognition/{ds}/model"


def recognition_rows(ds):
    rows = []
    if RECOGNITION["baselines"]:
        rows.append("clip")
        if PRETRAIN["enabled"]:
            rows += [f"pretrained-{v}" for v in VARIANTS]
    return rows + ["vita"]


def recognition_eval_targets():
    split = RECOGNITION["split"]
    return [f"{R}/eval_recognition/{row}/{ds}/{split}.json"
            for ds in recognition_config.eval_datasets(config) for row in recognition_rows(ds)]


def recognition_targets():
    """Targets of `rule all` (workflow/rules/common.smk all_targets)."""
    return [f"{R}/tables/recognition.md"] if RECOGNITION_DATASETS else []


def recognition_row_model(wc):
    if wc.rrow == "clip":
        return config["base_model"]
    if wc.rrow == "vita":
        return recognition_model(recognition_config.model_dataset(config, wc.ds))
    return pretrained_model(wc.rrow.split("-", 1)[1])


def recognition_row_model_input(wc):
    if wc.rrow == "clip":
        return local_model_input(config["base_model"])
    return [recognition_row_model(wc)]


def recognition_row_identity(wc):
    zero_shot = wc.ds not in RECOGNITION_DATASETS
    entry = RECOGNITION["zero_shot"].get(wc.ds) or {}
    identity = {"dataset": wc.ds, "group": entry.get("group") or wc.ds, "split": wc.split}
    if wc.rrow == "clip":
        return {**identity, "method": "CLIP", "protocol": "zero-shot (class-name prompts)", "encoder": "meanpool"}
    if wc.rrow == "vita":
        return {**identity, "method": "Vita-CLIP",
                "protocol": "zero-shot (unseen classes)" if zero_shot else "supervised", "encoder": "vita",
                "trained_on": recognition_config.model_dataset(config, wc.ds)}
    variant = wc.rrow.split("-", 1)[1]
    method = "CLIP-ViP post-pretrained" + (f" ({variant})" if len(VARIANTS) > 1 else "")
    return {**identity, "method": method, "protocol": "zero-shot (class-name prompts)",
            "encoder": VARIANTS[variant]["video_encoder"]}


def recognition_eval_options(wc):
    opts = recognition_config.eval_options(config, wc.ds)
    if wc.rrow == "vita":
        opts["zero_shot"] = wc.ds not in RECOGNITION_DATASETS  # supervised: every class is a trained one
    return opts


def recognition_val_args(wc):
    ann = DATASETS[wc.ds]["annotations"]
    return f"--val-annotations {ann['val']}" if "val" in ann else ""
