#!/usr/bin/env bash
# Installs the inference server into one Python: its dependencies (container/requirements.txt, the `serve`
# extra), then this repository's package. The Dockerfile and CI both run it; a second run is
# quick (everything is already satisfied).
#
#   bash container/install.sh PYTHON_OR_VENV_DIR
#
# PYTHON_OR_VENV_DIR   a Python command or path (python, /usr/bin/python3), or a venv folder (created if missing)
# TORCH_SPEC           pip arguments for torch, installed first (CI: torch==2.13.0). Unset, that Python must already
#                      have torch (the image's CUDA build). Either way pip is then held to the installed torch.
# INSTALL_EDITABLE=1   install the package editable (-e), for development and CI
# INSTALL_PACKAGE=0    dependencies only (the Dockerfile's cached layer)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
target=${1:?usage: bash container/install.sh PYTHON_OR_VENV_DIR}

if [ -d "$target" ]; then
  python="$target/bin/python"
elif command -v "$target" >/dev/null 2>&1; then
  python=$(command -v "$target")
else
  python3 -m venv "$target"
  python="$target/bin/python"
fi
if [ ! -x "$python" ]; then
  echo "install.sh: $target is neither a Python nor a venv folder" >&2
  exit 2
fi

pip_install() { "$python" -m pip install -q --disable-pip-version-check "$@"; }

# Recent CUDA images mark their system Python "externally managed" (PEP 668); installing into it is their purpose.
if "$python" -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)'; then
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi

if [ -n "${TORCH_SPEC:-}" ]; then
  # shellcheck disable=SC2086  # several pip arguments are allowed (e.g. an --index-url)
  echo "install.sh: installing $TORCH_SPEC into $target (a first install downloads it: a few minutes)"
  pip_install $TORCH_SPEC
fi
if ! torch_version=$("$python" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null); then
  echo "install.sh: $python has no torch: set TORCH_SPEC (e.g. TORCH_SPEC=torch==2.13.0)" >&2
  exit 2
fi

# The installed torch (and torchvision, if any) as constraints: pip fails rather than replace a CUDA build.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" >"$constraints"
if vision=$("$python" -c 'from importlib.metadata import version; print(version("torchvision"))' 2>/dev/null); then
  echo "torchvision==$vision" >>"$constraints"
fi

echo "install.sh: installing the server's requirements (diffusers, transformers, peft, accelerate...) beside torch $torch_version"
pip_install -c "$constraints" -r "$here/requirements.txt"

if [ "${INSTALL_PACKAGE:-1}" != 0 ]; then
  if [ "${INSTALL_EDITABLE:-0}" = 1 ]; then
    pip_install --no-deps -e "$repo"
  else
    pip_install --no-deps --force-reinstall "$repo"
  fi
fi
echo "install.sh: $python ready (torch $torch_version)"
