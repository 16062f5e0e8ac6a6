#!/usr/bin/env bash
# Installs everything (apt packages, venv) and runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hil/bootstrap.sh
.venv/bin/ruff check agent drivers buffer hil tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
