"""Aggregate evaluation JSONs into paper-style retrieval tables and plots.

Usage:
    clipvip tables --metrics R/eval/*/*/*.json [--train-logs R/runs/*/*/metrics.jsonl ...] --out-dir R/tables \
        [--options '{"decimals": 1}']

Inputs: the ``clipvip evaluate`` JSONs (row identity fields such as method/stage/encoder/loss, plus
``dataset``, ``split`` and ``t2v``/``v2t``/``t2v_dsl``/``v2t_dsl`` dicts of R1, R5, R10, MdR, MnR) and the
trainer's per-step JSONL logs (``{"step", "epoch", "loss", "terms": {name: value}, "lr", ...}``).

Outputs in ``--out-dir``:
    retrieval.csv       paper-shaped wide table: one row per model variant, columns ``<dataset> <dir> <metric>``
                        for every direction (t2v, v2t, t2v_dsl, v2t_dsl)
    retrieval_long.csv  one row per evaluation JSON (tidy; every metric a column, counts, model, source)
    retrieval.md        a summary (text->video R@1, variants x datasets) and one table per dataset in the paper's
                        layout: variants x (t2v, v2t) x (R@1, R@5, R@10, MdR, MnR)
    retrieval_dsl.md    the same with dual-softmax (DSL) inference
    loss_curves.png     training loss (total and each term) vs step, one panel per training run, plus the
                        validation selection metric (``{"event": "val"}`` records) on a second axis
    recall_at_k.png     text->video R@1/5/10 per dataset, one line per model variant
Rows keep the order of first appearance in ``--metrics`` (the workflow lists zero-shot base CLIP, zero-shot
post-pretrained, then fine-tuned variants).

``order_acc`` (temporal-order accuracy of ``clipvip evaluate``: % of captions whose video outscores the same
frames reversed; 50 = order-blind) is a column next to R@K in the summary and per-dataset Markdown tables
(``order_acc`` in the summary: one ``<dataset> order_acc`` column per dataset), ``<dataset> order_acc`` in
``retrieval.csv`` and ``order_acc`` in ``retrieval_long.csv`` ("-" / empty where an evaluation did not compute it).

Every number says what it was computed on: the CSVs carry ``num_queries``, ``num_videos``, ``missing_clips`` and
``complete`` (``retrieval.csv`` as ``<dataset> queries|videos|missing|complete`` columns), each per-dataset
Markdown table has ``queries``, ``videos`` and ``missing`` columns, and a result that is not over the full
protocol (``complete: false``: clips without frames were skipped because ``max_missing_fraction`` was raised)
is marked ``*`` in every Markdown cell that shows it, with a footnote.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clipvip.stage import StageOptions, option, parse_options, stage_main

DIRECTIONS = ("t2v", "v2t", "t2v_dsl", "v2t_dsl")
METRICS = ("R1", "R5", "R10", "MdR", "MnR")
METRIC_LABELS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "MdR": "MdR", "MnR": "MnR"}
DIRECTION_TITLES = {
    "t2v": "Text-to-video retrieval",
    "v2t": "Video-to-text retrieval",
    "t2v_dsl": "Text-to-video retrieval with DSL",
    "v2t_dsl": "Video-to-text retrieval with DSL",
}
ORDER_KEY = "order_acc"  # temporal-order accuracy (clipvip.metrics.order_accuracy), one number per evaluation
# Keys of an evaluation JSON that are not part of the row identity.
COLUMN_KEYS = ("dataset", "split")
NON_ROW_KEYS = set(DIRECTIONS) | set(COLUMN_KEYS) | {"num_queries", "num_videos", "missing_clips", "model",
                                                     "row_keys", "options", "seconds", "missing_ids",
                                                     "complete", "max_missing_fraction", ORDER_KEY}
# Evaluation counts shown beside the metrics: JSON key -> column label.
COUNTS = {"num_queries": "queries", "num_videos": "videos", "missing_clips": "missing", "complete": "complete"}
INCOMPLETE = "*"
INCOMPLETE_NOTE = (f"{INCOMPLETE} incomplete: some annotated clips of the split had no frames and were skipped "
                   "(evaluate.options.max_missing_fraction was raised); not the full protocol, not comparable.\n")
PREFERRED_ROW_KEYS = ("method", "stage", "encoder", "loss")


@dataclass
class TablesOptions(StageOptions):
    STAGE = "tables"
    decimals: int = option(1, "digits after the decimal point in the Markdown tables", minimum=0, maximum=6)


# ----------------------------------------------------------------------------------------------- tables
TIE_WORDS = {"expected": "as random tie-breaking would, in expectation", "pessimistic": "pessimistically",
             "optimistic": "optimistically (as the official code)"}


def load_metrics(paths: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Tidy frame (one row per JSON; metric columns ``<dir>_<metric>``) and the row-identity column names.

    Row identity = the JSON's ``row_keys`` (written by ``clipvip evaluate`` from ``--row``) minus dataset/split;
    missing dataset/split default to the file's parent folder / stem (``R/eval/<row>/<ds>/<split>.json``).
    """
    records, row_keys = [], []
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        record = {k: v for k, v in data.items()
                  if k not in DIRECTIONS and k not in ("row_keys", "options", "missing_ids")}
        if "complete" not in record:  # JSONs of older evaluations: complete iff nothing was missing
            missing = record.get("missing_clips")
            record["complete"] = None if missing is None else not missing
        record.setdefault(ORDER_KEY, float("nan"))
        # the tie rule the numbers were ranked with (evaluations older than the option ranked pessimistically)
        record["ties"] = data.get("options", {}).get("ties", "pessimistic")
        record.setdefault("dataset", Path(path).parent.name)
        record.setdefault("split", Path(path).stem)
        for direction in DIRECTIONS:
            for metric in METRICS:
                record[f"{direction}_{metric}"] = data.get(direction, {}).get(metric, float("nan"))
        record["source"] = str(path)
        records.append(record)
        # ``clipvip evaluate`` records the --row field names; older/hand-made JSONs: every non-metric key.
        keys = data["row_keys"] if "row_keys" in data else [k for k in data if k not in NON_ROW_KEYS]
        row_keys += [k for k in keys if k not in COLUMN_KEYS and k not in row_keys]
    ordered = [k for k in PREFERRED_ROW_KEYS if k in row_keys] + [k for k in row_keys if k not in PREFERRED_ROW_KEYS]
    frame = pd.DataFrame.from_records(records)
    for key in ordered:
        frame[key] = frame[key].fillna("-").astype(str)
    dupes = frame[frame.duplicated(ordered + list(COLUMN_KEYS), keep=False)]
    if len(dupes):
        raise ValueError(f"several metrics files for the same row/dataset/split: {sorted(dupes['source'])}")
    return frame, ordered


def _column_labels(frame: pd.DataFrame) -> pd.Series:
    """Column group per evaluation: the dataset, or ``dataset/split`` if a dataset has several splits."""
    multi = frame.groupby("dataset")["split"].nunique()
    return frame.apply(lambda r: f"{r.dataset}/{r.split}" if multi[r.dataset] > 1 else r.dataset, axis=1)


def wide_table(frame: pd.DataFrame, row_keys: list[str], directions=DIRECTIONS) -> pd.DataFrame:
    """Rows = model variants (first-appearance order); columns = (dataset, direction, metric label)."""
    frame = frame.assign(column=_column_labels(frame))
    value_cols = [f"{d}_{m}" for d in directions for m in METRICS]
    long = frame.melt(id_vars=row_keys + ["column"], value_vars=value_cols, var_name="key")
    long[["direction", "metric"]] = long["key"].str.rsplit("_", n=1, expand=True)
    long["metric"] = long["metric"].map(METRIC_LABELS)
    wide = long.pivot_table(index=row_keys, columns=["column", "direction", "metric"], values="value",
                            aggfunc="last", dropna=False)
    rows = frame[row_keys].drop_duplicates()
    row_index = pd.MultiIndex.from_frame(rows) if len(row_keys) > 1 else pd.Index(rows[row_keys[0]])
    col_index = pd.MultiIndex.from_tuples(
        [(ds, d, METRIC_LABELS[m]) for ds in dict.fromkeys(frame["column"]) for d in directions for m in METRICS],
        names=["dataset", "direction", "metric"],
    )
    return wide.reindex(index=row_index, columns=col_index)


def counts_table(frame: pd.DataFrame, row_keys: list[str], index) -> pd.DataFrame:
    """Rows like ``wide_table``'s; columns (dataset column, count label) for ``COUNTS``."""
    frame = frame.assign(column=_column_labels(frame))
    for key in COUNTS:
        if key not in frame:
            frame[key] = None
    cells = {}
    for _, rec in frame.iterrows():
        row = tuple(rec[k] for k in row_keys) if len(row_keys) > 1 else rec[row_keys[0]]
        for key, label in COUNTS.items():
            value = rec[key]
            cells.setdefault((rec["column"], label), {})[row] = None if pd.isna(value) else value
    columns = [(ds, label) for ds in dict.fromkeys(frame["column"]) for label in COUNTS.values()]
    table = pd.DataFrame({col: pd.Series(cells.get(col, {}), dtype=object) for col in columns}, dtype=object)
    table = table.reindex(index=index)
    table.columns = pd.MultiIndex.from_tuples(columns, names=["dataset", "count"])
    return table


def order_table(frame: pd.DataFrame, row_keys: list[str], index) -> pd.DataFrame:
    """Rows like ``wide_table``'s; one column per dataset column: the evaluation's ``order_acc`` (NaN if none)."""
    frame = frame.assign(column=_column_labels(frame))
    cells = {}
    for _, rec in frame.iterrows():
        row = tuple(rec[k] for k in row_keys) if len(row_keys) > 1 else rec[row_keys[0]]
        cells.setdefault(rec["column"], {})[row] = rec.get(ORDER_KEY, float("nan"))
    columns = list(dict.fromkeys(frame["column"]))
    table = pd.DataFrame({col: pd.Series(cells.get(col, {}), dtype=float) for col in columns})
    return table.reindex(index=index)


def _incomplete(counts: pd.DataFrame, dataset: str) -> pd.Series:
    return counts[(dataset, "complete")].map(lambda v: v is False or v == False)  # noqa: E712 (numpy bools)


def _fmt(value, decimals: int, mark: bool) -> str:
    text = "-" if value is None or pd.isna(value) else f"{value:.{decimals}f}"
    return f"{text} {INCOMPLETE}" if mark else text


def _count(value) -> str:
    return "-" if value is None or pd.isna(value) else str(int(value))


def summary_markdown(wide: pd.DataFrame, direction: str, decimals: int, counts: pd.DataFrame | None = None,
                     order: pd.DataFrame | None = None) -> str:
    """R@1 of one direction: variants x datasets (like the paper's cross-dataset summary); with ``order``
    (``order_table``) a ``<dataset> order_acc`` column after each dataset's R@1."""
    sub = wide.xs((direction, "R@1"), axis=1, level=("direction", "metric"))
    if counts is not None or order is not None:
        out = pd.DataFrame(index=sub.index)
        for dataset in sub.columns:
            marks = _incomplete(counts, dataset) if counts is not None else [False] * len(sub)
            out[dataset] = [_fmt(v, decimals, m) for v, m in zip(sub[dataset], marks)]
            if order is not None and dataset in order:
                out[f"{dataset} {ORDER_KEY}"] = [_fmt(v, decimals, m) for v, m in zip(order[dataset], marks)]
        return out.reset_index().to_markdown(index=False, disable_numparse=True)
    return sub.reset_index().to_markdown(index=False, floatfmt=f".{decimals}f")


def dataset_markdown(wide: pd.DataFrame, dataset: str, directions: tuple[str, str], decimals: int,
                     counts: pd.DataFrame | None = None, order: pd.DataFrame | None = None) -> str:
    """One dataset's table: variants x (direction metric) for the given directions (the paper's layout),
    ``order_acc`` (with ``order``), then the queries / videos / missing counts; incomplete rows' metrics are
    marked."""
    sub = wide[dataset][list(directions)]
    sub.columns = [f"{d} {metric}" for d, metric in sub.columns]
    if order is not None and dataset in order:
        sub = sub.assign(**{ORDER_KEY: order[dataset].values})
    if counts is None:
        return sub.reset_index().to_markdown(index=False, floatfmt=f".{decimals}f")
    marks = _incomplete(counts, dataset)
    sub = sub.copy().astype(object)
    for col in sub.columns:
        sub[col] = [_fmt(v, decimals, m) for v, m in zip(sub[col], marks)]
    for label in ("queries", "videos", "missing"):
        sub[label] = [_count(v) for v in counts[(dataset, label)]]
    return sub.reset_index().to_markdown(index=False, disable_numparse=True)


def write_tables(frame: pd.DataFrame, row_keys: list[str], out_dir: Path, decimals: int) -> pd.DataFrame:
    wide = wide_table(frame, row_keys)
    counts = counts_table(frame, row_keys, wide.index)
    order = order_table(frame, row_keys, wide.index)
    flat = wide.copy()
    flat.columns = [f"{ds} {d} {m}" for ds, d, m in wide.columns]
    for dataset in counts.columns.get_level_values("dataset").unique():
        flat[f"{dataset} {ORDER_KEY}"] = order[dataset].values
        for label in COUNTS.values():
            flat[f"{dataset} {label}"] = counts[(dataset, label)].values
    flat.reset_index().to_csv(out_dir / "retrieval.csv", index=False)
    frame.to_csv(out_dir / "retrieval_long.csv", index=False)
    rules = sorted(frame["ties"].dropna().unique()) if "ties" in frame else ["pessimistic"]
    ties = " / ".join(TIE_WORDS.get(rule, rule) for rule in rules)
    note = ("R@K in percent (higher is better); MdR/MnR are 1-based median/mean ranks (lower is better); "
            f"ties with the ground truth are ranked {ties}. t2v = text-to-video, v2t = video-to-text. order_acc: % of "
            "captions whose video scores above the same frames reversed (ties count 1/2; 50 = order-blind).\n")
    for name, directions, title in (
        ("retrieval.md", ("t2v", "v2t"), "Retrieval results"),
        ("retrieval_dsl.md", ("t2v_dsl", "v2t_dsl"), "Retrieval results with dual-softmax inference (DSL)"),
    ):
        any_incomplete = any(_incomplete(counts, ds).any() for ds in counts.columns.get_level_values("dataset"))
        parts = [f"# {title}\n", note + (INCOMPLETE_NOTE if any_incomplete else ""),
                 f"## Summary: R@1, {DIRECTION_TITLES[directions[0]]}\n",
                 summary_markdown(wide, directions[0], decimals, counts, order), ""]
        for dataset in wide.columns.get_level_values("dataset").unique():
            parts += [f"## {dataset}\n", dataset_markdown(wide, dataset, directions, decimals, counts, order), ""]
            if _incomplete(counts, dataset).any():
                parts += [INCOMPLETE_NOTE]
        (out_dir / name).write_text("\n".join(parts))
    return wide


# ------------------------------------------------------------------------------------------------ plots
def read_train_log(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trainer JSONL -> (steps, validations).

    steps: ``step``, ``loss`` and one ``term:<name>`` column per loss term, from the per-step records.
    validations: ``step`` and ``value`` (the selection metric, e.g. val t2v R@1) from ``{"event": "val"}``
    records. Other event records are ignored; a resumed run may log a step twice: the last record wins.
    """
    rows, vals = [], []
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("event") == "val" and rec.get("value") is not None:
                vals.append({"step": rec["step"], "value": rec["value"], "metric": rec.get("select_metric", "")})
            elif "event" not in rec and rec.get("loss") is not None:
                row = {"step": rec["step"], "loss": rec["loss"]}
                row.update({f"term:{k}": v for k, v in (rec.get("terms") or {}).items()})
                rows.append(row)

    def last_per_step(records, columns):
        frame = pd.DataFrame(records, columns=None if records else columns)
        return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)

    return last_per_step(rows, ["step", "loss"]), last_per_step(vals, ["step", "value", "metric"])


def _run_labels(paths: list[str]) -> list[str]:
    parents = [Path(p).resolve().parent for p in paths]
    if len(parents) <= 1:
        return [p.name for p in parents]
    common = Path(os.path.commonpath(parents))
    labels = [str(p.relative_to(common)) for p in parents]
    return [p.name if label == "." else label for p, label in zip(parents, labels)]


def plot_loss_curves(paths: list[str], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(paths))
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if not paths:
        axes[0, 0].text(0.5, 0.5, "no training logs given", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, path, label in zip(axes.flat, paths, _run_labels(paths)):
        log, vals = read_train_log(path)
        ax.plot(log["step"], log["loss"], color="black", lw=1.6, label="total")
        for col in [c for c in log.columns if c.startswith("term:")]:
            ax.plot(log["step"], log[col], lw=1.0, label=col.split(":", 1)[1])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        if len(vals):
            val_ax = ax.twinx()
            val_ax.plot(vals["step"], vals["value"], "o--", color="tab:red", lw=1.0, ms=3,
                        label=f"validation {vals['metric'].iloc[-1]}".strip())
            val_ax.set_ylabel("validation metric", color="tab:red")
            val_ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_recall_at_k(frame: pd.DataFrame, row_keys: list[str], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.assign(column=_column_labels(frame), variant=frame[row_keys].agg(" / ".join, axis=1))
    datasets = list(dict.fromkeys(frame["column"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    ks = [1, 5, 10]
    for ax, dataset in zip(axes.flat, datasets):
        for _, rec in frame[frame["column"] == dataset].iterrows():
            ax.plot(ks, [rec[f"t2v_R{k}"] for k in ks], marker="o", label=rec["variant"])
        ax.set_title(f"{dataset}: text-to-video", fontsize=10)
        ax.set_xticks(ks, [f"R@{k}" for k in ks])
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- CLI
def make_tables(metrics: list[str], train_logs: list[str], out_dir: str | Path, options: dict | None = None) -> dict:
    """Write every output file; returns ``{name: path}``."""
    opts = options if isinstance(options, TablesOptions) else TablesOptions.from_dict(options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, row_keys = load_metrics(metrics)
    if not row_keys:
        frame["model"] = frame.get("model", frame["source"]).astype(str)
        row_keys = ["model"]
    write_tables(frame, row_keys, out_dir, opts.decimals)
    plot_loss_curves(list(train_logs), out_dir / "loss_curves.png")
    plot_recall_at_k(frame, row_keys, out_dir / "recall_at_k.png")
    names = ("retrieval.csv", "retrieval_long.csv", "retrieval.md", "retrieval_dsl.md", "loss_curves.png",
             "recall_at_k.png")
    return {name: out_dir / name for name in names}


@stage_main("tables")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip tables", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", nargs="+", required=True, help="evaluation JSONs from `clipvip evaluate`")
    parser.add_argument("--train-logs", nargs="*", default=[], help="trainer metrics.jsonl files")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options", default=None, help='JSON, e.g. {"decimals": 1}')
    args = parser.parse_args(argv)
    outputs = make_tables(args.metrics, args.train_logs, args.out_dir,
                          TablesOptions.from_dict(parse_options(args.options)))
    for path in outputs.values():
        print(path)
    return 0
