#!/usr/bin/env bash
# System packages the project needs (Debian): ffmpeg for the edit-list test and the extraction baseline.
# Idempotent; skips apt entirely when everything is present.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
# headless Chromium: the report test opens `snakemake --report` and checks the gallery images load
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
