#!/usr/bin/env bash
# The test command: Chromium for the browser tests, a venv with the pinned test environment, the Python 3.10
# syntax check, then pytest: the tab's environment, then the inference server's. Offline but for package registries.
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
# The inference server runs in its own environment, made by the container image's install script
# (CPU torch here; the image's base has CUDA torch), and its tests run there.
SERVE_VENV=${SERVE_VENV:-.venv-serve}
case "$SERVE_VENV" in /*) ;; *) SERVE_VENV="$PWD/$SERVE_VENV" ;; esac
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0} INSTALL_EDITABLE=1 bash container/install.sh "$SERVE_VENV"
"$SERVE_VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-serve-test.txt
# the emulator's local endpoints (and the tab's Generate tests) start inference servers with this Python
export SD_SAGEMAKER_SERVE_PYTHON=${SD_SAGEMAKER_SERVE_PYTHON:-$SERVE_VENV/bin/python}
"$VENV/bin/python" -m pytest --ignore=tests/serve "$@"
"$SERVE_VENV/bin/python" -m pytest --confcutdir=tests/serve tests/serve "$@"
