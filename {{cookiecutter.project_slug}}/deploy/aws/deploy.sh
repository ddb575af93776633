#!/usr/bin/env bash
# DRY_RUN=1 deploy/aws/deploy.sh   (or DRY_RUN=1 make deploy): print every command, create nothing.
# deploy/aws/deploy.sh             bundle the model, build + push the image to ECR, create/update the
#                                  SageMaker endpoint and wait until it is InService. See README.md here.
# Settings: AWS_* / SAGEMAKER_* / ECR_* / IMAGE_TAG from the environment or .env (.env.example documents them);
# MODEL picks the model (default: the registry's champion, else the newest outputs/<run>).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
aws_py() {  # python -m <package>.clouds.aws.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.aws.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}
MODEL=${MODEL:-models:/{{ cookiecutter.project_slug }}@champion}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

# 1. Every variable checked before anything is created; exits 2 naming each missing or placeholder one.
settings=$(aws_py settings)  # a plain assignment, so set -e stops here on a bad setting
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

# 3. The image, with the model, for the endpoint's x86 CPU instances.
run docker build "${image[@]}" .

# 4. The ECR repository (created when missing), a registry login, the push.
aws_py repository "$DRY"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "+ aws ecr get-login-password --region $AWS_REGION | docker login --username AWS --password-stdin $ECR_REGISTRY"
else
    aws ecr get-login-password --region "$AWS_REGION" | docker login --username AWS --password-stdin "$ECR_REGISTRY"
fi
run docker push "$IMAGE_URI"

# 5. SageMaker model + endpoint config + endpoint; waits until InService (several minutes).
aws_py up "$DRY"
