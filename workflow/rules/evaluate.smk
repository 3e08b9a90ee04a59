# Retrieval evaluation (text→video and video→text, with and without dual softmax) of every table row:
# zero-shot base CLIP, zero-shot post-pretrained, fine-tuned (selected on validation, reported on test).


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
        " --annotations {input.annotations} --split {wildcards.split} --out {output.metrics} --row {params.row:q}"
        " --options {params.options:q} > {log} 2>&1"
