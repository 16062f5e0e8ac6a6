#!/usr/bin/env bash
# Installs everything (apt packages, venv) and runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hil/bootstrap.sh
.venv/bin/ruff check agent drivers buffer hil tests bench
# Two workers, one test file per worker at a time (module fixtures such as the browser test's
# agent run are shared by the tests of their file). PYTEST_WORKERS=0 runs in one process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile \
    --durations=15 tests "$@"
