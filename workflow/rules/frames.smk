# Videos → sharded HDF5 frame stores (JPEG bytes), one writer per shard, plus a per-dataset index.
# Shards are fixed slices of the dataset's sorted clip ids. The id lists are one directory output: a rule with
# one output file per shard makes Snakemake's producer matching quadratic (minutes for 10,000 shards).

for _ds in DATASETS:

    rule:
        name:
            f"split_ids_{_ds}"
        input:
            annotation_files(_ds),
        output:
            directory(f"{R}/frames/{_ds}/ids"),
        params:
            shard_size=config["frames"]["shard_size"],
        log:
            f"{R}/logs/split_ids/{_ds}.log",
        benchmark:
            f"{R}/benchmarks/split_ids/{_ds}.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip split-ids --ids-from {input:q} --shard-size {params.shard_size}"
            " --out-dir {output} > {log} 2>&1"


rule frames:
    input:
        ids=f"{R}/frames/{{ds}}/ids",
    output:
        store=f"{R}/frames/{{ds}}/{{shard}}.h5",
        failures=f"{R}/frames/{{ds}}/{{shard}}.failures.tsv",
    params:
        video_dir=lambda wc: DATASETS[wc.ds]["video_dir"],
        options=lambda wc: as_json(frames_options(wc.ds)),
    log:
        f"{R}/logs/frames/{{ds}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/frames/{{ds}}/{{shard}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip frames --video-dir {params.video_dir:q} --ids {input.ids}/{wildcards.shard}.txt --out {output.store}"
        " --failures {output.failures} --options {params.options:q} > {log} 2>&1"


rule frames_index:
    input:
        stores=lambda wc: expand(f"{R}/frames/{wc.ds}/{{shard}}.h5", shard=shards(wc.ds)),
    output:
        index=f"{R}/frames/{{ds}}/index.json",
        failures=f"{R}/frames/{{ds}}/failures.tsv",
    log:
        f"{R}/logs/frames_index/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/frames_index/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip frames-index --shards {input.stores} --out {output.index} > {log} 2>&1"
