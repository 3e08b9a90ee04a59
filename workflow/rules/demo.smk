# The embedded demo: a synthetic video-text corpus and tiny models built locally (no hub access).


def demo_annotation_outputs():
    return sorted(
        {p for ds in DATASETS if is_demo_dataset(ds) for p in DATASETS[ds]["annotations"].values()}
    )


if DEMO["enabled"]:

    rule demo_data:
        output:
            annotations=demo_annotation_outputs(),
            done=f"{DEMO_DIR}/DONE.json",
        params:
            options=as_json(DEMO_OPTIONS),
            out=DEMO_DIR,
        log:
            f"{R}/logs/demo_data.log",
        benchmark:
            f"{R}/benchmarks/demo_data.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip demo-data --out {params.out} --options {params.options:q} > {log} 2>&1"


if config["tiny_models"]["enabled"]:

    rule tiny_models:
        output:
            done=f"{PRETRAINED_DIR}/DONE.json",
        params:
            options=as_json({k: v for k, v in config["tiny_models"].items() if k != "enabled"}),
            out=PRETRAINED_DIR,
        log:
            f"{R}/logs/tiny_models.log",
        benchmark:
            f"{R}/benchmarks/tiny_models.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip tiny-models --out {params.out} --options {params.options:q} > {log} 2>&1"
