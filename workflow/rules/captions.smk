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
        # Not an output: a failed job's outputs are deleted, this copy of the failure TSV stays for the user.
        failures_copy=f"{R}/failures/captions/{{ds}}/{{shard}}.failures.tsv",
    log:
        f"{R}/logs/captions/{{ds}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/captions/{{ds}}/{{shard}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip captions --frames {input.store} --ids {input.ids}/{wildcards.shard}.txt --out {output.captions} --failures {output.failures}"
        " --failures-copy {params.failures_copy} --options {params.options:q} > {log} 2>&1"




# Every shard's captions merged into one sorted, memory-mapped Arrow table (clipvip.data.corpus.CaptionTable):
# training reads it lazily instead of a dict of every caption.
rule captions_table:
    input:
        captions=lambda wc: expand(f"{R}/captions/{wc.ds}/{{shard}}.jsonl", shard=shards(wc.ds)),
    output:
        table=f"{R}/captions/{{ds}}/captions.arrow",
    log:
        f"{R}/logs/captions_table/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/captions_table/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip corpus-arrow captions --inputs {input.captions} --out {output.table} > {log} 2>&1"
