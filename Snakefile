# clipvip: CLIP-ViP (Xue et al., ICLR 2023) from videos to retrieval tables.
#   snakemake --cores 2                          # the embedded demo (config.yaml)
#   snakemake --profile profiles/slurm           # on a SLURM cluster
#   snakemake --configfile presets/msrvtt.yaml my_paths.yaml --profile profiles/slurm
# Stages (one file each under workflow/rules/): demo → frames → captions → pretrain → finetune → evaluate → tables.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/captions.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/videoclip.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/recognition.smk"
include: "workflow/rules/analysis.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
