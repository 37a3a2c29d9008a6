#!/usr/bin/env bash
# make gpu-rehearsal: scripts/gpu_evidence.sh --rehearse (tiny sizes, CPU) in a fresh Python 3.12 venv that
# holds only the GPU image's packages (scripts/gpu_image.txt, from the registry): everything else must come
# from the bundle, as on the GPU machine. A part that fails or does not finish fails the rehearsal.
#
#   scripts/gpu_rehearsal.sh [OUT]      (default runs/gpu-rehearsal; PYTHON312 names the interpreter)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/runs/gpu-rehearsal}
VENV=${GPU_IMAGE_VENV:-$ROOT/.venv-gpu-image}
IMAGE=$ROOT/scripts/gpu_image.txt
python312=""
# A pyenv shim named python3.12 exists even where it cannot run: each candidate must answer.
for candidate in ${PYTHON312:-} "$(command -v python3.12 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    if [[ -n $candidate ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2> /dev/null; then
        python312=$candidate
        break
    fi
done
if [[ -z $python312 ]]; then
    echo "error: no Python 3.12 found (the GPU image's version): install one or set PYTHON312" >&2
    exit 2
fi
if [[ ! -f $VENV/.image-done || $IMAGE -nt $VENV/.image-done ]]; then
    echo "== a Python 3.12 venv with the GPU image's packages: $VENV"
    rm -rf "$VENV"
    "$python312" -m venv "$VENV"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$IMAGE" > "$VENV/install.log" 2>&1; then
        tail -20 "$VENV/install.log" >&2; echo "error: installing the GPU image's packages failed (log: $VENV/install.log)" >&2; exit 1
    fi
    touch "$VENV/.image-done"
fi
rm -rf "$OUT" "$OUT.work"
start=$(date +%s)
PYTHON=$VENV/bin/python bash "$ROOT/scripts/gpu_evidence.sh" --rehearse "$OUT"
echo "== rehearsal passed in $(( $(date +%s) - start )) s: $OUT/summary.md"
