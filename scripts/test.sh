#!/usr/bin/env bash
# Set everything up, then run the whole test suite against servers the suite starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
