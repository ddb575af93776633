#!/usr/bin/env bash
# DRY_RUN=1 deploy/hf-spaces/teardown.sh   print what would be deleted.
# deploy/hf-spaces/teardown.sh             delete the Space (repository, image builds, secrets).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}

"$PYTHON" -m {{ cookiecutter.package_name }}.clouds.hf_spaces.deploy settings --project {{ cookiecutter.project_slug }} >/dev/null
"$PYTHON" -m {{ cookiecutter.package_name }}.clouds.hf_spaces.deploy down --project {{ cookiecutter.project_slug }} \
    "$([[ "${DRY_RUN:-0}" == 1 ]] && echo --dry-run || echo --no-dry-run)"
