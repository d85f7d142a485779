#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite once per Keras backend, one process each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
for backend in jax torch tensorflow; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || status=1
done
exit $status
