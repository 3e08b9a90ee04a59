# The embedded demo: a synthetic video-text corpus and tiny models built locally (no hub access).


if DEMO["enabled"]:

    rule demo_data:
        output:
            annotations=demo_annotation_outputs(),
            done=f"{DEMO_DIR}/DONE.json",
        params:
            options=as_json(DEMO["corpus"]),
            out=lambda wc, output: os.path.dirname(output.done),
        log:
            f"{R}/logs/demo_data.log",
        benchmark:
            f"{R}/benchmarks/demo_data.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip demo-data --out {params.out} --options {params.options:q} > {log} 2>&1"


    # Tiny CLIP and captioner built from configs, then pre-trained on still images of the demo's renderer
    # (demo.tiny_models.train: contrastive CLIP, captioner on "a red square"): the demo's stand-ins for OpenAI's
    # CLIP and BLIP. One job each (they run side by side; each gets only its own options, so changing one never
    # rebuilds the other): pretrained/<part>/ and, last, pretrained/DONE_<part>.json.
    rule tiny_models:
        output:
            done=f"{PRETRAINED_DIR}/DONE_{{part}}.json",
        wildcard_constraints:
            part="|".join(TINY_PARTS),
        params:
            options=lambda wc: as_json(tiny_part_options(DEMO["tiny_models"], wc.part)),
            out=lambda wc, output: os.path.dirname(output.done),
        log:
            f"{R}/logs/tiny_models/{{part}}.log",
        benchmark:
            f"{R}/benchmarks/tiny_models/{{part}}.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip tiny-models --out {params.out} --only {wildcards.part} --options {params.options:q} > {log} 2>&1"
