# Sourced by run.sh and test.sh: create ./.venv (or $VENV) if needed and install tierwise with the given extras
# plus the two local models. Sets VENV.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
install_tierwise() {  # $1: extras, e.g. "local,semantic"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$1]"
  PYTHON="$VENV/bin/python" bash scripts/install-local-models.sh
}
