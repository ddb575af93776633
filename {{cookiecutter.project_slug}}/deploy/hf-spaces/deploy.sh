#!/usr/bin/env bash
# DRY_RUN=1 deploy/hf-spaces/deploy.sh   (or DRY_RUN=1 make deploy): print every command, upload nothing.
# deploy/hf-spaces/deploy.sh             bundle the model, stage the Space's files in build/space and upload
#                                        them; the Space builds the image itself. See README.md here.
# Settings: HF_SPACE_* and HF_TOKEN from the environment or .env (.env.example documents them);
# MODEL picks the model (default: the registry's champion, else the newest outputs/<run>).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
space_py() {  # python -m <package>.clouds.hf_spaces.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.hf_spaces.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}
MODEL=${MODEL:-models:/{{ cookiecutter.project_slug }}@champion}

run() {  # print the command (DRY_RUN=1) or run it
    if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

# 1. Every variable checked before anything is created; exits 2 naming each missing or placeholder one.
settings=$(space_py settings)  # a plain assignment, so set -e stops here on a bad setting
eval "$settings"

# 2. The model the image will carry: build/model (adapter + base + config).
bundle=(--model "$MODEL" --fallback latest --out build/model)
# >>> llama_cpp
if [[ "$DEPLOY_BACKEND" == llama.cpp ]]; then  # make deploy BACKEND=llama.cpp: serve the GGUF export
    bundle+=(--gguf "$DEPLOY_GGUF_TYPE")  # exit 2 here, before anything is built, when there is none
fi
# <<< llama_cpp
run "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.bundle "${bundle[@]}"

# 3. The Space: created when missing (Docker SDK), the build context uploaded as one commit.
space_py up "$([[ "${DRY_RUN:-0}" == 1 ]] && echo --dry-run || echo --no-dry-run)"
echo "Space: $HF_SPACE_URL (build logs there; the API answers at https://<owner>-<name>.hf.space)"
