# Videos → sharded HDF5 frame stores (JPEG bytes), one writer per shard, plus a per-dataset index.
# Shards are fixed slices of the dataset's sorted clip ids, so adding a split never renames old shards' content
# silently: the id lists are outputs, and a changed list reruns exactly the shards whose list changed.

for _ds in DATASETS:

    rule:
        name:
            f"split_ids_{_ds}"
        input:
            annotation_files(_ds),
        output:
            expand(f"{R}/frames/{_ds}/ids/{{shard}}.txt", shard=shards(_ds)),
        params:
            shard_size=config["frames"]["shard_size"],
            out_dir=lambda wc, output: os.path.dirname(output[0]),
        log:
            f"{R}/logs/split_ids/{_ds}.log",
        benchmark:
            f"{R}/benchmarks/split_ids/{_ds}.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip split-ids --ids-from {input:q} --shard-size {params.shard_size}"
            " --out-dir {params.out_dir} > {log} 2>&1"


rule frames:
    input:
        ids=f"{R}/frames/{{ds}}/ids/{{shard}}.txt",
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
        "clipvip frames --video-dir {params.video_dir:q} --ids {input.ids} --out {output.store}"
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
