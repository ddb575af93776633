#!/usr/bin/env bash
# DRY_RUN=1 deploy/azure/deploy.sh   (or DRY_RUN=1 make deploy): print every command, create nothing.
# deploy/azure/deploy.sh             bundle the model, build + push the image to Azure Container Registry,
#                                    create/update the Azure ML managed online endpoint. See README.md here.
# Settings: AZURE_* / IMAGE_TAG from the environment or .env (.env.example documents them); sign in first
# (az login). MODEL picks the model (default: the registry's champion, else the newest outputs/<run>).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
azure_py() {  # python -m <package>.clouds.azure.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.azure.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}
MODEL=${MODEL:-models:/{{ cookiecutter.project_slug }}@champion}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

# 1. Every variable checked before anything is created; exits 2 naming each missing or placeholder one.
settings=$(azure_py settings)  # a plain assignment, so set -e stops here on a bad setting
eval "$settings"
DRY=$([[ "${DRY_RUN:-0}" == 1 ]] && echo --dry-run || echo --no-dry-run)

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

# 3. The image, with the model, for the endpoint's x86 VMs; pushed to the registry.
run docker build "${image[@]}" .
run az acr login --name "$AZURE_ACR_NAME"
run docker push "$IMAGE_URI"

# 4. Endpoint + deployment (entities written to build/azure/*.yml), then all traffic to it (minutes).
azure_py up "$DRY"
