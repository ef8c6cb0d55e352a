#!/usr/bin/env bash
# Sets everything up and runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/install_chromium.sh  # the HTML report is tested in headless chromium
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
