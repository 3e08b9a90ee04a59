# Auxiliary captions: an image captioner describes each pre-training clip's middle frame (from the frame store).


rule captions:
    input:
        store=f"{R}/frames/{{ds}}/{{shard}}.h5",
        ids=f"{R}/frames/{{ds}}/ids",
        frame_failures=f"{R}/frames/{{ds}}/{{shard}}.failures.tsv",
        model=local_model_input(config["captions"]["model"]) if "model" in config["captions"] else [],
    output:
        captions=f"{R}/captions/{{ds}}/{{shard}}.jsonl",
        failures=f"{R}/captions/{{ds}}/{{shard}}.failures.tsv",
    params:
        options=as_json(config["captions"]),
    log:
        f"{R}/logs/captions/{{ds}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/captions/{{ds}}/{{shard}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip captions --frames {input.store} --ids {input.ids}/{wildcards.shard}.txt --out {output.captions} --failures {output.failures}"
        " --options {params.options:q} > {log} 2>&1"


