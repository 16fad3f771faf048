#!/usr/bin/env bash
# Makes .venv-frameworks: Ray and Dask, pinned, in an environment of their own (they pin
# dependencies of their own), for the throughput benchmark's baseline (bench/frameworks.py).
# Not needed by workgen or its tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
env=.venv-frameworks
if [ ! -x "$env/bin/python" ] || [ ! -f "$env/.installed" ]; then
  "$python" -m venv "$env"
  "$env/bin/python" -m pip install -q --disable-pip-version-check "ray==2.60.0" \
    "dask[distributed]==2026.8.0"
  touch "$env/.installed"
fi
