# VideoCLIP (Xu et al., EMNLP 2021; fairseq MMPT) beside CLIP-ViP (config section `videoclip`, off by default):
# per-second features (features.smk; the section's datasets are added to features.datasets) -> post-pretraining
# on the pre-training dataset's features + subtitles -> zero-shot evaluation on every downstream test set ->
# fine-tuning on every downstream train set -> fine-tuned evaluation. The evaluation JSONs sit beside CLIP-ViP's
# ({R}/eval/videoclip-<stage>/<ds>/<split>.json), so the retrieval tables get "VideoCLIP" rows.
# Target: `snakemake videoclip_all` (or the tables). Helpers: videoclip_common.smk.
include: "videoclip_common.smk"


if videoclip_builds_tiny_bert():

    # The demo's stand-in for bert-base-uncased: a random tiny BERT (videoclip.tiny_bert) with a WordPiece
    # vocabulary learnt from the demo's training texts; its own rule, so the tiny CLIP and captioner never rerun.
    rule tiny_bert:
        input:
            corpus=videoclip_bert_corpus(),
        output:
            model=directory(DEMO_BERT),
        params:
            options=as_json({"bert": VIDEOCLIP["tiny_bert"]}),
            out=lambda wc, output: os.path.dirname(output.model),
        log:
            f"{R}/logs/tiny_bert.log",
        benchmark:
            f"{R}/benchmarks/tiny_bert.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip tiny-models --out {params.out} --only bert --corpus {input.corpus}"
            " --options {params.options:q} > {log} 2>&1"


if VIDEOCLIP["enabled"]:

    rule videoclip_pretrain:
        input:
            features=lambda wc: feature_index(VIDEOCLIP["pretrain"]["dataset"]),
            annotations=lambda wc: DATASETS[VIDEOCLIP["pretrain"]["dataset"]]["annotations"]["train"],
            init=videoclip_init_input(),
        output:
            model=directory(f"{VIDEOCLIP_DIR}/pretrain/model"),
            metrics=f"{VIDEOCLIP_DIR}/pretrain/metrics.jsonl",
            config=f"{VIDEOCLIP_DIR}/pretrain/config.json",
        params:
            options=as_json(videoclip_pretrain_options(config)),
            init=lambda wc: VIDEOCLIP["init"],
            run_dir=lambda wc, output: os.path.dirname(output.metrics),
            checkpoints=f"{R}/checkpoints/videoclip/pretrain",
        resources:
            **train_resources(),
        log:
            f"{R}/logs/videoclip_pretrain.log",
        benchmark:
            f"{R}/benchmarks/videoclip_pretrain.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "{resources.mpi} clipvip train --stage pretrain --frames-index {input.features}"
            " --features-index {input.features} --annotations {input.annotations} --init {params.init:q}"
            " --out {params.run_dir} --checkpoint-dir {params.checkpoints} --options {params.options:q}"
            " --launcher {resources.launcher} --nprocs {resources.tasks} > {log} 2>&1"

    rule videoclip_finetune:
        input:
            features=lambda wc: feature_index(wc.ds),
            annotations=lambda wc: DATASETS[wc.ds]["annotations"]["train"],
            val=lambda wc: DATASETS[wc.ds]["annotations"].get("val", []),
            init=videoclip_finetune_init_input(),
        output:
            model=directory(f"{VIDEOCLIP_DIR}/finetune/{{ds}}/model"),
            metrics=f"{VIDEOCLIP_DIR}/finetune/{{ds}}/metrics.jsonl",
            config=f"{VIDEOCLIP_DIR}/finetune/{{ds}}/config.json",
        params:
            options=lambda wc: as_json(videoclip_finetune_options(config, wc.ds)),
            init=lambda wc: videoclip_finetune_init(),
            val=videoclip_val_args,
            run_dir=lambda wc, output: os.path.dirname(output.metrics),
            checkpoints=f"{R}/checkpoints/videoclip/finetune/{{ds}}",
        resources:
            **train_resources(),
        log:
            f"{R}/logs/videoclip_finetune/{{ds}}.log",
        benchmark:
            f"{R}/benchmarks/videoclip_finetune/{{ds}}.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "{resources.mpi} clipvip train --stage finetune --frames-index {input.features}"
            " --features-index {input.features} --annotations {input.annotations} {params.val}"
            " --init {params.init:q} --out {params.run_dir} --checkpoint-dir {params.checkpoints}"
            " --options {params.options:q} --launcher {resources.launcher} --nprocs {resources.tasks} > {log} 2>&1"

    # `clipvip evaluate` on a VideoCLIP model folder: --frames-index names the feature index (first 32 s).
    rule videoclip_evaluate:
        input:
            model=videoclip_row_model_input,
            features=lambda wc: feature_index(wc.ds),
            annotations=lambda wc: DATASETS[wc.ds]["annotations"][wc.split],
        output:
            metrics=f"{R}/eval/videoclip-{{vcstage}}/{{ds}}/{{split}}.json",
        wildcard_constraints:
            vcstage="zeroshot|finetuned",
        params:
            model=videoclip_row_model,
            row=lambda wc: as_json(videoclip_row_identity(wc)),
            options=lambda wc: as_json(videoclip_evaluate_options(config, wc.ds)),
        log:
            f"{R}/logs/videoclip_evaluate/{{vcstage}}/{{ds}}/{{split}}.log",
        benchmark:
            f"{R}/benchmarks/videoclip_evaluate/{{vcstage}}/{{ds}}/{{split}}.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip evaluate --model {params.model:q} --frames-index {input.features}"
            " --annotations {input.annotations} --split {wildcards.split} --out {output.metrics}"
            " --row {params.row:q} --options {params.options:q} > {log} 2>&1"


rule videoclip_all:
    input:
        videoclip_eval_targets(),
