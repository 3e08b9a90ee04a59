"""``clipvip demo-claims``: what the demo shows, as a table of claims with their numbers and pass/fail marks.

Usage:
    clipvip demo-claims --metrics R/eval/*/*/test.json --out-dir R/tables [--options '{"margin": 1.0}']

    from clipvip.demo_claims import claims_from_metrics
    claims = claims_from_metrics(["R/eval/base/demo_msrvtt/test.json", ...])   # [{"claim", "holds", ...}]

The claims (the paper's story in miniature; every number is text->video on the test split):
    (a) zero-shot image-text CLIP (MeanPool over frames) retrieves well above chance (R@1 >= ``chance_factor``
        x chance = 100 / videos) on every dataset, but is order-blind: ``order_acc`` within ``blind_tol`` of 50;
    (b) after post-pretraining ViP's zero-shot ``order_acc`` >= ``order_min`` (85) on every dataset, MeanPool
        stays within ``blind_tol`` of 50;
    (c) ViP beats MeanPool on R@1 on every dataset, zero-shot (post-pretrained) and fine-tuned, by >= ``margin``;
    (d) L(V,S,C)+L(F,C) beats L(V,S) in zero-shot ViP R@1 after post-pretraining on every dataset (>= ``margin``);
    (e) fine-tuned beats zero-shot (post-pretrained) R@1 for every variant and dataset (>= ``margin``).
Comparisons use the rows' ``stage``/``encoder``/``loss`` fields written by ``clipvip evaluate``; (c) and (e) use
the ``loss`` variant ``main_loss`` (vsc_fc). A claim whose rows are missing is marked ``n/a`` (not holding).

Outputs (atomic): ``demo_claims.md`` (the table, for the report and README), ``demo_claims.csv`` (claim, holds,
numbers, the smallest margin) and ``demo_claims.json`` (the same, machine-readable).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from clipvip.stage import StageOptions, option, parse_options, stage_main, write_json_atomic

CLAIM_IDS = ("a", "b", "c", "d", "e")


@dataclass
class DemoClaimsOptions(StageOptions):
    STAGE = "demo-claims"
    chance_factor: float = option(5.0, "(a): zero-shot CLIP R@1 must reach this many times chance", minimum=1.0)
    blind_tol: float = option(2.0, "(a), (b): order_acc within this many points of 50 counts as order-blind",
                              minimum=0.0)
    order_min: float = option(85.0, "(b): post-pretrained ViP's zero-shot order_acc at least this", minimum=0.0,
                              maximum=100.0)
    margin: float = option(1.0, "(c), (d), (e): the winner's R@1 lead, in points, for a claim to hold",
                           minimum=0.0)
    main_loss: str = option("vsc_fc", "loss variant of the (c) and (e) comparisons")
    baseline_loss: str = option("vs", "(d): the loss the main loss must beat")


def _load(paths) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        data.setdefault("dataset", Path(path).parent.name)
        rows.append(data)
    return rows


def _find(rows, dataset, stage, encoder=None, loss=None, base=False):
    for r in rows:
        if r.get("dataset") != dataset or r.get("stage") != stage:
            continue
        is_base = str(r.get("method", "")).startswith("CLIP (")
        if is_base != base:
            continue
        if encoder is not None and r.get("encoder") != encoder:
            continue
        if loss is not None and r.get("loss") != loss:
            continue
        return r
    return None


def _r1(row) -> float:
    return float(row["t2v"]["R1"])


def _order(row) -> float:
    return float(row.get("order_acc", float("nan")))


def _short(ds: str) -> str:
    return ds.replace("demo_", "")


def claims_from_rows(rows: list[dict], options: DemoClaimsOptions | dict | None = None) -> list[dict]:
    """Every claim: ``{"id", "claim", "holds" (bool | None when rows are missing), "numbers", "margin"}``."""
    o = options if isinstance(options, DemoClaimsOptions) else DemoClaimsOptions.from_dict(options)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    out = []

    def claim(cid, text, checks):
        """checks: list of (label, margin-or-None); holds iff every margin >= 0 (None = missing rows)."""
        margins = [m for _, m in checks]
        holds = None if not checks or any(m is None for m in margins) else all(m >= 0 for m in margins)
        numbers = "; ".join(label for label, _ in checks)
        present = [m for m in margins if m is not None]
        out.append({"id": cid, "claim": text, "holds": holds, "numbers": numbers,
                    "margin": round(min(present), 2) if present else None})

    checks = []
    for ds in datasets:
        base = _find(rows, ds, "zero-shot", base=True)
        if base is None:
            checks.append((f"{_short(ds)}: no zero-shot CLIP row", None))
            continue
        chance = 100.0 / max(1, int(base["num_videos"]))
        checks.append((f"{_short(ds)} R@1 {_r1(base):.1f} (chance {chance:.2f})", _r1(base) - o.chance_factor * chance))
        checks.append((f"order_acc {_order(base):.1f}", o.blind_tol - abs(_order(base) - 50.0)))
    claim("a", f"zero-shot image-text CLIP retrieves by colour/shape (R@1 >= {o.chance_factor:g}x chance) but is "
               f"order-blind (order_acc 50 ± {o.blind_tol:g})", checks)

    checks = []
    for ds in datasets:
        for r in rows:
            if r.get("dataset") != ds or r.get("stage") != "zero-shot" or str(r.get("method", "")).startswith("CLIP ("):
                continue
            acc = _order(r)
            if r.get("encoder") == "vip":
                checks.append((f"{_short(ds)} ViP {r.get('loss')} {acc:.1f}", acc - o.order_min))
            elif r.get("encoder") == "meanpool":
                checks.append((f"{_short(ds)} MeanPool {r.get('loss')} {acc:.1f}", o.blind_tol - abs(acc - 50.0)))
    claim("b", f"post-pretrained ViP's zero-shot order_acc >= {o.order_min:g}; MeanPool stays at 50", checks)

    checks = []
    for stage in ("zero-shot", "fine-tuned"):
        for ds in datasets:
            vip = _find(rows, ds, stage, "vip", o.main_loss)
            mp = _find(rows, ds, stage, "meanpool", o.main_loss)
            if vip is None or mp is None:
                checks.append((f"{_short(ds)} {stage}: rows missing", None))
                continue
            checks.append((f"{_short(ds)} {stage} {_r1(vip):.1f} vs {_r1(mp):.1f}", _r1(vip) - _r1(mp) - o.margin))
    claim("c", f"ViP beats MeanPool on t2v R@1 (by >= {o.margin:g}), zero-shot and fine-tuned", checks)

    checks = []
    for ds in datasets:
        main = _find(rows, ds, "zero-shot", "vip", o.main_loss)
        basel = _find(rows, ds, "zero-shot", "vip", o.baseline_loss)
        if main is None or basel is None:
            checks.append((f"{_short(ds)}: rows missing", None))
            continue
        checks.append((f"{_short(ds)} {_r1(main):.1f} vs {_r1(basel):.1f}", _r1(main) - _r1(basel) - o.margin))
    claim("d", f"L(V,S,C)+L(F,C) beats L(V,S) in zero-shot ViP R@1 after post-pretraining (by >= {o.margin:g})",
          checks)

    checks = []
    for ds in datasets:
        for r in rows:
            if r.get("dataset") != ds or r.get("stage") != "fine-tuned":
                continue
            zs = _find(rows, ds, "zero-shot", r.get("encoder"), r.get("loss"))
            if zs is None:
                checks.append((f"{_short(ds)} {r.get('encoder')}-{r.get('loss')}: no zero-shot row", None))
                continue
            checks.append((f"{_short(ds)} {r.get('encoder')}-{r.get('loss')} {_r1(r):.1f} vs {_r1(zs):.1f}",
                           _r1(r) - _r1(zs) - o.margin))
    claim("e", f"fine-tuned beats zero-shot t2v R@1 (by >= {o.margin:g}) for every variant", checks)
    return out


def claims_from_metrics(paths, options=None) -> list[dict]:
    return claims_from_rows(_load(paths), options)


def _mark(holds) -> str:
    return "n/a" if holds is None else ("pass" if holds else "FAIL")


def claims_markdown(claims: list[dict]) -> str:
    lines = ["# What the demo shows\n",
             "Text-to-video on the test splits; margin = the smallest lead over each threshold (points).\n",
             "| | claim | numbers | margin | |", "|---|---|---|---|---|"]
    for c in claims:
        margin = "-" if c["margin"] is None else f"{c['margin']:.1f}"
        lines.append(f"| ({c['id']}) | {c['claim']} | {c['numbers']} | {margin} | {_mark(c['holds'])} |")
    held = sum(bool(c["holds"]) for c in claims)
    lines.append(f"\n{held} of {len(claims)} claims hold.\n")
    return "\n".join(lines)


def write_claims(metrics, out_dir, options=None) -> dict:
    import pandas as pd

    from clipvip.stage import write_text_atomic

    claims = claims_from_metrics(metrics, options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "demo_claims.md", claims_markdown(claims))
    write_text_atomic(out / "demo_claims.csv", pd.DataFrame(
        [{**c, "holds": _mark(c["holds"])} for c in claims]).to_csv(index=False))
    summary = {"claims": claims, "held": sum(bool(c["holds"]) for c in claims), "total": len(claims)}
    write_json_atomic(out / "demo_claims.json", summary)
    return summary


@stage_main("demo-claims")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip demo-claims", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + DemoClaimsOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", nargs="+", required=True, help="evaluation JSONs from `clipvip evaluate`")
    parser.add_argument("--out-dir", required=True, help="folder for demo_claims.{md,csv,json}")
    parser.add_argument("--options", default=None, help="JSON object of DemoClaimsOptions keys")
    args = parser.parse_args(argv)
    summary = write_claims(args.metrics, args.out_dir, DemoClaimsOptions.from_dict(parse_options(args.options)))
    print(claims_markdown(summary["claims"]))
    return 0
