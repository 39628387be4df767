#!/usr/bin/env bash
# A replica of the Python stack in AWS's prebuilt PyTorch inference image that deploys use by default
# (pytorch-inference:2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker): its Python, torch, torchvision, TorchServe,
# SageMaker's inference toolkit, and the 2025 packaging tools it was built with (the toolkit imports pkg_resources,
# which setuptools 81 removed). PyPI's torch 2.6.0 for Linux x86_64 is a CUDA build; it runs on the CPU here.
#
#   bash tests/prebuilt/install-replica.sh VENV_DIR
set -euo pipefail
target=${1:?usage: bash tests/prebuilt/install-replica.sh VENV_DIR}

# The image's Python is 3.12: the code package's wheels are built for it.
python=""
for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "install-replica.sh: no Python 3.12 here; the prebuilt image runs 3.12 and the code package ships cp312 wheels" >&2
  exit 2
fi

# TorchServe's frontend is Java (the image has OpenJDK 17)
if ! java -version 2>&1 | grep -q 'version "17'; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ ! -x "$target/bin/python" ]; then
  "$python" -m venv "$target"
fi
pip_install() { "$target/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
pip_install "pip==25.1.1" "setuptools==80.9.0" "wheel==0.45.1"
pip_install torch==2.6.0 torchvision==0.21.0 torchserve==0.12.0 torch-model-archiver==0.12.0 \
  sagemaker-pytorch-inference==2.0.25 \
  numpy==2.2.6 scipy==1.15.3 pillow==11.2.1 boto3==1.38.0 pyyaml==6.0.2 requests==2.32.4 tqdm==4.67.1 \
  packaging==25.0 psutil==7.0.0
echo "install-replica.sh: $target ready ($("$target/bin/python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
