#!/usr/bin/env bash
# The test command: a venv with the pinned test environment, the Python 3.10 syntax check, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-test.txt
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m pytest "$@"
