# Per-second video features (VideoCLIP inputs, `clipvip features`): one feature shard per frame-store shard, read
# from that shard's fixed-rate frame pool (frames.pool_fps) when it has one, else decoded from the video again.
# Off while features.datasets is empty; target: `snakemake features_all` (or any {R}/features/<ds>/index.json).
include: "features_common.smk"


rule features:
    input:
        ids=f"{R}/frames/{{ds}}/ids",
        frames=features_frames_input,
        model=features_model_input,
    output:
        store=f"{R}/features/{{ds}}/{{shard}}.h5",
        failures=f"{R}/features/{{ds}}/{{shard}}.failures.tsv",
    params:
        video_dir=lambda wc: DATASETS[wc.ds]["video_dir"],
        options=as_json(FEATURES.get("options") or {}),
        frames_arg=lambda wc, input: f"--frames {input.frames[0]}" if input.frames else "",
        failures_copy=f"{R}/failures/features/{{ds}}/{{shard}}.failures.tsv",
    threads: 1
    resources:
        gpu=FEATURES_GPU,  # profiles/slurm set-resources.features: partition and gres of a GPU job
    log:
        f"{R}/logs/features/{{ds}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/features/{{ds}}/{{shard}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip features --video-dir {params.video_dir:q} --ids {input.ids}/{wildcards.shard}.txt"
        " --out {output.store} {params.frames_arg} --failures {output.failures}"
        " --failures-copy {params.failures_copy} --options {params.options:q} --threads {threads} > {log} 2>&1"


rule features_index:
    input:
        stores=lambda wc: expand(f"{R}/features/{wc.ds}/{{shard}}.h5", shard=shards(wc.ds)),
    output:
        index=f"{R}/features/{{ds}}/index.json",
    log:
        f"{R}/logs/features_index/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/features_index/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "python -m clipvip.data.feature_store index --shards {input.stores} --out {output.index} > {log} 2>&1"


rule features_all:
    input:
        [feature_index(ds) for ds in FEATURE_DATASETS],
