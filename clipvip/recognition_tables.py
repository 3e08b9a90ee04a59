"""``clipvip recognition-tables``: the action-recognition table (CSV + Markdown) from ``evaluate-recognition`` JSONs.

Usage:
    clipvip recognition-tables --metrics R/eval_recognition/*/*/test.json --out-dir R/tables

Rows are (method, protocol) -- e.g. "CLIP / zero-shot (class-name prompts)", "CLIP-ViP / zero-shot",
"Vita-CLIP / supervised", "Vita-CLIP / zero-shot (unseen classes)" -- in the order first seen; columns top-1 /
top-5 per dataset ``group`` (the row's ``group`` field, default its ``dataset``). Several results of one row and
group (the 3 official splits of HMDB51 / UCF101, the 3 random 160-class subsets of K600's new classes) are
aggregated as mean ± sample std (``n`` in the CSV); a single result is shown as is. Results with
``complete: false`` are marked ``*``.

Writes ``recognition.csv`` (method, protocol, group, n, top1, top1_std, top5, top5_std, complete) and
``recognition.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from clipvip.stage import StageOptions, UserError, option, parse_options, stage_main, write_text_atomic


@dataclass
class RecognitionTablesOptions(StageOptions):
    STAGE = "recognition-tables"
    decimals: int = option(1, "digits after the point in the Markdown table", minimum=0, maximum=4)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: list[dict]) -> list[dict]:
    """One record per (method, protocol, group): mean ± std over its results."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r.get("method", "?"), r.get("protocol", "?"), r.get("group") or r.get("dataset", "?"))
        groups.setdefault(key, []).append(r)
    rows = []
    for (method, protocol, group), items in groups.items():
        top1, top1_std = _mean_std([float(i["top1"]) for i in items])
        top5, top5_std = _mean_std([float(i["top5"]) for i in items])
        rows.append({"method": method, "protocol": protocol, "group": group, "n": len(items), "top1": top1,
                     "top1_std": top1_std, "top5": top5, "top5_std": top5_std,
                     "complete": all(i.get("complete", True) for i in items)})
    return rows


def markdown(rows: list[dict], decimals: int = 1) -> str:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    methods = list(dict.fromkeys((r["method"], r["protocol"]) for r in rows))
    cell = {(r["method"], r["protocol"], r["group"]): r for r in rows}

    def fmt(r, key):
        text = f"{r[key]:.{decimals}f}"
        if r["n"] > 1:
            text += f" ± {r[key + '_std']:.{decimals}f}"
        return text + ("" if r["complete"] else "*")

    header = "| method | protocol | " + " | ".join(f"{g} top-1 | {g} top-5" for g in groups) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(groups))]
    for method, protocol in methods:
        cells = []
        for g in groups:
            r = cell.get((method, protocol, g))
            cells += [fmt(r, "top1"), fmt(r, "top5")] if r else ["-", "-"]
        lines.append(f"| {method} | {protocol} | " + " | ".join(cells) + " |")
    notes = ["", "Top-1 / top-5 accuracy (%) on each dataset's test split; ties count against the prediction."]
    if any(r["n"] > 1 for r in rows):
        notes.append("a ± b: mean ± sample std over the group's splits / class subsets.")
    if not all(r["complete"] for r in rows):
        notes.append("*: some annotated clips had no frames (incomplete protocol).")
    return "\n".join(lines + notes) + "\n"


def write_tables(metrics: list[str], out_dir: str, opts: RecognitionTablesOptions) -> list[dict]:
    results = []
    for path in metrics:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"--metrics: cannot read {path}: {exc}") from None
    if not results:
        raise UserError("--metrics: no result files")
    rows = aggregate(results)
    out = Path(out_dir)
    keys = ["method", "protocol", "group", "n", "top1", "top1_std", "top5", "top5_std", "complete"]
    csv = [",".join(keys)] + [",".join(_csv(r[k]) for k in keys) for r in rows]
    write_text_atomic(out / "recognition.csv", "\n".join(csv) + "\n")
    write_text_atomic(out / "recognition.md", markdown(rows, opts.decimals))
    return rows


def _csv(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    return f'"{text}"' if "," in text or '"' in text else text


@stage_main("recognition-tables")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip recognition-tables", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + RecognitionTablesOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", nargs="+", required=True, help="evaluate-recognition JSON files")
    parser.add_argument("--out-dir", required=True, help="folder for recognition.csv / recognition.md")
    parser.add_argument("--options", default=None, help="JSON object of RecognitionTablesOptions keys")
    args = parser.parse_args(argv)
    rows = write_tables(args.metrics, args.out_dir, RecognitionTablesOptions.from_dict(parse_options(args.options)))
    print(f"recognition-tables: {len(rows)} cells from {len(args.metrics)} results; wrote {args.out_dir}/recognition.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
