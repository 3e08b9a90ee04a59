#!/usr/bin/env bash
# Prepare, on a CPU machine with internet, the cp312 manylinux wheels that the offline GPU check machine lacks.
#
# Usage: bash scripts/prepare_gpu_wheels.sh [DEST]        (DEST defaults to .whl/, git-ignored)
#
# The GPU machine has Python 3.12 with torch, transformers, h5py, numpy and pandas, nothing else of ours and
# no network: scripts/gpu_check.sh installs these wheels with --no-index --no-deps into a temp --target.
# Binary packages are downloaded as cp312 manylinux wheels (versions pinned to this venv's / the constraints
# file's); DeepSpeed is a pure-Python sdist whose wheel is built here with DS_BUILD_OPS=0 (no CUDA ops: the
# trainer uses torch's fused AdamW, no JIT op is needed). snakemake is not shipped: the GPU check does not
# run the workflow. Total about 44 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$DEST"

# Version of a package: the constraints file first, else this venv's installed version.
version() {
    local pinned
    pinned=$(grep -i -E "^$1==" requirements/constraints.txt 2>/dev/null | head -1 | cut -d= -f3 || true)
    if [ -n "$pinned" ]; then echo "$pinned"; return; fi
    "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

# deepspeed's runtime requirements + the project's imports the GPU machine lacks + pytest (the check runs it).
# decord (13.6 MB) is left out unless WITH_DECORD=1: the GPU check writes its frame stores directly, it decodes
# no video. av (36 MB) is needed: tests/conftest.py and `clipvip captions` import clipvip.video_io.
# pyarrow, scikit-learn and psutil are already on the GPU machine (device KINDS.md); faiss is not needed there.
BINARY="simplejpeg av msgpack psutil pydantic_core pyyaml rpds-py ninja${WITH_DECORD:+ decord}"
PURE="einops hjson py-cpuinfo pydantic annotated-types typing-inspection typing-extensions tqdm submitit cloudpickle
      jsonschema jsonschema-specifications referencing attrs tabulate pytest pluggy iniconfig packaging pygments"

specs=()
for name in $BINARY $PURE; do
    specs+=("$name==$(version "$name")")
done
echo "[prepare_gpu_wheels] downloading: ${specs[*]}" >&2
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform any -d "$DEST" "${specs[@]}"

DS=deepspeed==$(version deepspeed)
if ! ls "$DEST"/deepspeed-*.whl >/dev/null 2>&1; then
    echo "[prepare_gpu_wheels] building $DS (DS_BUILD_OPS=0)" >&2
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$DS" \
        || DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$DEST" "$DS"
fi
ls -la "$DEST" >&2
du -sh "$DEST"
