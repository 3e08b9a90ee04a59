"""The whole demo DAG through Snakemake (fast settings), and rerun semantics a cluster user relies on."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

pytestmark = pytest.mark.slow


def fast_overlay(results: Path, **finetune_per_dataset) -> dict:
    """The demo at CI size: few clips, one variant, few steps. Same code paths as `make demo`."""
    return {
        "results": str(results),
        "demo": {"corpus": {"pretrain_clips": 32, "msrvtt_clips": {"train": 16, "val": 8, "test": 8},
                            "didemo_clips": {"train": 16, "val": 8, "test": 8}},
                 "tiny_models": {"train": {"clip_steps": 3, "clip_batch_size": 16, "captioner_steps": 3,
                                           "captioner_batch_size": 8}}},
        "frames": {"shard_size": 16},
        "captions": {"batch_size": 8},
        "pretrain": {"options": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 100}},
        "finetune": {"options": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 100, "eval_every": 2},
                     "per_dataset": {"demo_didemo": {"max_steps": 3, **finetune_per_dataset}}},
        "ablation": {"video_encoder": ["vip"], "loss": ["vsc_fc"]},
    }


def snakemake(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc


def planned_jobs(stdout: str) -> dict[str, int]:
    """Rule → count from the 'Job stats' table of a dry run."""
    table = stdout.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("demo") / "results"
    overlay = results.parent / "fast.yaml"
    overlay.write_text(yaml.safe_dump(fast_overlay(results)))
    proc = snakemake(["--cores", "2", "--configfile", str(overlay)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return results, overlay


def test_every_stage_ran_and_the_table_has_each_row(demo_run):
    results, _ = demo_run
    table = pd.read_csv(results / "tables/retrieval.csv")
    assert len(table) >= 3  # zero-shot CLIP, zero-shot post-pretrained, fine-tuned
    for name in ["retrieval.md", "loss_curves.png", "recall_at_k.png", "demo_claims.md", "demo_claims.csv"]:
        assert (results / "tables" / name).stat().st_size > 0
    metrics = json.loads((results / "eval/finetuned-vip-vsc_fc/demo_msrvtt/test.json").read_text())
    assert metrics["num_videos"] == 8 and 0 <= metrics["t2v"]["R1"] <= 100
    assert 0 <= metrics["order_acc"] <= 100 and "demo_msrvtt order_acc" in table.columns
    claims = pd.read_csv(results / "tables/demo_claims.csv", keep_default_na=False)  # "n/a" stays a mark
    assert list(claims["id"]) == ["a", "b", "c", "d", "e"] and set(claims["holds"]) <= {"pass", "FAIL", "n/a"}
    # the image-text pre-training of the tiny CLIP and captioner ran (a few steps at CI size)
    # (two jobs: each part's JSON, written last, has its options and training log)
    clip_done = json.loads((results / "pretrained/DONE_clip.json").read_text())
    log = json.loads((results / "pretrained/DONE_captioner.json").read_text())["pretrain"]
    assert len(clip_done["pretrain"]["clip_loss"]) >= 1 and len(log["captioner_loss"]) >= 1
    assert "captioner_steps" not in clip_done["options"]["train"] and "captioner" not in clip_done["options"]
    # the captioner's held-out check: its examples are what the saved captioner writes for those stills
    from clipvip.captions import Captioner
    from clipvip.demo_data import render_still, still_specs

    held = log["captioner_heldout"]
    assert 0 <= held["colour"] <= 1 and 0 <= held["shape"] <= 1
    specs = [dict(s, size="small") for s in still_specs(np.random.default_rng([1000, 9]), 4)]
    captioner = Captioner(str(results / "pretrained/captioner"), "cpu", num_beams=1, max_new_tokens=12)
    assert held["examples"] == captioner([render_still(s, 64) for s in specs])
    assert (results / "runs/finetune/vip-vsc_fc/demo_msrvtt/model/config.json").exists()
    for shard in (results / "frames/demo_msrvtt").glob("*.h5"):
        assert shard.with_suffix(".failures.tsv").exists()


def test_changing_one_datasets_finetune_setting_reruns_only_its_chain(demo_run):
    results, overlay = demo_run
    changed = results.parent / "changed.yaml"
    changed.write_text(yaml.safe_dump(fast_overlay(results, lr=1e-4)))
    proc = snakemake(["-n", "--configfile", str(changed)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    # the dataset's retrieval gallery shows the fine-tuned model, so it follows (the domain gap does not)
    assert jobs == {"finetune": 1, "evaluate": 1, "demo_claims": 1, "tables": 1, "gallery": 1, "all": 1}, jobs
    assert "ds=demo_didemo" in proc.stdout and "ds=demo_msrvtt" not in proc.stdout

    untouched = results / "runs/finetune/vip-vsc_fc/demo_msrvtt/metrics.jsonl"
    before = untouched.stat().st_mtime_ns
    proc = snakemake(["--cores", "2", "--configfile", str(changed)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert untouched.stat().st_mtime_ns == before
    resolved = json.loads((results / "runs/finetune/vip-vsc_fc/demo_didemo/config.json").read_text())
    assert resolved["options"]["lr"] == pytest.approx(1e-4)
    # and nothing is left to do
    proc = snakemake(["-n", "--configfile", str(changed)])
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _embedded_files(report_html: str) -> dict[str, bytes]:
    """Files embedded in a `snakemake --report` page (data URIs ``data:<mime>;charset=..;filename=<name>;base64,..``)."""
    pattern = r"data:[\w/+.-]+;(?:charset=[^;]+;)?filename=([^;]+);base64,([A-Za-z0-9+/=]+)"
    return {m.group(1): base64.b64decode(m.group(2)) for m in re.finditer(pattern, report_html)}


def test_report_has_the_analyses_and_the_gallery_images_load(demo_run):
    """`snakemake --report` holds the domain-gap table and plot and the galleries; headless Chromium renders the
    report page (screenshot under results/) and each embedded gallery page with every image decoded."""
    results, overlay = demo_run
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/install_system.sh installs it)")
    report = results / "report.html"
    proc = snakemake(["--configfile", str(overlay), "--report", str(report)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gap = pd.read_csv(results / "analysis/domain_gap.csv")
    assert len(gap) == 5 and gap["nmi_mean"].between(0, 1).all()  # 2 x 2 downstream pairs + subtitles/captions
    page = report.read_text()
    for name in ("domain_gap.md", "domain_gap.png", "demo_msrvtt.html", "demo_didemo.html", "Analyses"):
        assert name in page, f"{name} missing from the report"
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=10000"]
    shot = results / "report_screenshot.png"
    subprocess.run([*browse, f"--screenshot={shot}", "--window-size=1400,1000", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG"
    galleries = {name: data for name, data in _embedded_files(page).items() if name.endswith(".html")}
    assert set(galleries) == {"demo_msrvtt.html", "demo_didemo.html"}, sorted(galleries)
    for name, data in galleries.items():
        copy = results / "gallery_check" / name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(data)
        dom = subprocess.run([*browse, "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=120)
        loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
        assert loaded, f"{name}: the page's load check did not run: {dom.stdout[:300]}{dom.stderr[-300:]}"
        ok, total = map(int, loaded.groups())
        assert total > 0 and ok == total, f"{name}: {ok} of {total} images loaded"

