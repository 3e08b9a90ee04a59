# Videos → sharded HDF5 frame stores (JPEG bytes), one writer per shard, plus a per-dataset index.
# Shards are fixed slices of the dataset's sorted clip ids. The id lists are one directory output: a rule with
# one output file per shard makes Snakemake's producer matching quadratic (minutes for 10,000 shards).
# split_ids is a checkpoint: a real dataset's shard count is read from its id lists once they exist (`shards`
# in common.smk), so building the DAG never reads the annotation files (100 M ids would take minutes and GBs).

for _ds in DATASETS:

    checkpoint:
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
        # Not an output: a failed job's outputs are deleted, this copy of the manifest stays for the user.
        failures_copy=f"{R}/failures/frames/{{ds}}/{{shard}}.failures.tsv",
    threads: 1  # profiles raise it (set-threads); the stage decodes with this many threads
    log:
        f"{R}/logs/frames/{{ds}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/frames/{{ds}}/{{shard}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip frames --video-dir {params.video_dir:q} --ids {input.ids}/{wildcards.shard}.txt --out {output.store}"
        " --failures {output.failures} --failures-copy {params.failures_copy} --options {params.options:q}"
        " --threads {threads} > {log} 2>&1"


rule frames_index:
    input:
        stores=lambda wc: expand(f"{R}/frames/{wc.ds}/{{shard}}.h5", shard=shards(wc.ds)),
    output:
        index=f"{R}/frames/{{ds}}/index.json",
        ids=f"{R}/frames/{{ds}}/index.arrow",
        failures=f"{R}/frames/{{ds}}/failures.tsv",
    log:
        f"{R}/logs/frames_index/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/frames_index/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip frames-index --shards {input.stores} --out {output.index} > {log} 2>&1"


# An annotation split as a memory-mapped Arrow table joined with the frame index (shard/row of every clip): what
# training reads at corpus scale (clipvip.data.corpus; read_annotations on the .arrow path is lazy).
rule annotations_table:
    input:
        annotations=lambda wc: DATASETS[wc.ds]["annotations"][wc.split],
        index=f"{R}/frames/{{ds}}/index.arrow",
    output:
        table=f"{R}/corpus/{{ds}}/{{split}}.arrow",
    log:
        f"{R}/logs/annotations_table/{{ds}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/annotations_table/{{ds}}/{{split}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip corpus-arrow annotations --input {input.annotations:q} --index {input.index}"
        " --out {output.table} > {log} 2>&1"
