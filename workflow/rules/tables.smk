# Tables shaped like the paper's (CSV + Markdown) and plots, all in `snakemake --report`.


rule tables:
    input:
        metrics=eval_targets() + videoclip_eval_targets(),  # VideoCLIP rows: videoclip.smk (when enabled)
        train_logs=train_logs() + videoclip_train_logs(),
        # the demo's claims table is built beside the retrieval tables (so `snakemake` and the report include it)
        claims=[f"{R}/tables/demo_claims.md"] if DEMO["enabled"] else [],
    output:
        csv=report(f"{R}/tables/retrieval.csv", caption="../report/retrieval_table.rst", category="Tables"),
        md=report(f"{R}/tables/retrieval.md", caption="../report/retrieval_table.rst", category="Tables"),
        md_dsl=report(f"{R}/tables/retrieval_dsl.md", caption="../report/retrieval_dsl.rst", category="Tables"),
        loss=report(f"{R}/tables/loss_curves.png", caption="../report/loss_curves.rst", category="Plots"),
        recall=report(f"{R}/tables/recall_at_k.png", caption="../report/recall_at_k.rst", category="Plots"),
    params:
        out_dir=lambda wc, output: os.path.dirname(output.csv),
    log:
        f"{R}/logs/tables.log",
    benchmark:
        f"{R}/benchmarks/tables.tsv"
    conda:
        "../envs/clipvip.yaml"
    shell:
        "clipvip tables --metrics {input.metrics} --train-logs {input.train_logs}"
        " --out-dir {params.out_dir} > {log} 2>&1"


if DEMO["enabled"]:

    # What the demo shows: each claim (zero-shot CLIP order-blind, ViP learns order, ViP > MeanPool, captions
    # help, fine-tuning helps) with its numbers and a pass/fail mark (clipvip/demo_claims.py).
    rule demo_claims:
        input:
            metrics=eval_targets(),
        output:
            md=report(f"{R}/tables/demo_claims.md", caption="../report/demo_claims.rst", category="Tables"),
            csv=report(f"{R}/tables/demo_claims.csv", caption="../report/demo_claims.rst", category="Tables"),
            json=f"{R}/tables/demo_claims.json",
        params:
            out_dir=lambda wc, output: os.path.dirname(output.md),
        log:
            f"{R}/logs/demo_claims.log",
        benchmark:
            f"{R}/benchmarks/demo_claims.tsv"
        conda:
            "../envs/clipvip.yaml"
        shell:
            "clipvip demo-claims --metrics {input.metrics} --out-dir {params.out_dir} > {log} 2>&1"
