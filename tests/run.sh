#!/usr/bin/env bash
# The test command: Chromium for the browser tests, a venv with the pinned test environment,
# the Python 3.10 syntax check, then pytest. Offline apart from the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-test.txt
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m pytest "$@"
