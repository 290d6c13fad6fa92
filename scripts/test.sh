#!/usr/bin/env bash
# One command on a fresh machine: install tierwise with every extra (test, local models, semantic routing, lab, postgres, redis, otel)
# into ./.venv and run the full test suite. Extra arguments go to pytest (e.g. -m "not slow" for the fast loop).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
install_tierwise "test,local,semantic,lab,postgres,redis,otel"
"$VENV/bin/python" -m ruff check src tests bench scripts
# the whole package is type-checked
"$VENV/bin/python" -m mypy --ignore-missing-imports src/tierwise
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
