#!/usr/bin/env bash
# The test command: Chromium for the browser tests, a venv with the pinned test environment, the Python 3.10
# syntax check, then pytest: the tab's environment, the inference server's, and the server on a replica of AWS's
# prebuilt image's stack. Offline but for package registries (while installing). Every suite runs; the failures
# are listed together at the end.
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
# The inference server runs in its own environment, made by the container image's install script
# (CPU torch here; the image's base has CUDA torch), and its tests run there.
SERVE_VENV=${SERVE_VENV:-.venv-serve}
case "$SERVE_VENV" in /*) ;; *) SERVE_VENV="$PWD/$SERVE_VENV" ;; esac
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0} INSTALL_EDITABLE=1 bash container/install.sh "$SERVE_VENV"
"$SERVE_VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-serve-test.txt
# AWS's prebuilt image (Python 3.12, torch 2.6, TorchServe on Java 17) and the wheels its code package ships
# (a machine without them still runs the other suites, and the run fails at the end)
failed=()
REPLICA_VENV=${REPLICA_VENV:-.venv-replica}
case "$REPLICA_VENV" in /*) ;; *) REPLICA_VENV="$PWD/$REPLICA_VENV" ;; esac
export SD_SAGEMAKER_WHEEL_CACHE=${SD_SAGEMAKER_WHEEL_CACHE:-$PWD/.cache/wheels}
replica=yes
bash tests/prebuilt/install-replica.sh "$REPLICA_VENV" && "$VENV/bin/python" -m aws_extension.core.endpoints.wheels \
  || { replica=no; failed+=("installing the prebuilt image's replica or the code package's wheels"); }

"$VENV/bin/python" -m ruff check .
# the emulator's local endpoints (and the tab's Generate tests) start inference servers with this Python
export SD_SAGEMAKER_SERVE_PYTHON=${SD_SAGEMAKER_SERVE_PYTHON:-$SERVE_VENV/bin/python}
export SD_SAGEMAKER_REPLICA_PYTHON=$REPLICA_VENV/bin/python
set +e
"$VENV/bin/python" -m pytest --ignore=tests/serve --ignore=tests/prebuilt "$@" || failed+=("the tab's suite (tests/)")
"$SERVE_VENV/bin/python" -m pytest --confcutdir=tests/serve tests/serve "$@" || failed+=("the server's suite (tests/serve)")
if [ "$replica" = yes ]; then
  "$SERVE_VENV/bin/python" -m pytest --confcutdir=tests/prebuilt tests/prebuilt "$@" \
    || failed+=("the prebuilt image's suite (tests/prebuilt)")
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "All suites passed."
