#!/usr/bin/env bash
# DRY_RUN=1 deploy/gcp/teardown.sh   print what would be deleted.
# deploy/gcp/teardown.sh             delete the Cloud Run service and the Artifact Registry repository
#                                    (with every image in it) when deploy.sh created it (its label says so).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

settings=$("$PYTHON" -m {{ cookiecutter.package_name }}.clouds.gcp.deploy settings --project {{ cookiecutter.project_slug }})
eval "$settings"
run gcloud run services delete "$CLOUD_RUN_SERVICE" --region "$GCP_REGION" --project "$GCP_PROJECT_ID" --quiet
# A repository that existed before the first deploy (GAR_REPOSITORY may name a shared one) is not ours to delete.
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "# the repository only when its label is created-by=deploy-gcp (deploy.sh created it):"
    run gcloud artifacts repositories delete "$GAR_REPOSITORY" --location "$GCP_REGION" --project "$GCP_PROJECT_ID" --quiet
elif [[ "$(gcloud artifacts repositories describe "$GAR_REPOSITORY" --location "$GCP_REGION" \
    --project "$GCP_PROJECT_ID" --format 'value(labels.created-by)' 2>/dev/null || true)" == deploy-gcp ]]; then
    gcloud artifacts repositories delete "$GAR_REPOSITORY" --location "$GCP_REGION" --project "$GCP_PROJECT_ID" --quiet
else
    echo "kept Artifact Registry repository $GAR_REPOSITORY: not found, or deploy.sh did not create it" \
        "(no label created-by=deploy-gcp); delete its images yourself if they are no longer needed"
fi
