#!/usr/bin/env bash
# DRY_RUN=1 deploy/gcp/deploy.sh   (or DRY_RUN=1 make deploy): print every command, create nothing.
# deploy/gcp/deploy.sh             bundle the model, build + push the image to Artifact Registry, render
#                                  build/service.yaml and apply it to Cloud Run. See README.md here.
# Settings: GCP_* / GAR_* / CLOUD_RUN_* / IMAGE_TAG from the environment or .env (.env.example documents them);
# MODEL picks the model (default: the registry's champion, else the newest outputs/<run>).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
gcp_py() {  # python -m <package>.clouds.gcp.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.gcp.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}
MODEL=${MODEL:-models:/{{ cookiecutter.project_slug }}@champion}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

# 1. Every variable checked before anything is created; exits 2 naming each missing or placeholder one.
settings=$(gcp_py settings)  # a plain assignment, so set -e stops here on a bad setting
eval "$settings"

# 2. The model the image will carry: build/model (adapter + base + config); the build options of step 3.
bundle=(--model "$MODEL" --fallback latest --out build/model)
image=(--platform linux/amd64 --target bundled --tag "$IMAGE_URI")
# >>> llama_cpp
if [[ "$DEPLOY_BACKEND" == llama.cpp ]]; then  # make deploy BACKEND=llama.cpp: serve the GGUF export
    bundle+=(--gguf "$DEPLOY_GGUF_TYPE")  # exit 2 here, before anything is built, when there is none
    image+=(--build-arg LLAMA_CPP=1)  # llama-cpp-python in the image
fi
# <<< llama_cpp
run "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.bundle "${bundle[@]}"

# 3. The image, with the model, for Cloud Run's x86 instances.
run docker build "${image[@]}" .

# 4. The Artifact Registry repository (created when missing), docker credentials for it, the push.
# The label marks it as made here: teardown.sh deletes only a labelled repository, never a shared one.
if [[ "${DRY_RUN:-0}" == 1 ]] || ! gcloud artifacts repositories describe "$GAR_REPOSITORY" \
    --location "$GCP_REGION" --project "$GCP_PROJECT_ID" >/dev/null 2>&1; then
    run gcloud artifacts repositories create "$GAR_REPOSITORY" --repository-format docker \
        --location "$GCP_REGION" --project "$GCP_PROJECT_ID" --labels created-by=deploy-gcp
fi
run gcloud auth configure-docker "$GAR_HOST" --quiet
run docker push "$IMAGE_URI"

# 5. The service: the manifest (image, port, CPU/memory, scaling, probes), applied as a whole.
run "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.gcp.deploy manifest --project {{ cookiecutter.project_slug }} \
    --out build/service.yaml
run gcloud run services replace build/service.yaml --region "$GCP_REGION" --project "$GCP_PROJECT_ID"
if [[ "$CLOUD_RUN_ALLOW_UNAUTHENTICATED" == true ]]; then
    run gcloud run services add-iam-policy-binding "$CLOUD_RUN_SERVICE" --member allUsers \
        --role roles/run.invoker --region "$GCP_REGION" --project "$GCP_PROJECT_ID"
fi
run gcloud run services describe "$CLOUD_RUN_SERVICE" --region "$GCP_REGION" --project "$GCP_PROJECT_ID" \
    --format 'value(status.url)'
