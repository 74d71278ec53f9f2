#!/usr/bin/env bash
# Makes a MONAI Label app serving this bundle: MONAI Label's own `monaibundle` sample app, with the bundle exported
# (python -m refineformer3d.export_bundle; a copy, as training from MONAI Label writes models/model.pt) to
# <app>/model/refineformer3d.
#
#   bash scripts/monailabel_app.sh APP_DIR [VENV]     (VENV default: $MONAILABEL_VENV or .venv-monailabel)
#
# then serve a folder of 4-D studies (python -m refineformer3d.data.studies makes one) offline:
#   VENV/bin/monailabel start_server --app APP_DIR --studies STUDIES_DIR \
#       --conf models refineformer3d --conf zoo_source github --conf sam2 false
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
app=${1:?usage: monailabel_app.sh APP_DIR [VENV]}
venv=${2:-${MONAILABEL_VENV:-$repo/.venv-monailabel}}
sample="$venv/monailabel/sample-apps/monaibundle"
[ -d "$sample" ] || { echo "no MONAI Label sample app at $sample; run scripts/monailabel_env.sh first" >&2; exit 2; }
mkdir -p "$app"
cp -r "$sample"/. "$app"/
rm -rf "$app/model/refineformer3d"
# The self-contained export (package code inside the bundle folder, which MONAI Label puts on sys.path): MONAI
# Label's environment needs no install of this project. export_bundle imports only the standard library.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
PYTHONPATH="$repo" "$venv/bin/python" -m refineformer3d.export_bundle "$staging" --no-zip >/dev/null
mv "$staging/refineformer3d_brats_segmentation" "$app/model/refineformer3d"
echo "$app"
