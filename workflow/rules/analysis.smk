# The paper's analyses and the retrieval gallery, all in `snakemake --report` under "Analyses":
# language-domain gap (K-means NMI of CLIP text features), the data-scale study (nested pre-training subsets,
# same steps, fine-tuned and evaluated like any variant; R@1 vs data size), and per-dataset retrieval galleries.
# Helper functions (also the data-scale variants' pre-training annotations used by train.smk's pretrain rule):
# analysis_common.smk.


include: "analysis_common.smk"


rule domain_gap:
    input:
        corpora=lambda wc: sorted({p for spec in domain_gap_corpora() for p in spec["paths"]}),
        model=lambda wc: local_model_input(domain_gap_model()),
    output:
        csv=report(f"{R}/analysis/domain_gap.csv", caption="../report/domain_gap.rst", category="Analyses"),
        md=report(f"{R}/analysis/domain_gap.md", caption="../report/domain_gap.rst", category="Analyses"),
        png=report(f"{R}/analysis/domain_gap.png", caption="../report/domain_gap.rst", category="Analyses"),
    params:
        model=lambda wc: domain_gap_model(),
        corpora=lambda wc: as_json(domain_gap_corpora()),
        options=lambda wc: as_json(_without(ANALYSIS["domain_gap"], "enabled", "model")),
    log:
        f"{R}/logs/analysis/domain_gap.log",
    benchmark:
        f"{R}/benchmarks/analysis/domain_gap.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip domain-gap --model {params.model:q} --corpora {params.corpora:q} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} --options {params.options:q} > {log} 2>&1"


rule data_scale_subset:
    input:
        annotations=lambda wc: DATASETS[config["pretrain"]["dataset"]]["annotations"]["train"],
    output:
        annotations=f"{R}/study/data_scale/{{fraction}}/train.jsonl",
    params:
        options=lambda wc: as_json({"fraction": float(wc.fraction), "seed": STUDY["seed"]}),
    wildcard_constraints:
        fraction="[0-9.]+",
    log:
        f"{R}/logs/study/data_scale_subset/{{fraction}}.log",
    benchmark:
        f"{R}/benchmarks/study/data_scale_subset/{{fraction}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip data-scale-subset --annotations {input.annotations} --out {output.annotations}"
        " --options {params.options:q} > {log} 2>&1"


rule data_scale_plot:
    input:
        metrics=lambda wc: [m for m, _, _ in data_scale_points()],
        subsets=lambda wc: sorted({s for _, _, s in data_scale_points()}),
    output:
        png=report(f"{R}/study/data_scale/data_scale.png", caption="../report/data_scale.rst", category="Analyses"),
        csv=f"{R}/study/data_scale/data_scale.csv",
    params:
        fractions=lambda wc: " ".join(f"{f:g}" for _, f, _ in data_scale_points()),
        subsets=lambda wc: " ".join(s for _, _, s in data_scale_points()),
        metrics=lambda wc: " ".join(m for m, _, _ in data_scale_points()),
    log:
        f"{R}/logs/study/data_scale_plot.log",
    benchmark:
        f"{R}/benchmarks/study/data_scale_plot.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip data-scale-plot --metrics {params.metrics} --fractions {params.fractions}"
        " --subsets {params.subsets} --out-png {output.png} --out-csv {output.csv} > {log} 2>&1"


rule gallery:
    input:
        index=lambda wc: frame_index(wc.ds),
        annotations=lambda wc: DATASETS[wc.ds]["annotations"][config["evaluate"]["split"]],
        models=gallery_model_inputs,
        metrics=lambda wc: list(gallery_metrics(wc).values()),
    output:
        html=report(f"{R}/gallery/{{ds}}.html", caption="../report/gallery.rst", category="Analyses",
                    subcategory="Retrieval gallery", labels={"dataset": "{ds}"}),
        summary=f"{R}/gallery/{{ds}}.json",
    params:
        models=gallery_args,
        options=lambda wc: as_json({**dataset_settings(config, wc.ds), **_without(ANALYSIS["gallery"], "enabled", "variant")}),
    log:
        f"{R}/logs/gallery/{{ds}}.log",
    benchmark:
        f"{R}/benchmarks/gallery/{{ds}}.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip gallery --frames-index {input.index} --annotations {input.annotations} {params.models}"
        " --out {output.html} --summary {output.summary} --options {params.options:q} > {log} 2>&1"
