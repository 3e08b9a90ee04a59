#!/usr/bin/env bash
# Runs once inside the fresh conda env (snakemake --sdm conda), from the workflow's working directory:
# install this checkout's package without touching the pinned dependencies.
set -euo pipefail
pip install --no-deps -e "${CLIPVIP_ROOT:-$PWD}"
