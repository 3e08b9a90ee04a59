# Helpers of the analysis rules (analysis.smk) and of the data-scale variants' pre-training input (train.smk).
import shlex

from clipvip.analysis.data_scale import fraction_tag
from clipvip.config import study_variant

ANALYSIS = config["analysis"]
STUDY = config["study"]


def _without(section, *keys):
    return {k: v for k, v in section.items() if k not in keys}


def domain_gap_enabled():
    return ANALYSIS["domain_gap"]["enabled"] and config["pretrain"]["enabled"] and bool(config["finetune"]["datasets"])


def domain_gap_model():
    return ANALYSIS["domain_gap"].get("model") or config["base_model"]


def domain_gap_corpora():
    """Corpus specs for `clipvip domain-gap`: pre-training subtitles and captions, each downstream train split."""
    name = config["pretrain"]["dataset"]
    pre = DATASETS[name]
    specs = [{"name": f"{name} subtitles", "role": "subtitles", "kind": "annotations",
              "paths": [pre["annotations"]["train"]], "text_mode": pre["text_mode"]}]
    if config["captions"].get("model"):
        specs.append({"name": f"{name} captions", "role": "captions", "kind": "captions",
                      "paths": caption_files(name)})
    for ds in config["finetune"]["datasets"]:
        specs.append({"name": ds, "role": "downstream", "kind": "annotations",
                      "paths": [DATASETS[ds]["annotations"]["train"]], "text_mode": DATASETS[ds]["text_mode"]})
    return specs


def data_scale_fractions():
    return sorted({float(f) for f in STUDY["data_scale"]})


def data_scale_variant(fraction):
    """The variant trained on ``fraction`` of the data: the study's variant itself at 1.0."""
    base = study_variant(config)
    if fraction >= 1.0:
        return base
    return next(v for v, spec in VARIANTS.items() if spec.get("data_scale") == fraction and v.startswith(f"{base}-"))


def data_scale_points():
    """Aligned (metrics JSON, fraction, pre-training annotations) of every fine-tuned study model."""
    split = config["evaluate"]["split"]
    points = []
    for ds in config["finetune"]["datasets"]:
        if split not in DATASETS[ds]["annotations"]:
            continue
        for fraction in data_scale_fractions():
            subset = pretrain_annotations(data_scale_variant(fraction))
            points.append((f"{R}/eval/finetuned-{data_scale_variant(fraction)}/{ds}/{split}.json", fraction, subset))
    return points


def gallery_variant():
    return ANALYSIS["gallery"].get("variant") or next(iter(FINETUNED))


def gallery_datasets():
    split = config["evaluate"]["split"]
    if not ANALYSIS["gallery"]["enabled"]:
        return []
    return [ds for ds in config["finetune"]["datasets"] if split in DATASETS[ds]["annotations"]]


def gallery_zero_shot_row():
    return f"pretrained-{gallery_variant()}" if config["pretrain"]["enabled"] else "base"


def gallery_labels():
    variant = gallery_variant()
    zero = (f"zero-shot CLIP-ViP {variant}" if config["pretrain"]["enabled"]
            else f"zero-shot CLIP ({config['evaluate']['zero_shot_encoder']})")
    return zero, f"fine-tuned CLIP-ViP {variant}"


def gallery_models(ds):
    zero_row, variant = gallery_zero_shot_row(), gallery_variant()
    return {"zero": row_model(zero_row, ds), "tuned": row_model(f"finetuned-{variant}", ds)}


def gallery_model_inputs(wc):
    """The gallery's model folders as inputs (a hub-name base model is not a file)."""
    inputs = [m for m in gallery_models(wc.ds).values() if m != config["base_model"]]
    if gallery_zero_shot_row() == "base":
        inputs += local_model_input(config["base_model"])
    return inputs


def gallery_metrics(wc):
    """The evaluation JSONs of both columns (the gallery runs after evaluation and shows their R@1)."""
    split = config["evaluate"]["split"]
    rows = [f"finetuned-{gallery_variant()}"]
    if config["evaluate"]["zero_shot"]:
        rows.insert(0, gallery_zero_shot_row())
    return {row: f"{R}/eval/{row}/{wc.ds}/{split}.json" for row in rows}


def gallery_args(wc, input):
    zero, tuned = gallery_labels()
    models = gallery_models(wc.ds)
    pairs = [("--model", zero, models["zero"]), ("--model", tuned, models["tuned"])]
    if gallery_zero_shot_row() == "base":
        pairs.append(("--encoder", zero, config["evaluate"]["zero_shot_encoder"]))
    for row, path in gallery_metrics(wc).items():
        pairs.append(("--metrics", tuned if row.startswith("finetuned-") else zero, path))
    return " ".join(f"{flag} {shlex.quote(f'{label}={value}')}" for flag, label, value in pairs)


def analysis_targets():
    targets = []
    if domain_gap_enabled():
        targets += [f"{R}/analysis/domain_gap.md", f"{R}/analysis/domain_gap.png"]
    targets += [f"{R}/gallery/{ds}.html" for ds in gallery_datasets()]
    if STUDY["data_scale"] and data_scale_points():
        targets.append(f"{R}/study/data_scale/data_scale.png")
    return targets


def data_scale_subset(fraction):
    """The nested pre-training subset of a data-scale fraction (rule data_scale_subset, analysis.smk)."""
    return f"{R}/study/data_scale/{fraction_tag(fraction)}/train.jsonl"


def pretrain_annotations(variant):
    """The pre-training annotations (Arrow table); a data-scale variant (``...-scale0p1``) reads its subset file,
    an overlapped / aligned variant the annotation JSONL (timed subtitles)."""
    fraction = VARIANTS[variant].get("data_scale")
    if VARIANTS[variant].get("pair_sampling", "clip") != "clip":
        # Windows need the timed subtitles of the annotation JSONL (the Arrow table has one text per clip).
        return DATASETS[PRETRAIN["dataset"]]["annotations"]["train"]
    if fraction is None:
        # The memory-mapped Arrow table (annotations_table in frames.smk): every rank and DataLoader worker shares
        # it through the page cache instead of holding its own list of every subtitle (docs/corpus_scale.md).
        return f"{R}/corpus/{PRETRAIN['dataset']}/train.arrow"
    return data_scale_subset(fraction)
