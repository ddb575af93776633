"""Azure: the image in Azure Container Registry, served by an Azure ML managed online endpoint
(deploy/azure/README.md has the commands and why this and not Container Apps).

    python -m <package>.clouds.azure.deploy settings --project <slug>     # check + print the variables
    python -m <package>.clouds.azure.deploy up --project <slug> [--dry-run]   # endpoint + deployment, 100% traffic
    python -m <package>.clouds.azure.deploy down --project <slug> [--dry-run] # delete the endpoint (and deployment)

The endpoint and its deployment are `azure-ai-ml` entities built from the settings alone (no credentials,
no network), so the tests build them, dump them to YAML and load them back; only `up`/`down` make an
MLClient, and the functions that use it take it as a parameter.

Scaling: a managed online deployment's own scale type is `default` (a fixed instance_count); autoscale goes
through an Azure Monitor autoscale setting on the deployment, which azure-ai-ml does not make, so `up` applies
one with the az CLI (`az monitor autoscale create` + two CPU rules, built by autoscale_commands) and `down`
deletes it. AZURE_INSTANCE_COUNT is the minimum, AZURE_MAX_INSTANCES the maximum.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import typer
import yaml

from ..deploy import command_group, print_step
# >>> llama_cpp
from ..llama_cpp import BACKEND_VARIABLES, backend_environment
# <<< llama_cpp
from ..settings import DeploySettingsError, Var, resolve

# The workspace every Azure ML call names: deploying an endpoint and training (clouds/azure/training.py) alike.
WORKSPACE_VARIABLES = [
    Var(
        "AZURE_SUBSCRIPTION_ID",
        "the subscription id (az account show --query id -o tsv)",
        pattern=r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}",
        rule="must be a subscription id (a GUID)",
    ),
    Var(
        "AZURE_RESOURCE_GROUP",
        "the resource group of the Azure ML workspace",
        pattern=r"[\w().-]{1,90}",
        rule="must be a resource group name: 1-90 letters, digits and . _ - ( ), no spaces (az group list -o table)",
    ),
    Var(
        "AZURE_ML_WORKSPACE",
        "the Azure ML workspace name",
        pattern=r"[a-zA-Z0-9][\w-]{2,32}",
        rule="must be a workspace name: 3-33 letters, digits, _ and -, starting with a letter or digit",
    ),
]

VARIABLES = [
    *WORKSPACE_VARIABLES,
    Var(
        "AZURE_ACR_NAME",
        "the Azure Container Registry for the image: the workspace's own (it can pull from it) or one the "
        "endpoint's identity has AcrPull on",
        pattern=r"[a-zA-Z0-9]{5,50}",
        rule="must be the registry name (5-50 letters and digits), not its login server",
    ),
    Var(
        "AZURE_ENDPOINT_NAME",
        "the online endpoint's name, unique in its region",
        default="{endpoint}",  # the project name, cut to Azure's 32 characters
        pattern=r"[a-zA-Z](-?[a-zA-Z0-9]){2,31}",
        rule="must be 3-32 letters, digits and single dashes, starting with a letter",
    ),
    Var(
        "AZURE_INSTANCE_TYPE",
        "the VM size of the deployment (see the supported list in deploy/azure/README.md)",
        default="Standard_DS3_v2",
        pattern=r"Standard_\w+",
        rule="must be a VM size such as Standard_DS3_v2",
    ),
    Var(
        "AZURE_INSTANCE_COUNT",
        "instances of the deployment at the start, and the fewest autoscale keeps",
        default="1",
        pattern=r"[1-9]\d{0,2}",
        rule="must be a whole number from 1 to 999",
    ),
    Var(
        "AZURE_MAX_INSTANCES",
        "the most instances autoscale starts (Azure Monitor autoscale on the deployment); each is billed",
        default="2",
        pattern=r"[1-9]\d{0,2}",
        rule="must be a whole number from 1 to 999",
    ),
    Var(
        "AZURE_SCALE_OUT_CPU",
        "average CPU percent over 5 minutes above which autoscale adds an instance (it removes one below half)",
        default="70",
        pattern=r"[2-9]\d",
        rule="must be a percentage from 20 to 99",
    ),
    Var("IMAGE_TAG", "the image tag", default="{tag}", pattern=r"[a-z0-9](-?[a-z0-9]){0,62}", rule="bad tag"),
    # >>> llama_cpp
    *BACKEND_VARIABLES,  # DEPLOY_BACKEND, DEPLOY_GGUF_TYPE
    # <<< llama_cpp
]
DEPLOYMENT = "blue"  # the first of a blue/green pair: a new version goes to `green`, then traffic moves
PORT = 8000  # the image's default port; Azure ML sends traffic to the routes of inference_config
# The tag `deploy` puts on the endpoint it creates: deploy updates, and teardown deletes, only an endpoint that
# carries it, never another endpoint that AZURE_ENDPOINT_NAME happens to name.
CREATED_BY = {"created-by": "deploy/azure"}


def settings(environ: dict[str, str], *, project: str, tag: str | None = None) -> dict[str, str]:
    """The deploy variables, checked, plus the registry's login server and the image URI."""
    tag = tag or time.strftime("%y%m%d-%H%M%S", time.gmtime())  # a new tag per deploy (UTC time)
    values = resolve(VARIABLES, environ, project=project, endpoint=project[:32].rstrip("-"), tag=tag)
    if int(values["AZURE_INSTANCE_COUNT"]) > int(values["AZURE_MAX_INSTANCES"]):
        raise DeploySettingsError(
            f"AZURE_INSTANCE_COUNT={values['AZURE_INSTANCE_COUNT']} is above AZURE_MAX_INSTANCES="
            f"{values['AZURE_MAX_INSTANCES']}; lower the first or raise the second (nothing was created)"
        )
    registry = f"{values['AZURE_ACR_NAME'].lower()}.azurecr.io"
    return {**values, "ACR_LOGIN_SERVER": registry, "IMAGE_URI": f"{registry}/{project}:{values['IMAGE_TAG']}"}


def build_endpoint(values: dict[str, str]):  # -> ManagedOnlineEndpoint
    """The endpoint: a stable HTTPS URL with key authentication; traffic goes to its deployments."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=values["AZURE_ENDPOINT_NAME"],
        description="LoRA fine-tuned chat model, OpenAI-compatible (POST /v1/chat/completions)",
        auth_mode="key",
        tags=dict(CREATED_BY),
    )


def build_deployment(values: dict[str, str]):  # -> ManagedOnlineDeployment
    """The deployment: our image as a custom container, with its health and scoring routes."""
    from azure.ai.ml.entities import (
        DefaultScaleSettings,
        Environment,
        ManagedOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
    )

    environment = Environment(
        name=values["AZURE_ENDPOINT_NAME"],
        image=values["IMAGE_URI"],
        inference_config={
            "liveness_route": {"path": "/health", "port": PORT},
            "readiness_route": {"path": "/ready", "port": PORT},  # traffic only once the model is loaded
            "scoring_route": {"path": "/v1/chat/completions", "port": PORT},
        },
    )
    return ManagedOnlineDeployment(
        name=DEPLOYMENT,
        endpoint_name=values["AZURE_ENDPOINT_NAME"],
        environment=environment,
        environment_variables={
            "LLM_DEVICE": "cpu",
            # >>> llama_cpp
            **backend_environment(values),
            # <<< llama_cpp
        },
        instance_type=values["AZURE_INSTANCE_TYPE"],
        instance_count=int(values["AZURE_INSTANCE_COUNT"]),
        # The only scale type of managed deployments; the autoscale setting of `up` moves instance_count.
        scale_settings=DefaultScaleSettings(),
        # The default 5 s request timeout is too short for generation on a CPU; 90 s like LLM_GENERATION_TIMEOUT_S
        # (60 s) plus queueing.
        request_settings=OnlineRequestSettings(request_timeout_ms=90_000, max_concurrent_requests_per_instance=8),
        # Loading + merging the model takes a while on first start: probe from 30 s, for up to 10 minutes.
        readiness_probe=ProbeSettings(initial_delay=30, period=10, timeout=5, failure_threshold=60),
        liveness_probe=ProbeSettings(initial_delay=30, period=30, timeout=5, failure_threshold=10),
    )


def write_yaml(values: dict[str, str], out: Path) -> tuple[Path, Path]:
    """endpoint.yml and deployment.yml in `out`: what `az ml online-endpoint/online-deployment create -f` takes."""
    out.mkdir(parents=True, exist_ok=True)
    endpoint, deployment = out / "endpoint.yml", out / "deployment.yml"
    # ManagedOnlineEndpoint.dump ignores its destination (azure-ai-ml 1.35) but returns the content, as
    # OrderedDicts that safe_dump refuses: JSON turns them into plain dicts, in the same order.
    content = json.loads(json.dumps(build_endpoint(values).dump()))
    endpoint.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    build_deployment(values).dump(deployment)
    return endpoint, deployment


def deploy(ml_client, values: dict[str, str]):  # -> ManagedOnlineEndpoint
    """Create or update the endpoint and its deployment, then send it all traffic; returns the endpoint.
    An existing endpoint that deploy did not create is refused (its `blue` deployment and traffic would change)."""
    name = values["AZURE_ENDPOINT_NAME"]
    if _made_here(ml_client, name) is False:
        raise DeploySettingsError(
            f"AZURE_ENDPOINT_NAME={name}: that endpoint exists and `make deploy` did not create it (no tag "
            f"created-by={CREATED_BY['created-by']}); deploying would replace its '{DEPLOYMENT}' deployment and "
            "move all its traffic. Set AZURE_ENDPOINT_NAME to a new name; nothing was created"
        )
    endpoint = build_endpoint(values)
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    ml_client.online_deployments.begin_create_or_update(build_deployment(values)).result()
    endpoint.traffic = {DEPLOYMENT: 100}
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    return ml_client.online_endpoints.get(name=values["AZURE_ENDPOINT_NAME"])


def autoscale_name(values: dict[str, str]) -> str:
    """The Azure Monitor autoscale setting `up` makes (one per endpoint; `down` deletes only this name)."""
    return f"{values['AZURE_ENDPOINT_NAME']}-autoscale"


def deployment_id(values: dict[str, str]) -> str:
    """The deployment's Azure Resource Manager id: the autoscale setting's target resource."""
    return (
        f"/subscriptions/{values['AZURE_SUBSCRIPTION_ID']}/resourceGroups/{values['AZURE_RESOURCE_GROUP']}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{values['AZURE_ML_WORKSPACE']}"
        f"/onlineEndpoints/{values['AZURE_ENDPOINT_NAME']}/deployments/{DEPLOYMENT}"
    )


def autoscale_commands(values: dict[str, str]) -> list[list[str]]:
    """The az commands of the autoscale setting (Azure ML docs, "Autoscale online endpoints"): the instance
    range, one instance more when the deployment's CpuUtilizationPercentage averages above AZURE_SCALE_OUT_CPU
    for 5 minutes, one fewer below half of it."""
    group, name = ["--resource-group", values["AZURE_RESOURCE_GROUP"]], autoscale_name(values)
    out_cpu = int(values["AZURE_SCALE_OUT_CPU"])
    create = ["az", "monitor", "autoscale", "create", *group, "--name", name, "--resource", deployment_id(values)]
    create += ["--min-count", values["AZURE_INSTANCE_COUNT"], "--max-count", values["AZURE_MAX_INSTANCES"]]
    create += ["--count", values["AZURE_INSTANCE_COUNT"], "--tags", *(f"{k}={v}" for k, v in CREATED_BY.items())]
    rule = ["az", "monitor", "autoscale", "rule", "create", *group, "--autoscale-name", name]
    # Cooldowns (minutes): a new instance takes minutes to load the model; scale in more slowly than out.
    scale_out = ["--condition", f"CpuUtilizationPercentage > {out_cpu} avg 5m", "--scale", "out", "1"]
    scale_in = ["--condition", f"CpuUtilizationPercentage < {out_cpu // 2} avg 5m", "--scale", "in", "1"]
    return [create, [*rule, *scale_out, "--cooldown", "5"], [*rule, *scale_in, "--cooldown", "15"]]


def remove_autoscale(values: dict[str, str], *, run: Callable[[list[str]], str]) -> bool:
    """Delete `up`'s autoscale setting when it exists and carries the CREATED_BY tag; `run` runs an az command
    and returns its output. True when deleted."""
    group = ["--resource-group", values["AZURE_RESOURCE_GROUP"], "--name", autoscale_name(values)]
    listed = [
        "az",
        "monitor",
        "autoscale",
        "list",
        "--resource-group",
        values["AZURE_RESOURCE_GROUP"],
        "--output",
        "json",
    ]
    settings_here = json.loads(run(listed) or "[]")
    ours = [
        setting
        for setting in settings_here
        if setting.get("name") == autoscale_name(values)
        and all((setting.get("tags") or {}).get(key) == value for key, value in CREATED_BY.items())
    ]
    if not ours:
        return False
    run(["az", "monitor", "autoscale", "delete", *group])
    return True


def run_az(command: list[str]) -> str:
    """Run an az command; its stdout. A failure raises with az's own message."""
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


KEPT = 3
"""`down`'s exit status when the endpoint is someone else's and was left alone."""


def delete(ml_client, name: str) -> bool | None:
    """Delete the endpoint and its deployments when deploy created it: True; False when it did not exist;
    None when another endpoint has that name (then it is left alone)."""
    from azure.core.exceptions import ResourceNotFoundError

    made_here = _made_here(ml_client, name)
    if made_here is None:
        return False
    if not made_here:
        return None
    try:
        ml_client.online_endpoints.begin_delete(name=name).result()
    except ResourceNotFoundError:
        return False
    return True


def _made_here(ml_client, name: str) -> bool | None:
    """None: no such endpoint; True: deploy created it (tagged CREATED_BY); False: another endpoint."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        endpoint = ml_client.online_endpoints.get(name=name)
    except ResourceNotFoundError:
        return None
    return all((endpoint.tags or {}).get(key) == value for key, value in CREATED_BY.items())


def ml_client(values: dict[str, str]):  # -> MLClient
    """The workspace client, signed in as `az login` / azure/login in CI / a managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(
        DefaultAzureCredential(),
        subscription_id=values["AZURE_SUBSCRIPTION_ID"],
        resource_group_name=values["AZURE_RESOURCE_GROUP"],
        workspace_name=values["AZURE_ML_WORKSPACE"],
    )


# ---- the deploy commands (clouds/deploy.py; deploy.sh, teardown.sh) ---------------------------------------

OUT = Path("build/azure")  # `up`'s default --out: endpoint.yml and deployment.yml


def up(values: dict[str, str], *, project: str, dry_run: bool, out: Path | None, bundle: Path) -> None:
    """Create or update the endpoint and deployment for IMAGE_URI (minutes); endpoint.yml and deployment.yml go
    to --out (build/azure), a dry run included."""
    # --bundle does not apply: the image in ACR carries the model.
    endpoint_yml, deployment_yml = write_yaml(values, out or OUT)
    if dry_run:
        print_step(f"ml_client.online_endpoints.begin_create_or_update({endpoint_yml})")
        print_step(f"ml_client.online_deployments.begin_create_or_update({deployment_yml})")
        print_step(f"ml_client.online_endpoints.begin_create_or_update(traffic={{'{DEPLOYMENT}': 100}})")
        for command in autoscale_commands(values):
            print_step(shlex.join(command))
        return
    typer.echo(f"deploying {values['IMAGE_URI']} to endpoint {values['AZURE_ENDPOINT_NAME']} (minutes)...")
    endpoint = deploy(ml_client(values), values)
    remove_autoscale(values, run=run_az)  # a re-deploy replaces the setting with the current values
    for command in autoscale_commands(values):
        run_az(command)
    typer.secho(f"{endpoint.name}: {endpoint.provisioning_state} at {endpoint.scoring_uri}", fg=typer.colors.GREEN)
    low, high = values["AZURE_INSTANCE_COUNT"], values["AZURE_MAX_INSTANCES"]
    typer.echo(f"autoscale {autoscale_name(values)}: {low} to {high} instances")


def down(values: dict[str, str], *, dry_run: bool) -> None:
    """Delete the endpoint and its deployment. Exit status KEPT when another endpoint has the name: then
    teardown.sh keeps the image repository too (ACR repositories carry no tag saying who made them)."""
    name = values["AZURE_ENDPOINT_NAME"]
    if dry_run:
        group = ["--resource-group", values["AZURE_RESOURCE_GROUP"], "--name", autoscale_name(values)]
        print_step(shlex.join(["az", "monitor", "autoscale", "delete", *group]))
        print_step(f"ml_client.online_endpoints.begin_delete(name={name!r})")
        typer.echo(f"# each only when deploy created it (tag created-by={CREATED_BY['created-by']})")
        return
    deleted = delete(ml_client(values), name)
    if deleted is None:
        typer.echo(
            f"kept endpoint {name} and the image repository: `make deploy` did not create the endpoint "
            "(no tag created-by=deploy/azure)"
        )
        raise typer.Exit(KEPT)
    if remove_autoscale(values, run=run_az):
        typer.echo(f"deleted autoscale setting {autoscale_name(values)}")
    typer.echo(f"deleted endpoint {name}" if deleted else f"endpoint {name} did not exist")


app = command_group("Azure ML managed online endpoint + ACR image of the served model.", VARIABLES, settings, up, down)

if __name__ == "__main__":
    app()
