#!/usr/bin/env bash
# One command on a fresh machine: install tierwise with every extra (test, local models, semantic routing, lab)
# into ./.venv and run the full test suite. Extra arguments go to pytest (e.g. -m "not slow" for the fast loop).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
install_tierwise "test,local,semantic,lab"
"$VENV/bin/python" -m ruff check src tests bench scripts
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
