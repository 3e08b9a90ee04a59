"""clipvip tables: fixture metric JSONs land in the right cells; markdown and plots are written."""
import json

import pandas as pd
import pytest

from clipvip.tables import main, read_train_log

ROWS = [
    {"method": "CLIP", "stage": "zero-shot", "encoder": "meanpool", "loss": "-"},
    {"method": "CLIP-ViP", "stage": "zero-shot", "encoder": "vip", "loss": "vsc_fc"},
    {"method": "CLIP-ViP", "stage": "finetuned", "encoder": "vip", "loss": "vsc_fc"},
]
DATASETS = ("demo_msrvtt", "demo_didemo")


def _metrics(i: int, d: int, direction: str) -> dict:
    # distinct value per (row, dataset, direction, metric) so a misplaced cell cannot go unnoticed
    base = 10 * i + d + {"t2v": 0.1, "v2t": 0.2, "t2v_dsl": 0.3, "v2t_dsl": 0.4}[direction]
    return {"R1": base, "R5": base + 1, "R10": base + 2, "MdR": 100 + base, "MnR": 200 + base}


@pytest.fixture
def metric_files(tmp_path):
    paths = []
    for i, row in enumerate(ROWS):
        for d, dataset in enumerate(DATASETS):
            data = {**row, "dataset": dataset, "split": "test", "row_keys": [*row, "dataset", "split"],
                    "num_queries": 32, "num_videos": 32, "missing_clips": 0, "model": f"m{i}",
                    "options": {"num_frames": 12}, "seconds": 1.0}
            data.update({k: _metrics(i, d, k) for k in ("t2v", "v2t", "t2v_dsl", "v2t_dsl")})
            path = tmp_path / "eval" / f"row{i}" / dataset / "test.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(data))
            paths.append(str(path))
    return paths


@pytest.fixture
def train_logs(tmp_path):
    paths = []
    for run in ("pretrain/vsc_fc", "finetune/vsc_fc/demo_msrvtt"):
        path = tmp_path / "runs" / run / "metrics.jsonl"
        path.parent.mkdir(parents=True)
        lines = [{"step": s, "epoch": 0, "loss": 4.0 - 0.1 * s, "terms": {"vs": 2.0 - 0.05 * s, "fc": 2.0 - 0.05 * s},
                  "lr": 1e-4, "grad_norm": 1.0, "clips_per_s": 10.0, "peak_mem_mb": 100.0} for s in range(1, 11)]
        lines.append({**lines[4], "loss": 9.9})  # a resumed run re-logging step 5: the last record wins
        lines.append({"event": "val", "step": 5, "epoch": 0.5, "metrics": {"t2v": {"R1": 40.0}},
                      "select_metric": "t2v.R1", "value": 40.0})
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        paths.append(str(path))
    return paths


def test_tables_cells_markdown_and_plots(tmp_path, metric_files, train_logs):
    out = tmp_path / "tables"
    assert main(["--metrics", *metric_files, "--train-logs", *train_logs, "--out-dir", str(out)]) == 0

    wide = pd.read_csv(out / "retrieval.csv")
    assert list(wide["stage"]) == ["zero-shot", "zero-shot", "finetuned"]  # order of --metrics
    assert list(wide.columns[:4]) == ["method", "stage", "encoder", "loss"]
    finetuned = wide.iloc[2]
    assert finetuned["demo_didemo t2v R@1"] == pytest.approx(21.1)
    assert finetuned["demo_msrvtt v2t R@10"] == pytest.approx(22.2)
    assert finetuned["demo_msrvtt t2v_dsl MdR"] == pytest.approx(120.3)
    assert wide.iloc[0]["demo_didemo v2t_dsl MnR"] == pytest.approx(201.4)

    long = pd.read_csv(out / "retrieval_long.csv")
    assert len(long) == 6 and set(long["dataset"]) == set(DATASETS)

    md = (out / "retrieval.md").read_text()
    assert "| CLIP-ViP | finetuned | vip       | vsc_fc |" in md
    assert "## demo_msrvtt" in md and "## demo_didemo" in md
    summary = md.split("## demo_msrvtt")[0]
    assert "21.1" in summary and "20.1" in summary  # finetuned t2v R@1 on both datasets
    assert "t2v R@1" in md and "v2t MnR" in md and "t2v_dsl" not in md
    dsl = (out / "retrieval_dsl.md").read_text()
    assert "t2v_dsl R@1" in dsl and "20.3" in dsl

    for name in ("loss_curves.png", "recall_at_k.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_train_log_last_record_per_step_wins(train_logs):
    log, vals = read_train_log(train_logs[0])
    assert vals[["step", "value"]].values.tolist() == [[5, 40.0]]  # the val event does not replace step 5
    assert list(log["step"]) == list(range(1, 11))
    assert log.loc[log["step"] == 5, "loss"].item() == 9.9
    assert {"term:vs", "term:fc"} <= set(log.columns)


def test_duplicate_rows_are_refused(tmp_path, metric_files):
    with pytest.raises(ValueError, match="same row"):
        main(["--metrics", metric_files[0], metric_files[0], "--out-dir", str(tmp_path / "t")])


def test_no_train_logs_still_writes_the_plot(tmp_path, metric_files):
    out = tmp_path / "t"
    main(["--metrics", *metric_files[:2], "--out-dir", str(out)])
    assert (out / "loss_curves.png").stat().st_size > 1000


def test_order_acc_is_a_column_in_every_table(metric_files, tmp_path):
    # order_acc of row i on dataset d = 50 + 10 i + d; one evaluation without it (older JSON) shows "-"
    for k, path in enumerate(metric_files):
        data = json.loads(open(path).read())
        if k != len(metric_files) - 1:
            data["order_acc"] = 50.0 + 10 * (k // 2) + k % 2
        open(path, "w").write(json.dumps(data))
    out = tmp_path / "tables"
    assert main(["--metrics", *metric_files, "--out-dir", str(out)]) == 0
    wide = pd.read_csv(out / "retrieval.csv")
    assert list(wide["demo_msrvtt order_acc"]) == [50.0, 60.0, 70.0]
    assert list(wide["demo_didemo order_acc"][:2]) == [51.0, 61.0] and pd.isna(wide["demo_didemo order_acc"][2])
    assert "order_acc" not in wide.columns[:4]  # not mistaken for a row-identity key
    long = pd.read_csv(out / "retrieval_long.csv")
    assert "order_acc" in long.columns
    md = (out / "retrieval.md").read_text()
    summary = md.split("## Summary", 1)[1].split("## demo_msrvtt", 1)[0]
    assert "demo_msrvtt order_acc" in summary and "70.0" in summary
    msrvtt = md.split("## demo_msrvtt", 1)[1].split("## demo_didemo", 1)[0]
    header = [c.strip() for c in msrvtt.strip().splitlines()[0].split("|")]
    assert "order_acc" in header and header.index("order_acc") < header.index("queries")
    first_row = [c.strip() for c in msrvtt.strip().splitlines()[2].split("|")]
    assert first_row[header.index("order_acc")] == "50.0"


def _row(stage, encoder, loss, dataset, r1, order, base=False):
    return {"method": "CLIP (zero-shot)" if base else "CLIP-ViP", "stage": stage, "encoder": encoder, "loss": loss,
            "dataset": dataset, "split": "test", "num_videos": 256, "t2v": {"R1": r1}, "order_acc": order}


def test_demo_claims_pass_and_fail_marks(tmp_path):
    from clipvip.demo_claims import claims_from_rows, main as claims_main

    rows = []
    for ds in ("demo_msrvtt", "demo_didemo"):
        rows += [_row("zero-shot", "meanpool", "-", ds, 6.0, 50.0, base=True),
                 _row("zero-shot", "vip", "vs", ds, 10.0, 90.0), _row("zero-shot", "vip", "vsc_fc", ds, 14.0, 92.0),
                 _row("zero-shot", "meanpool", "vs", ds, 8.0, 50.0),
                 _row("zero-shot", "meanpool", "vsc_fc", ds, 9.0, 50.0),
                 _row("fine-tuned", "vip", "vsc_fc", ds, 30.0, 97.0),
                 _row("fine-tuned", "meanpool", "vsc_fc", ds, 20.0, 50.0)]
    claims = claims_from_rows(rows)
    assert [c["id"] for c in claims] == ["a", "b", "c", "d", "e"] and all(c["holds"] for c in claims)
    assert claims[2]["margin"] == pytest.approx(4.0)  # zero-shot ViP 14 vs MeanPool 9, less the 1-point margin
    # ViP order-blind after post-pretraining: (b) fails; MeanPool ahead fine-tuned on one set: (c) fails
    rows[2]["order_acc"] = 60.0
    rows[13]["t2v"]["R1"] = 31.0  # didemo fine-tuned MeanPool
    claims = claims_from_rows(rows)
    assert [c["holds"] for c in claims] == [True, False, False, True, True]
    # a claim without its rows is n/a, not a pass
    claims = claims_from_rows([r for r in rows if r["loss"] != "vs"])
    assert claims[3]["holds"] is None
    # the stage writes md + csv + json
    paths = []
    for k, row in enumerate(rows):
        path = tmp_path / "eval" / f"{k}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(row))
        paths.append(str(path))
    assert claims_main(["--metrics", *paths, "--out-dir", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t" / "demo_claims.csv")
    assert list(table["holds"]) == ["pass", "FAIL", "FAIL", "pass", "pass"]
    assert "FAIL" in (tmp_path / "t" / "demo_claims.md").read_text()


def test_videoclip_rows_beside_clip_vip(tmp_path, metric_files):
    """VideoCLIP evaluations (``clipvip evaluate`` on a VideoCLIP folder: no order_acc, a ``protocol`` key) become
    rows "VideoCLIP | zero-shot" and "VideoCLIP | fine-tuned" after CLIP-ViP's, in every table."""
    paths = list(metric_files)
    for k, stage in enumerate(("zero-shot", "fine-tuned")):
        for d, dataset in enumerate(DATASETS):
            row = {"method": "VideoCLIP", "stage": stage, "encoder": "videoclip", "loss": "videoclip",
                   "dataset": dataset, "split": "test"}
            data = {**row, "row_keys": list(row), "num_queries": 32, "num_videos": 32, "missing_clips": 0,
                    "missing_ids": [], "complete": True, "protocol": "first 32 s of features",
                    "model": f"vc{k}", "options": {"batch_size": 32}, "seconds": 1.0}
            data.update({key: _metrics(5 + k, d, key) for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl")})
            path = tmp_path / "eval" / f"videoclip-{stage}" / dataset / "test.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(data))
            paths.append(str(path))
    out = tmp_path / "tables"
    assert main(["--metrics", *paths, "--out-dir", str(out)]) == 0
    wide = pd.read_csv(out / "retrieval.csv")
    assert list(wide["method"]) == ["CLIP", "CLIP-ViP", "CLIP-ViP", "VideoCLIP", "VideoCLIP"]
    assert list(wide["stage"][3:]) == ["zero-shot", "fine-tuned"]
    assert wide.iloc[3]["demo_msrvtt t2v R@1"] == pytest.approx(50.1)
    assert wide.iloc[4]["demo_didemo v2t R@5"] == pytest.approx(62.2)
    assert pd.isna(wide.iloc[4]["demo_didemo order_acc"])
    md = (out / "retrieval.md").read_text()
    summary = md.split("## Summary", 1)[1].split("## demo_msrvtt", 1)[0]
    lines = [ln for ln in summary.splitlines() if ln.startswith("| VideoCLIP")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["zero-shot", "fine-tuned"]
    assert "61.1" in lines[1] and "60.1" in lines[1]                # fine-tuned t2v R@1 on both sets
    long = pd.read_csv(out / "retrieval_long.csv")
    assert "protocol" not in wide.columns[:4] and set(long["protocol"].dropna()) == {"first 32 s of features"}
