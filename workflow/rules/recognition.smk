# Vita-CLIP action recognition (config section `recognition`; off while recognition.datasets is empty):
# per training dataset `clipvip train --task recognition` (prompts around a frozen CLIP), then
# `clipvip evaluate-recognition` for every row x dataset, then the recognition table.
# Rows: clip (base_model, class-name prompts), pretrained-<variant> (post-pretrained CLIP-ViP, class-name
# prompts), vita (supervised on a training dataset's classes; zero-shot with prompts only on a
# recognition.zero_shot dataset's unseen classes). Options, cross references and helpers:
# clipvip/evaluate_recognition.py (checked at parse time through clipvip.config.check_stage_options); the rules'
# helper functions: recognition_common.smk.


include: "recognition_common.smk"


rule recognition_train:
    input:
        index=lambda wc: frame_index(wc.ds),
        annotations=lambda wc: DATASETS[wc.ds]["annotations"]["train"],
        val=lambda wc: DATASETS[wc.ds]["annotations"].get("val", []),
        classes=lambda wc: recognition_classes_input(wc.ds),
        init=recognition_init_input(),
    output:
        model=directory(f"{R}/runs/recognition/{{ds}}/model"),
        metrics=f"{R}/runs/recognition/{{ds}}/metrics.jsonl",
        config=f"{R}/runs/recognition/{{ds}}/config.json",
    params:
        options=lambda wc: as_json(recognition_config.train_options(config, wc.ds)),
        init=lambda wc: recognition_init(),
        classes=lambda wc: recognition_classes(wc.ds),
        val=recognition_val_args,
        run_dir=f"{R}/runs/recognition/{{ds}}",
        checkpoints=f"{R}/checkpoints/recognition/{{ds}}",
    resources:
        **train_resources(),
    log:
        f"{R}/logs/recognition_train/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/recognition_train/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "{resources.mpi} clipvip train --task recognition --frames-index {input.index}"
        " --annotations {input.annotations} {params.val} --class-list {params.classes:q} --init {params.init:q}"
        " --out {params.run_dir} --checkpoint-dir {params.checkpoints} --options {params.options:q}"
        " --launcher {resources.launcher} --nprocs {resources.tasks} > {log} 2>&1"


rule recognition_evaluate:
    input:
        model=recognition_row_model_input,
        index=lambda wc: frame_index(wc.ds),
        annotations=lambda wc: DATASETS[wc.ds]["annotations"][wc.split],
        classes=lambda wc: recognition_classes_input(wc.ds),
    output:
        metrics=f"{R}/eval_recognition/{{rrow}}/{{ds}}/{{split}}.json",
    wildcard_constraints:
        rrow=f"clip|vita|pretrained-{VARIANT_RE}",
    params:
        model=recognition_row_model,
        classes=lambda wc: recognition_classes(wc.ds),
        row=lambda wc: as_json(recognition_row_identity(wc)),
        options=lambda wc: as_json(recognition_eval_options(wc)),
    log:
        f"{R}/logs/recognition_evaluate/{{rrow}}/{{ds}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/recognition_evaluate/{{rrow}}/{{ds}}/{{split}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip evaluate-recognition --model {params.model:q} --frames-index {input.index}"
        " --annotations {input.annotations} --classes {params.classes:q} --split {wildcards.split}"
        " --out {output.metrics} --row {params.row:q} --options {params.options:q} > {log} 2>&1"


rule recognition_tables:
    input:
        metrics=recognition_eval_targets(),
    output:
        csv=report(f"{R}/tables/recognition.csv", caption="../report/recognition_table.rst", category="Tables"),
        md=report(f"{R}/tables/recognition.md", caption="../report/recognition_table.rst", category="Tables"),
    params:
        out_dir=lambda wc, output: os.path.dirname(output.csv),
    log:
        f"{R}/logs/recognition_tables.log",
    benchmark:
        f"{R}/benchmarks/recognition_tables.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip recognition-tables --metrics {input.metrics} --out-dir {params.out_dir} > {log} 2>&1"
