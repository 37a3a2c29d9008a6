#!/usr/bin/env bash
# Creates .venv and installs everything visiontrain needs, system packages included.
# Idempotent: re-running only installs what is missing. Called by `make setup`.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
# FFCV compiles against libjpeg-turbo and OpenCV (found through pkg-config);
# the SLURM tests run a real single-node cluster from slurm-wlm and munge.
SYSTEM_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config slurm-wlm munge)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing system packages: ${missing[*]}" >&2
        echo "setup: install them first:  sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Keep the log readable: some pip configurations name local indexes that do not exist.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
}

# torch first: deepspeed and ffcv are built against the torch/numpy already in the venv.
pip_install --upgrade pip setuptools wheel
pip_install 'torch>=2.4,<3' 'torchvision>=0.19,<1' 'numpy>=1.26' 'numba>=0.60' \
    'opencv-python-headless>=4.8' pkgconfig cython ninja
# Both read torch or numpy in their setup.py, so they must see the venv's packages.
"$VENV/bin/python" -c "import deepspeed" 2>/dev/null ||
    pip_install --no-build-isolation 'deepspeed>=0.16,<1'
"$VENV/bin/python" -c "import ffcv" 2>/dev/null ||
    pip_install --no-build-isolation 'ffcv>=1.0.2,<2'
pip_install -e '.[test]'
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
