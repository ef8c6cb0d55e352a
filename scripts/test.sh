#!/usr/bin/env bash
# Sets everything up, then runs the linters, the docs build (warnings are errors), the
# wheel check (scripts/check_wheel.sh) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/install_chromium.sh  # the HTML report is tested in headless chromium
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet
scripts/check_wheel.sh
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
