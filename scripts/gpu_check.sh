#!/usr/bin/env bash
# The GPU check: the CUDA/NCCL/bf16 path that no CPU test executes, on one GPU, in under 8 minutes.
#
# Usage: bash scripts/gpu_check.sh [--out DIR] [--dry-run]
#
#   1. pytest -m gpu tests/test_gpu.py    NCCL ZeRO-2 bf16 training + resume, fused-kernel attention, evaluate/captions
#   2. benchmarks/gpu_train_step.py       clips/s, step time, peak memory, MFU; ViP / MeanPool ratio
#   3. benchmarks/input_pipeline.py       the frame store at GPU-host worker counts (8 and 16 workers)
#
# Writes into DIR (default $OUT, else /tmp/gpu_check): gpu_check.jsonl (one JSON object per step, then a
# summary line), gpu_check.log (everything), junit.xml, gpu_train_step.json.
# The GPU machine is offline: the wheels that scripts/prepare_gpu_wheels.sh put into .whl/ are installed
# with --no-index --no-deps into a temp --target folder that goes first on PYTHONPATH.
# --dry-run: every step on this CPU machine with the local venv's python (no wheels): pytest reports skips,
# the benchmark runs its tiny CPU config for 2 steps, the input pipeline runs --quick with 2 workers.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
DEST=${OUT:-/tmp/gpu_check}
while [ $# -gt 0 ]; do
    case "$1" in
        --out) DEST=$2; shift 2 ;;
        --out=*) DEST=${1#--out=}; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n 2,17p "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
JSONL=$DEST/gpu_check.jsonl
LOG=$DEST/gpu_check.log
: > "$JSONL"
: > "$LOG"
START=$(date +%s)

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }
record() { echo "$1" >> "$JSONL"; echo "$1" | tee -a "$LOG"; }

if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    export CUDA_VISIBLE_DEVICES=""   # the CPU path even where a GPU exists
    BENCH_ARGS="--dry-run"
    PIPE_WORKERS="2"
else
    PY=${PYTHON:-python3}
    SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
        log "installing $(ls "$ROOT"/.whl/*.whl | wc -l) wheels into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.whl/*.whl >>"$LOG" 2>&1 \
            || log "WARNING: pip install of the wheels failed (see the log)"
    else
        log "WARNING: no wheels in .whl/ (run scripts/prepare_gpu_wheels.sh on a machine with internet)"
    fi
    export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
    export PATH=$SITE/bin:$PATH
    BENCH_ARGS="--steps 5"
    PIPE_WORKERS="8 16"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_BUILD_OPS=0 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$DEST/torch_extensions}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# 0. what this machine has (a missing module explains a failure below at a glance)
record "$("$PY" - <<'PYEOF' 2>>"$LOG" | tail -1
import importlib, json, os, platform
mods = ["torch", "deepspeed", "transformers", "h5py", "numpy", "pandas", "pyarrow", "av", "decord", "simplejpeg",
        "submitit", "jsonschema", "tqdm", "yaml", "pytest", "clipvip"]
found = {}
for m in mods:
    try:
        mod = importlib.import_module(m)
        found[m] = getattr(mod, "__version__", "yes")
    except Exception as exc:  # noqa: BLE001
        found[m] = f"MISSING ({type(exc).__name__}: {str(exc)[:80]})"
info = {"step": "preflight", "python": platform.python_version(), "modules": found}
try:
    import torch
    info.update(cuda=torch.cuda.is_available(), torch_cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                nccl=".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
                bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), cpus=len(os.sched_getaffinity(0)))
except Exception as exc:  # noqa: BLE001
    info["torch_error"] = str(exc)[:200]
print(json.dumps(info))
PYEOF
)"  # (imports may print warnings on stdout: the JSON is the last line)

# 1. the GPU tests
log "step 1: pytest -m gpu tests/test_gpu.py"
t0=$(date +%s)
timeout 300 "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider --junitxml="$DEST/junit.xml" >>"$LOG" 2>&1
rc=$?
record "$("$PY" - "$DEST/junit.xml" "$rc" "$(($(date +%s) - t0))" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
path, rc, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    counts["failed_tests"] = failed
except Exception as exc:  # noqa: BLE001
    counts["junit_error"] = str(exc)[:200]
print(json.dumps({"step": "pytest_gpu", "rc": rc, "seconds": secs, **counts, "ok": rc == 0}))
PYEOF
)"

# 2. the training-step benchmark
log "step 2: benchmarks/gpu_train_step.py $BENCH_ARGS"
t0=$(date +%s)
timeout 200 "$PY" benchmarks/gpu_train_step.py $BENCH_ARGS --out "$DEST/gpu_train_step.json" >"$DEST/gpu_train_step.out" 2>>"$LOG"
rc=$?
cat "$DEST/gpu_train_step.out" >> "$LOG"
last=$(grep '"benchmark": "gpu_train_step"' "$DEST/gpu_train_step.out" | tail -1)
record "{\"step\": \"gpu_train_step\", \"rc\": $rc, \"seconds\": $(($(date +%s) - t0)), \"result\": ${last:-null}}"

# 3. the input pipeline at GPU-host worker counts (its baseline decodes with decord)
if ! "$PY" -c "import decord" >/dev/null 2>&1; then
    record '{"step": "input_pipeline", "skipped": "decord is not installed (scripts/prepare_gpu_wheels.sh with WITH_DECORD=1 ships it, +13.6 MB)"}'
    PIPE_WORKERS=""
fi
for w in $PIPE_WORKERS; do
    log "step 3: benchmarks/input_pipeline.py --quick --workers $w --normalise-on-device"
    t0=$(date +%s)
    timeout 120 "$PY" benchmarks/input_pipeline.py --quick --workers "$w" --normalise-on-device \
        >"$DEST/input_pipeline_$w.out" 2>>"$LOG"
    rc=$?
    cat "$DEST/input_pipeline_$w.out" >> "$LOG"
    last=$(grep '"benchmark": "input_pipeline"' "$DEST/input_pipeline_$w.out" | tail -1)
    record "{\"step\": \"input_pipeline\", \"workers\": $w, \"rc\": $rc, \"seconds\": $(($(date +%s) - t0)), \"result\": ${last:-null}}"
done

record "{\"step\": \"summary\", \"dry_run\": $([ "$DRY" = 1 ] && echo true || echo false), \"seconds\": $(($(date +%s) - START)), \"out\": \"$DEST\"}"
[ "$DRY" = 1 ] || rm -rf "$SITE"
