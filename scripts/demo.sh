#!/usr/bin/env bash
# Set everything up, then run the demo migrations against local servers this starts itself.
# Pass --keep-running to keep PostgreSQL, fakesnow and the Prefect UI up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devstack.demo "$@"
