"""The data-scale study: nested subsets of the pre-training annotations, and downstream R@1 against data size.

Usage:
    clipvip data-scale-subset --annotations R/demo/annotations/demo_pretrain_train.jsonl \
        --out R/study/data_scale/0.1/train.jsonl --options '{"fraction": 0.1, "seed": 0}'
    clipvip data-scale-plot --metrics R/eval/finetuned-vip-vsc_fc-scale0p1/demo_msrvtt/test.json ... \
        --fractions 0.1 ... --subsets R/study/data_scale/0.1/train.jsonl ... \
        --out-png R/study/data_scale/data_scale.png --out-csv R/study/data_scale/data_scale.csv

Subsets are nested by construction: every clip id gets a rank from ``sha256(f"{seed}:{clip_id}")`` and the
subset of fraction f keeps the ``max(1, round(f * N))`` clips of lowest rank, so for one seed the subset of 0.1
is inside that of 0.3, which is inside the whole corpus, and a clip's membership does not depend on the file's
line order. Lines are copied verbatim (JSONL) in file order, so the subset is an annotation file of the same
format. The workflow post-pretrains one variant per fraction with the same steps (``study.data_scale``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from clipvip.stage import (StageOptions, UserError, atomic_path, option, parse_options, stage_main,
                           write_text_atomic)


@dataclass
class DataScaleOptions(StageOptions):
    STAGE = "data-scale-subset"
    fraction: float = option(1.0, "share of the pre-training clips kept (0 < f <= 1)", minimum=1e-6, maximum=1.0)
    seed: int = option(0, "seed of the clip order (the same seed gives nested subsets)")


def fraction_tag(fraction: float) -> str:
    """``0.1`` -> ``"0.1"`` (paths); :func:`variant_suffix` gives the wildcard-safe form."""
    text = f"{float(fraction):.6f}".rstrip("0").rstrip(".")
    return text if text else "0"


def variant_suffix(fraction: float) -> str:
    """``0.1`` -> ``"scale0p1"``: the suffix of a data-scale variant's name."""
    return "scale" + fraction_tag(fraction).replace(".", "p")


def clip_rank(clip_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{clip_id}".encode()).hexdigest()


def subset_ids(clip_ids, fraction: float, seed: int = 0) -> set[str]:
    """The ``max(1, round(fraction * N))`` distinct clip ids of lowest seeded hash rank."""
    unique = sorted(set(clip_ids))
    if not unique:
        raise UserError("no clip ids to take a subset of")
    keep = max(1, min(len(unique), round(fraction * len(unique))))
    return set(sorted(unique, key=lambda c: clip_rank(c, seed))[:keep])


def _jsonl_lines(path: Path) -> list[tuple[str, str]]:
    lines = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                clip_id = json.loads(line)["clip_id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{lineno}: not an annotation line with a clip_id") from None
            lines.append((str(clip_id), line if line.endswith("\n") else line + "\n"))
    return lines


def write_subset(annotations: str, out: str, fraction: float, seed: int = 0) -> dict:
    """Write the subset annotation file; returns ``{"clips", "kept", "lines"}``."""
    path = Path(annotations)
    if not path.is_file():
        raise UserError(f"--annotations {annotations} does not exist")
    if path.suffix == ".jsonl" or path.suffix == ".json":
        lines = _jsonl_lines(path)
        keep = subset_ids([c for c, _ in lines], fraction, seed)
        kept = [line for c, line in lines if c in keep]
        clips = len({c for c, _ in lines})
    else:  # an annotation table: records rewritten as JSONL
        from clipvip.data import read_annotations

        records = read_annotations(path)
        ids = [records[i]["clip_id"] for i in range(len(records))]
        keep = subset_ids(ids, fraction, seed)
        kept = [json.dumps({"clip_id": records[i]["clip_id"], "text": records[i]["texts"]}) + "\n"
                for i in range(len(records)) if ids[i] in keep]
        clips = len(set(ids))
    write_text_atomic(out, "".join(kept))
    return {"clips": clips, "kept": len(keep), "lines": len(kept)}


@stage_main("data-scale-subset")
def subset_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip data-scale-subset", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + DataScaleOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="pre-training annotation JSONL")
    parser.add_argument("--out", required=True, help="subset annotation JSONL to write")
    parser.add_argument("--options", default=None, help="JSON object of DataScaleOptions keys")
    args = parser.parse_args(argv)
    opts = DataScaleOptions.from_dict(parse_options(args.options))
    info = write_subset(args.annotations, args.out, opts.fraction, opts.seed)
    print(f"data-scale-subset: kept {info['kept']} of {info['clips']} clips (fraction {opts.fraction}, seed "
          f"{opts.seed}); wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------------ plot
def plot_points(metrics: list[str], fractions: list[float], subsets: list[str]) -> list[dict]:
    """One point per (metrics JSON, fraction, subset file): dataset, fraction, clips, t2v R@1 (and DSL)."""
    from clipvip.data import read_annotations

    if not (len(metrics) == len(fractions) == len(subsets)):
        raise UserError(f"--metrics, --fractions and --subsets must be aligned lists, got {len(metrics)}, "
                        f"{len(fractions)} and {len(subsets)}")
    sizes: dict[str, int] = {}
    points = []
    for path, fraction, subset in zip(metrics, fractions, subsets):
        if subset not in sizes:
            sizes[subset] = len(read_annotations(subset))
        with open(path) as fh:
            data = json.load(fh)
        points.append({"dataset": data.get("dataset", Path(path).parent.name), "fraction": float(fraction),
                       "clips": sizes[subset], "t2v_R1": data["t2v"]["R1"],
                       "t2v_dsl_R1": data.get("t2v_dsl", {}).get("R1", float("nan")), "source": str(path)})
    return sorted(points, key=lambda p: (p["dataset"], p["fraction"]))


@stage_main("data-scale-plot")
def plot_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip data-scale-plot",
                                     description="downstream text-to-video R@1 against post-pretraining data size")
    parser.add_argument("--metrics", nargs="+", required=True, help="clipvip evaluate JSONs of fine-tuned models")
    parser.add_argument("--fractions", nargs="+", type=float, required=True, help="data fraction of each")
    parser.add_argument("--subsets", nargs="+", required=True, help="pre-training annotation file of each")
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-csv", required=True)
    args = parser.parse_args(argv)
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = plot_points(args.metrics, args.fractions, args.subsets)
    frame = pd.DataFrame(points)
    with atomic_path(args.out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for dataset, group in frame.groupby("dataset", sort=False):
        ax.plot(group["clips"], group["t2v_R1"], marker="o", label=dataset)
        for _, p in group.iterrows():
            ax.annotate(f"{p.fraction:g}", (p.clips, p.t2v_R1), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("post-pretraining clips (log scale; labels = fraction)")
    ax.set_ylabel("fine-tuned t2v R@1 (%)")
    ax.set_title("Data scale: downstream retrieval vs post-pretraining data", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(args.out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    print(f"data-scale-plot: {len(points)} points; wrote {args.out_png}")
    return 0
