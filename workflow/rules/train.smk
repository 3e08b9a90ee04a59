# Post-pretraining (OCL over video, subtitle, middle frame, caption) and per-dataset fine-tuning, under DeepSpeed.
# Checkpoints live under {R}/checkpoints (not a declared output), so a failed or killed job resumes on rerun.
# How ranks start is a resource, not a param: switching launcher or task count never reruns a finished model.

# Data-scale study variants (vip-vsc_fc-scale0p1, ...) read a nested subset of the pre-training annotations:
# pretrain_annotations() in analysis_common.smk.

PRETRAIN = config["pretrain"]


rule pretrain:
    input:
        index=lambda wc: frame_index(PRETRAIN["dataset"]),
        annotations=lambda wc: pretrain_annotations(wc.variant),
        captions=lambda wc: caption_files(PRETRAIN["dataset"]),
        init=local_model_input(config["base_model"]),
    output:
        model=directory(f"{R}/runs/pretrain/{{variant}}/model"),
        metrics=f"{R}/runs/pretrain/{{variant}}/metrics.jsonl",
        config=f"{R}/runs/pretrain/{{variant}}/config.json",
    params:
        options=lambda wc: as_json(pretrain_options(config, wc.variant)),
        init=config["base_model"],
        run_dir=f"{R}/runs/pretrain/{{variant}}",
        checkpoints=f"{R}/checkpoints/pretrain/{{variant}}",
    resources:
        **train_resources(),
    log:
        f"{R}/logs/pretrain/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{{variant}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "{resources.mpi} clipvip train --stage pretrain --frames-index {input.index}"
        " --annotations {input.annotations} --captions {input.captions} --init {params.init:q}"
        " --out {params.run_dir} --checkpoint-dir {params.checkpoints} --options {params.options:q}"
        " --launcher {resources.launcher} --nprocs {resources.tasks} > {log} 2>&1"


rule finetune:
    input:
        index=lambda wc: frame_index(wc.ds),
        annotations=lambda wc: DATASETS[wc.ds]["annotations"]["train"],
        val=lambda wc: DATASETS[wc.ds]["annotations"].get("val", []),
        init=lambda wc: [pretrained_model(wc.variant)] if PRETRAIN["enabled"] else local_model_input(config["base_model"]),
    output:
        model=directory(f"{R}/runs/finetune/{{variant}}/{{ds}}/model"),
        metrics=f"{R}/runs/finetune/{{variant}}/{{ds}}/metrics.jsonl",
        config=f"{R}/runs/finetune/{{variant}}/{{ds}}/config.json",
    params:
        options=lambda wc: as_json(finetune_options(config, wc.variant, wc.ds)),
        init=lambda wc: finetune_init(wc.variant),
        val=finetune_val_args,
        run_dir=f"{R}/runs/finetune/{{variant}}/{{ds}}",
        checkpoints=f"{R}/checkpoints/finetune/{{variant}}/{{ds}}",
    resources:
        **train_resources(),
    log:
        f"{R}/logs/finetune/{{variant}}/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{variant}}/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "{resources.mpi} clipvip train --stage finetune --frames-index {input.index}"
        " --annotations {input.annotations} {params.val} --init {params.init:q}"
        " --out {params.run_dir} --checkpoint-dir {params.checkpoints} --options {params.options:q}"
        " --launcher {resources.launcher} --nprocs {resources.tasks} > {log} 2>&1"
