#!/usr/bin/env bash
# Set up (scripts/setup.sh), then build the documentation site into a folder (default: site/), warnings as
# errors. The build executes the tutorials and runs `python -m keras_optx.gallery` on the torch backend
# (KERAS_OPTX_DOCS_BACKEND=jax|tensorflow to change it); it makes no network access.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DISABLE_MKDOCS_2_WARNING=true .venv/bin/python -m mkdocs build --strict -d "${1:-site}"
echo "site: $(pwd)/${1:-site}/index.html"
