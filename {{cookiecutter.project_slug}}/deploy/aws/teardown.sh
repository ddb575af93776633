#!/usr/bin/env bash
# DRY_RUN=1 deploy/aws/teardown.sh   print what would be deleted.
# deploy/aws/teardown.sh             delete the SageMaker endpoint, every endpoint config and model that
#                                    deploy.sh made for it, and the ECR repository with its images.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
aws_py() {  # python -m <package>.clouds.aws.deploy COMMAND --project <slug> [options]
    "$PYTHON" -m {{ cookiecutter.package_name }}.clouds.aws.deploy "$1" --project {{ cookiecutter.project_slug }} "${@:2}"
}

settings=$(aws_py settings)  # a plain assignment, so set -e stops here on a bad setting
eval "$settings"
DRY=$([[ "${DRY_RUN:-0}" == 1 ]] && echo --dry-run || echo --no-dry-run)
aws_py down "$DRY"
