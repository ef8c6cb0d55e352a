#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs opbridge into it, with its kernel host and
# its prebuilt shipped kernels. Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$python" --version 2>&1)"
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=77" wheel
# Tested with torch 2.13.0 (CPU); installing it first keeps pip from looking at other
# builds (unpinned torch resolves to multi-GB CUDA wheels).
echo "setup: installing torch 2.13.0 (CPU) ..."
.venv/bin/python -m pip install --quiet "torch==2.13.0"
echo "setup: installing opbridge${extras:+ [$extras]}; compiling its kernel host and shipped kernels takes about a minute ..."
start=$SECONDS
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install --quiet -e ".[${extras}]"
else
    .venv/bin/python -m pip install --quiet -e .
fi
echo "setup: done in $((SECONDS - start))s ($(.venv/bin/opbridge --version))"
