#!/usr/bin/env bash
# One command on a fresh machine: install tierwise with every extra (test, local models, semantic routing, lab, postgres, redis, otel)
# into ./.venv and run the full test suite. Extra arguments go to pytest (e.g. -m "not slow" for the fast loop).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
install_tierwise "test,local,semantic,lab,postgres,redis,otel"
"$VENV/bin/python" -m ruff check src tests bench scripts
# the request path (gateway, service, engine, executor, cascade, config, types), the ledger, governance and shared
# state are type-checked
"$VENV/bin/python" -m mypy --ignore-missing-imports src/tierwise/service.py src/tierwise/router.py src/tierwise/gateway \
  src/tierwise/routing/engine.py src/tierwise/routing/executor.py src/tierwise/routing/cascade.py src/tierwise/config \
  src/tierwise/types.py src/tierwise/errors.py src/tierwise/requests.py src/tierwise/pricing.py \
  src/tierwise/ledger src/tierwise/governance src/tierwise/state src/tierwise/sanitize.py src/tierwise/cli.py \
  src/tierwise/telemetry src/tierwise/apis src/tierwise/dashboard \
  src/tierwise/routing src/tierwise/lab src/tierwise/outcomes.py src/tierwise/quality_metrics.py \
  src/tierwise/cli_lab.py src/tierwise/progress.py
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
