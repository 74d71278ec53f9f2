#!/usr/bin/env bash
# Creates (or reuses) the virtual environment MONAI Label runs in. This project is not installed into it: the app
# serves the exported bundle, which carries the package code (scripts/monailabel_app.sh). Prints the environment's
# path on the last line.
#
#   bash scripts/monailabel_env.sh [VENV]        (default: $MONAILABEL_VENV or .venv-monailabel in the repo)
#
# It has to be its own environment: monailabel 0.8.5 pins numpy < 2, and torchvision (imported at server start-up)
# only has wheels for the full torch build, so the CPU-only torch of the project's environment cannot be used. The
# full build downloads about 8 GB (CUDA libraries included) and runs on CPU as well.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-${MONAILABEL_VENV:-$repo/.venv-monailabel}}
python=${PYTHON:-python3}

if [ -x "$venv/bin/monailabel" ] && "$venv/bin/python" -c "import monailabel, torchvision" 2>/dev/null; then
    echo "$venv"
    exit 0
fi
"$python" -m venv "$venv"
# A machine-wide pip find-links or config may point at a CPU-only torch wheel of the same version; ignore both so the
# full build that torchvision links against is installed.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --upgrade pip
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install -r "$repo/scripts/monailabel-requirements.txt"
"$venv/bin/python" -c "import monailabel, torchvision"
echo "$venv"
