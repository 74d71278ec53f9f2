#!/usr/bin/env bash
# Makes a MONAI Label app serving this bundle: MONAI Label's own `monaibundle` sample app, with the bundle copied
# (not linked: training from MONAI Label writes models/model.pt) to <app>/model/refineformer3d.
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
[ -f "$repo/bundle/models/model.pt" ] || { echo "no weights at $repo/bundle/models/model.pt" >&2; exit 2; }

mkdir -p "$app"
cp -r "$sample"/. "$app"/
rm -rf "$app/model/refineformer3d"
mkdir -p "$app/model/refineformer3d/models"
cp -r "$repo/bundle/configs" "$repo/bundle/docs" "$repo/bundle/LICENSE" "$app/model/refineformer3d/"
cp "$repo/bundle/models/model.pt" "$app/model/refineformer3d/models/"
echo "$app"
