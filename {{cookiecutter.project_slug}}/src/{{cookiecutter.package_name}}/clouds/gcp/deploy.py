"""Google Cloud: the image in Artifact Registry, served by Cloud Run (deploy/gcp/README.md has the commands).

    python -m <package>.clouds.gcp.deploy settings --project <slug>                       # check + print the variables
    python -m <package>.clouds.gcp.deploy manifest --project <slug> --out build/service.yaml

The service is described by a Knative `serving.knative.dev/v1` Service manifest, applied with
`gcloud run services replace`: the whole configuration is one reviewable file, and a re-deploy with the
same file changes nothing. Cloud Run sets $PORT (8080) for the container; the image's CMD listens on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ..deploy import ProjectOption, command_group
# >>> llama_cpp
from ..llama_cpp import BACKEND_VARIABLES, backend_environment
# <<< llama_cpp
from ..settings import DeploySettingsError, Var, read_environment, resolve

# Deploying the service and training (clouds/gcp/training.py) alike run in this project.
PROJECT_ID = Var(
    "GCP_PROJECT_ID",
    "the Google Cloud project id (gcloud projects list)",
    pattern=r"[a-z][a-z0-9-]{4,28}[a-z0-9]",
    rule="must be a project id: 6-30 lower-case letters, digits and dashes, starting with a letter",
)

VARIABLES = [
    PROJECT_ID,
    Var(
        "GCP_REGION",
        "the region of the service and the registry, e.g. europe-west1",
        pattern=r"[a-z]+-[a-z]+\d+",
        rule="must be a Cloud Run region such as europe-west1 or us-central1",
    ),
    Var(
        "GAR_REPOSITORY",
        "the Artifact Registry (Docker) repository of the image",
        default="{project}",
        pattern=r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?",
        rule="must be lower-case letters, digits and dashes, starting with a letter",
    ),
    Var(
        "CLOUD_RUN_SERVICE",
        "the Cloud Run service name",
        default="{project}",
        pattern=r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?",
        rule="must be 1-49 lower-case letters, digits and dashes, starting with a letter",
    ),
    Var("CLOUD_RUN_CPU", "vCPUs per instance", default="2", pattern=r"[1248]", rule="must be 1, 2, 4 or 8"),
    Var(
        "CLOUD_RUN_MEMORY",
        "memory per instance (torch + the model; 2 vCPU need at least 1Gi)",
        default="4Gi",
        pattern=r"\d+(Mi|Gi)",
        rule="must be a size such as 4Gi or 512Mi",
    ),
    Var("CLOUD_RUN_MIN_INSTANCES", "instances kept warm (0: none, no cost when idle)", default="0", pattern=r"\d+"),
    Var("CLOUD_RUN_MAX_INSTANCES", "the most instances Cloud Run starts", default="2", pattern=r"[1-9]\d*"),
    Var(
        "CLOUD_RUN_CONCURRENCY",
        "requests one instance takes at once before Cloud Run starts another (its autoscaling target); keep it "
        "at the server's LLM_MAX_BATCH_SIZE (8): more in flight would only queue inside the instance",
        default="8",
        pattern=r"[1-9]\d{0,2}",
        rule="must be a whole number from 1 to 999 (Cloud Run allows up to 1000)",
    ),
    Var(
        "CLOUD_RUN_ALLOW_UNAUTHENTICATED",
        "true: anyone with the URL may call it; false: callers need an identity token (roles/run.invoker)",
        default="false",
        pattern=r"true|false",
        rule="must be true or false",
    ),
    Var("IMAGE_TAG", "the image tag", default="{tag}", pattern=r"[a-z0-9](-?[a-z0-9]){0,62}", rule="bad tag"),
    # >>> llama_cpp
    *BACKEND_VARIABLES,  # DEPLOY_BACKEND, DEPLOY_GGUF_TYPE
    # <<< llama_cpp
]
PORT = 8080  # Cloud Run's default; it sets $PORT to this in the container


def settings(environ: dict[str, str], *, project: str, tag: str | None = None) -> dict[str, str]:
    """The deploy variables, checked, plus the image URI and the registry host that follow from them."""
    tag = tag or time.strftime("%y%m%d-%H%M%S", time.gmtime())  # a new tag per deploy (UTC time)
    values = resolve(VARIABLES, environ, project=project, tag=tag)
    minimum, maximum = values["CLOUD_RUN_MIN_INSTANCES"], values["CLOUD_RUN_MAX_INSTANCES"]
    if int(minimum) > int(maximum):
        raise DeploySettingsError(
            f"CLOUD_RUN_MIN_INSTANCES={minimum} is above CLOUD_RUN_MAX_INSTANCES={maximum}; lower it or raise the max"
        )
    registry = f"{values['GCP_REGION']}-docker.pkg.dev"
    path = f"{values['GCP_PROJECT_ID']}/{values['GAR_REPOSITORY']}/{project}"
    return {**values, "GAR_HOST": registry, "IMAGE_URI": f"{registry}/{path}:{values['IMAGE_TAG']}"}


def service_manifest(values: dict[str, str]) -> dict[str, Any]:
    """The Cloud Run service as a Knative Service (https://cloud.google.com/run/docs/reference/yaml/v1)."""
    minimum, maximum = int(values["CLOUD_RUN_MIN_INSTANCES"]), int(values["CLOUD_RUN_MAX_INSTANCES"])
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": values["CLOUD_RUN_SERVICE"],
            "labels": {"cloud.googleapis.com/location": values["GCP_REGION"]},
        },
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/minScale": str(minimum),
                        "autoscaling.knative.dev/maxScale": str(maximum),
                        # CPU only while a request is in flight: billed per request, not per instance-hour.
                        "run.googleapis.com/cpu-throttling": "true",
                        # More CPU while the container starts: loading and merging the model is CPU-bound.
                        "run.googleapis.com/startup-cpu-boost": "true",
                    }
                },
                "spec": {
                    # One instance batches up to LLM_MAX_BATCH_SIZE requests; more in flight would only queue,
                    # so Cloud Run starts another instance (up to maxScale) when all are this busy.
                    "containerConcurrency": int(values["CLOUD_RUN_CONCURRENCY"]),
                    "timeoutSeconds": 300,
                    "containers": [_container(values)],
                },
            },
            "traffic": [{"percent": 100, "latestRevision": True}],
        },
    }


def _container(values: dict[str, str]) -> dict[str, Any]:
    """The service's one container: the image, its resources and environment, and the probes."""
    return {
        "image": values["IMAGE_URI"],
        "ports": [{"name": "http1", "containerPort": PORT}],
        "env": [
            {"name": "LLM_DEVICE", "value": "cpu"},
            # >>> llama_cpp
            *({"name": key, "value": value} for key, value in backend_environment(values).items()),
            # <<< llama_cpp
        ],
        "resources": {"limits": {"cpu": values["CLOUD_RUN_CPU"], "memory": values["CLOUD_RUN_MEMORY"]}},
        # Traffic only once the model is loaded (/ready), not merely once the server
        # answers (/health): the first requests would get 503 otherwise. 10 s x 30 = 5 min.
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 30,
        },
        # /health turns 503 when the model failed to load: Cloud Run restarts it.
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PORT},
            "periodSeconds": 30,
            "timeoutSeconds": 5,
        },
    }


def write_manifest(values: dict[str, str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(service_manifest(values), sort_keys=False), encoding="utf-8")
    return out


# ---- the deploy commands (clouds/deploy.py; deploy.sh, teardown.sh) ---------------------------------------

# No `up` or `down`: deploy.sh applies the manifest with `gcloud run services replace`, teardown.sh deletes with gcloud.
app = command_group("Cloud Run service + Artifact Registry image of the served model.", VARIABLES, settings)


@app.command()
def manifest(
    project: ProjectOption,
    out: Annotated[Path, typer.Option(help="Where to write the manifest.")] = Path("build/service.yaml"),
) -> None:
    """Write the Cloud Run service manifest for IMAGE_URI (applied by `gcloud run services replace`)."""
    typer.echo(write_manifest(settings(read_environment(), project=project), out))


if __name__ == "__main__":
    app()
