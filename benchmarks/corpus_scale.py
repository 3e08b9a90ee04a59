"""Corpus scale (HD-VILA-100M simulation): private memory, open files and `snakemake -n` time of the training
inputs, today's path (index.json with every id + dict FrameIndex + list-of-dicts annotations) vs the Arrow path.

Usage:
    .venv/bin/python benchmarks/corpus_scale.py [--quick] [--sizes 1000000 10000000] [--old-max 1000000]

For each N (quick: 1 M; default 1 M and 10 M) it writes a synthetic corpus of N clips over N/10,000 shards:
subtitle annotations (two timed subtitles per clip: ``text`` + ``subtitles: [{start, end, text}]``), one
caption per clip (caption JSONL per shard), and one tiny HDF5 store per shard (only the ``complete`` attribute
and an empty ``clips`` group: frames are never read here, a "sample" is the dataset record + caption + the
frame store's lookup and open of the clip's shard). Then, each in a fresh process:
  old: the git-HEAD index.json form (``shard_clip_ids``) read by a reference copy of HEAD's dict FrameIndex,
       ``read_annotations``/``read_captions`` of the JSONL (lists / dicts);
  new: ``index.arrow`` + FrameIndex (LRU 64), the annotation table joined with the index, the caption table;
and measures the load time and USS/PSS (psutil ``memory_full_info``) of a ``PretrainDataset`` in the main
process and in 4 forked DataLoader-like workers after each sampled 10,000 random clips, and each worker's
open file descriptors after sampling one clip of every shard. ``snakemake -n`` runs on a config overlay
pointing a dataset at the N-line annotation file. The old path is skipped above ``--old-max`` (its
list-of-dicts annotations need ~1.5 GB per 1 M clips per process: 10 M would not fit beside other users).
The last line is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARD_SIZE = 10_000
WORKERS = 4
SAMPLES = 10_000
LRU = 64


def clip_id(i: int) -> str:
    return f"v{i:09d}"


# ------------------------------------------------------------------------------------------------ corpus
def write_corpus(root: Path, n: int) -> dict:
    import h5py

    from clipvip.data.corpus import build_annotation_table, build_caption_table
    from clipvip.frames.shards import write_index

    root.mkdir(parents=True, exist_ok=True)
    num_shards = -(-n // SHARD_SIZE)
    frames = root / "frames"
    frames.mkdir(exist_ok=True)
    for s in range(num_shards):
        with h5py.File(frames / f"{s:05d}.h5", "w") as h5:
            h5.attrs["complete"] = True
            h5.create_group("clips")
    ann = root / "subtitles.jsonl"
    words = ["a", "man", "is", "cooking", "pasta", "in", "the", "kitchen", "while", "talking", "about", "sauce"]
    rng = random.Random(0)
    caps_dir = root / "captions"
    caps_dir.mkdir(exist_ok=True)
    cap_files = []
    # JSON fragments drawn from a pool of pre-serialised texts (json.dumps per line would dominate the run)
    pool = []
    for _ in range(997):
        subs = [" ".join(rng.choices(words, k=8)), " ".join(rng.choices(words, k=8))]
        timed = [{"start": 0.0, "end": 2.5, "text": subs[0]}, {"start": 2.5, "end": 5.0, "text": subs[1]}]
        pool.append((json.dumps(subs), json.dumps(timed), json.dumps(" ".join(rng.choices(words, k=6)))))
    with open(ann, "w") as fh:
        for s in range(num_shards):
            cap_path = caps_dir / f"{s:05d}.jsonl"
            lines, cap_lines = [], []
            for i in range(s * SHARD_SIZE, min(n, (s + 1) * SHARD_SIZE)):
                subs, timed, cap = pool[i % 997]
                lines.append(f'{{"clip_id": "{clip_id(i)}", "text": {subs}, "subtitles": {timed}}}\n')
                cap_lines.append(f'{{"clip_id": "{clip_id(i)}", "caption": {cap}, "model": "blip"}}\n')
            fh.write("".join(lines))
            cap_path.write_text("".join(cap_lines))
            cap_files.append(cap_path)
    shard_ids = [[clip_id(i) for i in range(s * SHARD_SIZE, min(n, (s + 1) * SHARD_SIZE))]
                 for s in range(num_shards)]
    shard_paths = [f"{s:05d}.h5" for s in range(num_shards)]
    # old: HEAD's index.json (every id in shard_clip_ids)
    old_index = {"format": "clipvip-frames-index/1", "shards": shard_paths, "num_clips": n, "num_failures": 0,
                 "failures": "failures.tsv", "settings": {}, "shard_clip_ids": shard_ids}
    (frames / "index_old.json").write_text(json.dumps(old_index) + "\n")
    # new: the workflow's writers (frames-index's write_index, corpus annotations/captions)
    t0 = time.perf_counter()
    write_index(frames / "index.json", shard_paths, shard_ids, [], {})
    t_index = time.perf_counter() - t0
    del shard_ids
    t0 = time.perf_counter()
    build_annotation_table(ann, root / "subtitles.arrow", frames / "index.arrow")
    t_ann = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_caption_table(cap_files, root / "captions.arrow")
    t_caps = time.perf_counter() - t0
    return {"num_shards": num_shards, "index_json_mb": (frames / "index.json").stat().st_size / 1e6,
            "old_index_json_mb": (frames / "index_old.json").stat().st_size / 1e6,
            "write_s": {"index": round(t_index, 1), "annotations": round(t_ann, 1), "captions": round(t_caps, 1)}}


# ------------------------------------------------------------------------------------------------ old path
class OldFrameIndex:
    """Reference copy of git HEAD's FrameIndex: a dict of every id, one FrameStore per shard, no LRU."""

    def __init__(self, index_json):
        from clipvip.data.frame_store import FrameStore

        self.path = Path(index_json)
        with open(self.path) as fh:
            self.index = json.load(fh)
        base = self.path.parent
        self.shard_paths = [base / p for p in self.index["shards"]]
        self._stores = [FrameStore(p) for p in self.shard_paths]
        self._where = {}
        for shard_number, ids in enumerate(self.index["shard_clip_ids"]):
            for c in ids:
                self._where[c] = shard_number

    def ids(self):
        return sorted(self._where)

    def store(self, clip_id):
        return self._stores[self._where[clip_id]]

    def failures(self):
        import pandas as pd

        return pd.DataFrame({"clip_id": [], "reason": [], "detail": [], "shard": []})


# ------------------------------------------------------------------------------------------------ measure
def _mem() -> dict:
    import psutil

    info = psutil.Process().memory_full_info()
    # Anonymous = heap/private allocations; USS also counts clean page-cache pages of the memory-mapped Arrow
    # files while only this process maps them (they turn shared as soon as workers map them too).
    anon = 0
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Anonymous:"):
                anon = int(line.split()[1]) / 1024
    return {"uss_mb": info.uss / 2**20, "pss_mb": info.pss / 2**20, "rss_mb": info.rss / 2**20, "anon_mb": anon}


def _sample(ds, rng: random.Random, count: int) -> None:
    n = len(ds)
    for _ in range(count):
        record = ds.records[rng.randrange(n)]
        ds._caption(record, np.random.default_rng(0))
        ds.frames.store(record["clip_id"])._file()  # lookup + open the shard (frames are not read)


def _h5_fds() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).endswith(".h5"))


def _worker(ds, worker_id: int, num_shards: int, queue) -> None:
    import psutil

    _sample(ds, random.Random(worker_id), SAMPLES)
    after_samples = _mem()
    for s in range(num_shards):  # one clip of every shard
        ds.frames.store(clip_id(s * SHARD_SIZE))._file()
    parent = psutil.Process(os.getppid()).memory_full_info().pss / 2**20  # main's PSS once workers share its pages
    queue.put({**after_samples, "fds": psutil.Process().num_fds(), "h5_fds": _h5_fds(), "parent_pss_mb": parent})


def measure(path: str, root: Path, num_shards: int) -> dict:
    import warnings

    from clipvip.data.annotations import read_annotations, read_captions
    from clipvip.data.datasets import PretrainDataset
    from clipvip.data.frame_store import FrameIndex

    base = _mem()
    t0 = time.perf_counter()
    if path == "old":
        index = OldFrameIndex(root / "frames/index_old.json")
        anns = read_annotations(root / "subtitles.jsonl")
        caps = read_captions(sorted((root / "captions").glob("*.jsonl")))
    else:
        index = FrameIndex(root / "frames/index.json", max_open_shards=LRU)
        anns = read_annotations(root / "subtitles.arrow")
        caps = read_captions(root / "captions.arrow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = PretrainDataset(index, anns, caps, num_frames=12, image_size=224)
    load_s = time.perf_counter() - t0
    _sample(ds, random.Random(99), SAMPLES)
    main = _mem()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(ds, w, num_shards, queue)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    workers = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return {"path": path, "load_s": round(load_s, 2), "base_uss_mb": round(base["uss_mb"], 1),
            "main_corpus_uss_mb": round(main["uss_mb"] - base["uss_mb"], 1),
            "main_corpus_anon_mb": round(main["anon_mb"] - base["anon_mb"], 1),
            "worker_anon_mb": round(max(w["anon_mb"] for w in workers), 1),
            "main_pss_with_workers_mb": round(max(w["parent_pss_mb"] for w in workers), 1),
            "main_uss_mb": round(main["uss_mb"], 1), "main_pss_mb": round(main["pss_mb"], 1),
            "worker_uss_mb": round(max(w["uss_mb"] for w in workers), 1),
            "worker_pss_mb": round(max(w["pss_mb"] for w in workers), 1),
            "worker_fds": max(w["fds"] for w in workers), "worker_h5_fds": max(w["h5_fds"] for w in workers),
            "items": len(ds)}


def run_measure(path: str, root: Path, num_shards: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--measure", path, "--root", str(root),
                           "--num-shards", str(num_shards)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measure {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_with_peak(cmd: list[str]):
    """Run ``cmd`` (from the repo), polling the RSS of its process tree; -> (CompletedProcess-like, peak MB)."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, top = 0.0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [top, *top.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


def snakemake_dry_run(root: Path, n: int) -> dict:
    import yaml

    config = {"results": str(root / "results"), "base_model": "openai/clip-vit-base-patch32",
              "demo": {"enabled": False},
              "datasets": {"big": {"video_dir": str(root / "videos"),
                                   "annotations": {"train": str(root / "subtitles.jsonl")}}},
              "captions": {"model": "Salesforce/blip-image-captioning-base"},
              "pretrain": {"enabled": True, "dataset": "big"}, "finetune": {"datasets": []}}
    overlay = root / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(config))
    (root / "videos").mkdir(exist_ok=True)
    snakemake = Path(sys.executable).with_name("snakemake")
    t0 = time.perf_counter()
    proc, peak = _run_with_peak([str(snakemake), "-n", "--quiet", "--cores", "1", "--configfile", str(overlay)])
    elapsed = time.perf_counter() - t0
    ok = proc.returncode == 0
    # The old parse step read every id of the annotation files (HEAD's dataset_clip_ids): time that alone.
    t0 = time.perf_counter()
    old = subprocess.run([sys.executable, "-c", "import sys,resource; from clipvip.frames import read_clip_ids; "
                          f"ids = read_clip_ids({str(root / 'subtitles.jsonl')!r}); "
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                         cwd=REPO, capture_output=True, text=True)
    old_s = time.perf_counter() - t0
    return {"seconds": round(elapsed, 1), "peak_mb": round(peak, 1),
            "ok": ok, "error": None if ok else (proc.stdout + proc.stderr)[-1500:],
            "old_read_ids_s": round(old_s, 1),
            "old_read_ids_peak_mb": round(int(old.stdout.strip() or 0) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1 M only")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--old-max", type=int, default=1_000_000, help="largest N to run the old path at")
    parser.add_argument("--measure", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--num-shards", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.root), args.num_shards)))
        return 0
    sizes = args.sizes or ([1_000_000] if args.quick else [1_000_000, 10_000_000])
    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus_scale_") as tmp:
        for n in sizes:
            root = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            info = write_corpus(root, n)
            print(f"N={n:,}: corpus written in {time.perf_counter() - t0:.0f} s {json.dumps(info)}", flush=True)
            for path in (["old"] if n <= args.old_max else []) + ["new"]:
                result = run_measure(path, root, info["num_shards"])
                rows.append({"n": n, **result})
                print(json.dumps(rows[-1]), flush=True)
            dry = snakemake_dry_run(root, n)
            rows.append({"n": n, "path": "snakemake -n", **dry})
            print(json.dumps(rows[-1]), flush=True)
            import shutil

            shutil.rmtree(root)
    new = [r for r in rows if r["path"] == "new"]
    print("\n| N clips | path | load s | main USS MB (corpus share) | main anon MB (corpus share) | main PSS MB "
          "(with workers) | worker USS MB | worker PSS MB | worker fds (of them .h5) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["path"] in ("old", "new"):
            print(f"| {r['n']:,} | {r['path']} | {r['load_s']} | {r['main_uss_mb']} ({r['main_corpus_uss_mb']}) | "
                  f"{r['main_corpus_anon_mb']} | {r['main_pss_mb']} ({r['main_pss_with_workers_mb']}) | "
                  f"{r['worker_uss_mb']} | {r['worker_pss_mb']} | {r['worker_fds']} ({r['worker_h5_fds']}) |")
    for r in rows:
        if r["path"] == "snakemake -n":
            print(f"snakemake -n at {r['n']:,} clips: {r['seconds']} s (ok={r['ok']}); HEAD's parse-time id read "
                  f"alone: {r['old_read_ids_s']} s, peak {r['old_read_ids_peak_mb']} MB")
    largest = max(new, key=lambda r: r["n"])
    # Private memory the corpus costs a process: the main process's anonymous (heap) memory above what it had
    # before loading (torch and the interpreter are there whatever the corpus; its USS also counts the mapped
    # Arrow pages it touched, clean page cache that forked workers share), and a forked worker's whole USS.
    def private_mb(r):
        return max(r["main_corpus_anon_mb"], r["worker_uss_mb"])

    private = private_mb(largest)
    print(f"absolute main-process USS at {largest['n']:,} clips: {largest['main_uss_mb']} MB "
          f"(before loading: {largest['base_uss_mb']} MB)")
    if len(new) > 1:
        a, b = sorted(new, key=lambda r: r["n"])[0], largest
        slope = (private_mb(b) - private_mb(a)) / (b["n"] - a["n"])
        print(f"private-memory slope (new): {slope * 1e6:.2f} MB per 1 M clips -> ~{private + slope * (1e8 - b['n']):.0f} "
              "MB per process at 100 M clips")
    dry = [r for r in rows if r["path"] == "snakemake -n"]
    dry_ok = all(r["ok"] for r in dry) and max(dry, key=lambda r: r["n"])["seconds"] <= 60  # target: largest N
    fds_ok = all(r["worker_h5_fds"] <= LRU for r in new)  # open shard files per worker
    ok = private <= 200 and dry_ok and fds_ok
    print(json.dumps({"benchmark": "corpus_scale", "value": round(private, 1),
                      "unit": f"MB private per process at {largest['n']} clips", "target": 200, "ok": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
