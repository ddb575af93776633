#!/bin/sh
# The image's `serve` program (/usr/local/bin/serve). SageMaker starts a model's container as
# `docker run <image> serve`, which replaces the Dockerfile's CMD; this runs the same server as the CMD.
# https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html
# SageMaker expects port 8080: the endpoint sets PORT=8080 (deploy/aws). Extra arguments go to `serve`.
set -eu
exec python -m {{ cookiecutter.package_name }} serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
