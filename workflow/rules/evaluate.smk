# Retrieval evaluation (text→video and video→text, with and without dual softmax) of every table row:
# zero-shot base CLIP, zero-shot post-pretrained, fine-tuned (selected on validation, reported on test).


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


rule evaluate:
    input:
        model=row_model_input,
        index=lambda wc: frame_index(wc.ds),
        annotations=lambda wc: DATASETS[wc.ds]["annotations"][wc.split],
    output:
        metrics=f"{R}/eval/{{row}}/{{ds}}/{{split}}.json",
    params:
        model=lambda wc: row_model(wc.row, wc.ds),
        row=lambda wc: as_json(row_identity(wc)),
        options=lambda wc: as_json(evaluate_options(wc)),
    log:
        f"{R}/logs/evaluate/{{row}}/{{ds}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{row}}/{{ds}}/{{split}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip evaluate --model {params.model:q} --frames-index {input.index}"
        " --annotations {input.annotations} --out {output.metrics} --row {params.row:q}"
        " --options {params.options:q} > {log} 2>&1"
