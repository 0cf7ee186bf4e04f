#!/usr/bin/env bash
# Set up (idempotent) and run the example app: `corral up examples/shop`.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/corral up "${@:-examples/shop}"
