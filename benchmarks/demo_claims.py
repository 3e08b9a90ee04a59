"""Do the demo's claims hold across corpus seeds? Runs the whole demo once per seed and aggregates.

Usage (not part of CI or `make demo`; ~3x the demo's time):
    OMP_NUM_THREADS=1 python benchmarks/demo_claims.py                       # seeds 0 1 2, results_seeds/seed<k>
    python benchmarks/demo_claims.py --seeds 0 1 2 --root /tmp/claims --cores 2
    python benchmarks/demo_claims.py --reuse 0=results                        # seed 0 = the `make demo` run

For each seed k: ``snakemake --cores N --configfile <overlay>`` with ``results: <root>/seed<k>`` and
``demo.corpus.seed: k`` (everything else is config.yaml: the demo as `make demo` runs it), then the claims of
``<root>/seed<k>/tables/demo_claims.json`` (``clipvip demo-claims``). Prints, per claim, the verdict per seed
and the mean ± std over seeds of its smallest margin (points above the claim's threshold: > 0 = holds), and
last one JSON line: ``{"benchmark": "demo_claims", "value": <claims holding on every seed>, "unit": ...,
"target": 5, "ok": value == 5}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_seed(seed: int, root: Path, cores: int) -> dict:
    results = root / f"seed{seed}"
    overlay = root / f"seed{seed}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    overlay.write_text(yaml.safe_dump({"results": str(results), "demo": {"corpus": {"seed": seed}}}))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    started = time.perf_counter()
    proc = subprocess.run([snakemake, "--cores", str(cores), "--configfile", str(overlay)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: snakemake failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    claims = json.loads((results / "tables" / "demo_claims.json").read_text())["claims"]
    print(f"seed {seed}: {sum(bool(c['holds']) for c in claims)}/5 claims hold ({seconds / 60:.1f} min)", flush=True)
    return {"seed": seed, "seconds": seconds, "claims": claims}


def reuse_seed(seed: int, results: Path) -> dict:
    """Seed ``seed``'s claims from a finished run (e.g. ``make demo``'s results for seed 0), not run again."""
    done = json.loads((results / "demo" / "DONE.json").read_text())
    if done["options"]["seed"] != seed:
        raise SystemExit(f"--reuse {seed}={results}: that run's demo corpus has seed {done['options']['seed']}")
    claims = json.loads((results / "tables" / "demo_claims.json").read_text())["claims"]
    print(f"seed {seed}: {sum(bool(c['holds']) for c in claims)}/5 claims hold (reused {results})", flush=True)
    return {"seed": seed, "seconds": None, "claims": claims}


def _reuse_arg(text: str) -> tuple[int, Path]:
    seed, _, folder = text.partition("=")
    if not seed.isdigit() or not folder:
        raise argparse.ArgumentTypeError(f"expected SEED=RESULTS_DIR, got {text!r}")
    return int(seed), Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default=str(REPO / "results_seeds"), help="one results folder per seed below it")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--reuse", type=_reuse_arg, action="append", default=[], metavar="SEED=RESULTS_DIR",
                        help="take this seed's claims from a finished run instead of running it (repeatable)")
    args = parser.parse_args(argv)
    reused = dict(args.reuse)
    runs = [reuse_seed(seed, reused[seed]) if seed in reused else run_seed(seed, Path(args.root), args.cores)
            for seed in args.seeds]
    ids = [c["id"] for c in runs[0]["claims"]]
    on_every_seed = 0
    header = " | ".join(f"seed {r['seed']}" for r in runs)
    print(f"\n| claim | {header} | margin mean ± std |")
    print("|---|" + "---|" * len(runs) + "---|")
    for k, cid in enumerate(ids):
        per_seed = [r["claims"][k] for r in runs]
        margins = np.array([np.nan if c["margin"] is None else c["margin"] for c in per_seed], dtype=float)
        verdicts = ["pass" if c["holds"] else ("n/a" if c["holds"] is None else "FAIL") for c in per_seed]
        every = all(c["holds"] for c in per_seed)
        on_every_seed += every
        print(f"| ({cid}) {per_seed[0]['claim']} | {' | '.join(verdicts)} | "
              f"{np.nanmean(margins):.1f} ± {np.nanstd(margins):.1f} |")
        for r, c in zip(runs, per_seed):
            print(f"|   seed {r['seed']}: {c['numbers']} |")
    print(json.dumps({"benchmark": "demo_claims", "value": on_every_seed,
                      "unit": f"claims holding on all {len(runs)} seeds (of {len(ids)})", "target": len(ids),
                      "ok": on_every_seed == len(ids)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
