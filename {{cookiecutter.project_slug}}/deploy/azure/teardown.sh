#!/usr/bin/env bash
# DRY_RUN=1 deploy/azure/teardown.sh   print what would be deleted.
# deploy/azure/teardown.sh             delete the online endpoint (with its deployment) and the image
#                                      repository in the container registry; both are kept when the
#                                      endpoint is not one `make deploy` created.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
azure_py() {  # python -m <package>.clouds.azure.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.azure.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

settings=$(azure_py settings)
eval "$settings"
# Exit status 3: the endpoint is not one `make deploy` created, so its image repository is not ours either.
status=0
azure_py down "$([[ "${DRY_RUN:-0}" == 1 ]] && echo --dry-run || echo --no-dry-run)" || status=$?
if [[ $status == 3 ]]; then exit 0; elif [[ $status != 0 ]]; then exit "$status"; fi
run az acr repository delete --name "$AZURE_ACR_NAME" --repository {{ cookiecutter.project_slug }} --yes
