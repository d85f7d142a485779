#!/usr/bin/env bash
# Create .venv and install keras_optx with every backend (CPU builds) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements/pinned.txt
.venv/bin/pip install -q --no-deps -e .
