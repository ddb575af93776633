#!/usr/bin/env bash
# DRY_RUN=1 deploy/gcp/teardown.sh   print what would be deleted.
# deploy/gcp/teardown.sh             delete the Cloud Run service and the Artifact Registry repository
#                                    (with every image in it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

settings=$("$PYTHON" -m {{ cookiecutter.package_name }}.deploy.gcp settings --project {{ cookiecutter.project_slug }})
eval "$settings"
run gcloud run services delete "$CLOUD_RUN_SERVICE" --region "$GCP_REGION" --project "$GCP_PROJECT_ID" --quiet
run gcloud artifacts repositories delete "$GAR_REPOSITORY" --location "$GCP_REGION" --project "$GCP_PROJECT_ID" --quiet
