#!/usr/bin/env bash
# Runs every benchmark; each prints ratios measured side by side in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in benchmarks/bench_*.py; do
    echo "== $bench"
    .venv/bin/python "$bench"
done
