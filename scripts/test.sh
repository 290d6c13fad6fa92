#!/usr/bin/env bash
# One command on a fresh machine: install tierwise with every extra (test, local models, semantic routing, lab)
# into ./.venv and run the full test suite. Extra arguments go to pytest (e.g. -m "not slow" for the fast loop).
# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 only for the multi-replica tests (.ci/run
# starts them when they are down).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test,local,semantic,lab]"
PYTHON="$VENV/bin/python" bash scripts/install-local-models.sh
"$VENV/bin/python" -m ruff check src tests bench scripts
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
