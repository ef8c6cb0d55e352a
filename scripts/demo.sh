#!/usr/bin/env bash
# Sets everything up and runs the seed tutorials' scenarios end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/opbridge demo "$@"
