"""AWS: the image in ECR, served by a SageMaker real-time endpoint (deploy/aws/README.md has the commands).

    python -m <package>.clouds.aws.deploy settings --project <slug>  # check the variables; print them for deploy.sh
    python -m <package>.clouds.aws.deploy up [--dry-run]    # model + endpoint config + endpoint, wait InService
    python -m <package>.clouds.aws.deploy down [--dry-run]  # delete endpoint, configs, models, ECR repository

Each deploy creates a model and an endpoint config named <endpoint>-<image tag>, then creates the endpoint
or switches an existing one to the new config (SageMaker then replaces the instances without downtime).
The endpoint variant then scales with Application Auto Scaling between SAGEMAKER_MIN_INSTANCES and
SAGEMAKER_MAX_INSTANCES, tracking SAGEMAKER_TARGET_INVOCATIONS per instance per minute; teardown removes that
policy and scalable target first. Every function takes its boto3 client, so the tests run the whole flow against moto.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..deploy import DryRunOption, ProjectOption, command_group, print_call
# >>> llama_cpp
from ..llama_cpp import BACKEND_VARIABLES, backend_environment
# <<< llama_cpp
from ..settings import DeploySettingsError, Var, read_environment, resolve

VARIABLES = [
    Var(
        "AWS_REGION",
        "the AWS region of the endpoint and the ECR repository, e.g. us-east-1",
        pattern=r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d",
        rule="must be an AWS region name such as us-east-1",
    ),
    Var(
        "SAGEMAKER_ROLE_ARN",
        "the IAM role SageMaker assumes to pull the image from ECR and write CloudWatch logs "
        "(see deploy/aws/README.md)",
        pattern=r"arn:aws(-[a-z]+)?:iam::\d{12}:role/[\w+=,.@/-]+",
        rule="must be an IAM role ARN: arn:aws:iam::<12-digit account id>:role/<name>",
    ),
    Var(
        "SAGEMAKER_INSTANCE_TYPE",
        "the endpoint's instance type",
        default="ml.m5.xlarge",
        pattern=r"ml\.[a-z0-9]+\.[a-z0-9]+",
        rule="must be a SageMaker instance type such as ml.m5.xlarge",
    ),
    Var(
        "SAGEMAKER_ENDPOINT_NAME",
        "the endpoint's name",
        default="{project}",
        # 63 is SageMaker's limit for model names, which are <endpoint>-<image tag> (tag up to 15 here).
        pattern=r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,46}",
        rule="must be 1-47 letters, digits and single dashes",
    ),
    Var(
        "SAGEMAKER_MIN_INSTANCES",
        "the fewest instances the endpoint scales in to (also its first instance count); 1 keeps it answering",
        default="1",
        pattern=r"[1-9]\d{0,2}",
        rule="must be a whole number from 1 to 999",
    ),
    Var(
        "SAGEMAKER_MAX_INSTANCES",
        "the most instances the endpoint scales out to; each one is billed per hour",
        default="2",
        pattern=r"[1-9]\d{0,2}",
        rule="must be a whole number from 1 to 999",
    ),
    Var(
        "SAGEMAKER_TARGET_INVOCATIONS",
        "requests per instance per minute that auto scaling keeps each instance at (SageMakerVariantInvocations"
        "PerInstance); a CPU instance answers about one request a second with the small model (an estimate)",
        default="30",
        pattern=r"[1-9]\d{0,5}",
        rule="must be a whole number of requests per minute, 1 or more",
    ),
    Var(
        "ECR_REPOSITORY",
        "the ECR repository of the image",
        default="{project}",
        pattern=r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*",
        rule="must be lower-case letters, digits and . _ - / separators",
    ),
    Var(
        "IMAGE_TAG",
        "the image tag, also the suffix of the SageMaker model and endpoint config names",
        default="{tag}",
        # No dashes: then <endpoint>-<tag> names say which endpoint they belong to (teardown relies on it).
        pattern=r"[a-z0-9]{1,15}",
        rule="must be 1-15 lower-case letters and digits (no dashes)",
    ),
    # >>> llama_cpp
    *BACKEND_VARIABLES,  # DEPLOY_BACKEND, DEPLOY_GGUF_TYPE
    # <<< llama_cpp
]
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# Scale out within a minute of a burst, scale in only after 5 quiet minutes: a new instance takes minutes to start.
SCALE_OUT_COOLDOWN_S, SCALE_IN_COOLDOWN_S = 60, 300
# Seconds SageMaker waits for /ping to answer 200 after the container starts: loading + merging the model.
STARTUP_TIMEOUT_S = 600


def image_tag() -> str:
    """A new tag per deploy (UTC time), so each deploy's model and endpoint config have their own names."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


def settings(environ: dict[str, str], *, project: str, tag: str | None = None) -> dict[str, str]:
    """The deploy variables, checked, plus what follows from them: account, registry and image URI."""
    values = resolve(VARIABLES, environ, project=project, tag=tag or image_tag())
    if int(values["SAGEMAKER_MIN_INSTANCES"]) > int(values["SAGEMAKER_MAX_INSTANCES"]):
        raise DeploySettingsError(
            f"SAGEMAKER_MIN_INSTANCES={values['SAGEMAKER_MIN_INSTANCES']} is above SAGEMAKER_MAX_INSTANCES="
            f"{values['SAGEMAKER_MAX_INSTANCES']}; lower the first or raise the second (nothing was created)"
        )
    account = values["SAGEMAKER_ROLE_ARN"].split(":")[4]
    registry = f"{account}.dkr.ecr.{values['AWS_REGION']}.amazonaws.com"
    return {
        **values,
        "AWS_ACCOUNT_ID": account,
        "ECR_REGISTRY": registry,
        "IMAGE_URI": f"{registry}/{values['ECR_REPOSITORY']}:{values['IMAGE_TAG']}",
    }


# ---- ECR -------------------------------------------------------------------------------------------------


# The tag `ensure_repository` puts on a repository it creates: teardown deletes only a repository carrying it,
# never one that existed before the first deploy (ECR_REPOSITORY may name a shared repository).
CREATED_BY = {"Key": "created-by", "Value": "deploy/aws"}


def ensure_repository(ecr, name: str) -> str:
    """The repository's URI, creating it (scan on push, immutable tags, tagged CREATED_BY) when missing."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        pass
    created = ecr.create_repository(
        repositoryName=name,
        imageTagMutability="IMMUTABLE",  # a tag names one image forever: the SageMaker model points at it
        imageScanningConfiguration={"scanOnPush": True},
        tags=[CREATED_BY],
    )
    return created["repository"]["repositoryUri"]


def delete_repository(ecr, name: str) -> bool | None:
    """Delete the repository and every image in it when deploy created it (tagged CREATED_BY); False when it
    does not exist, None when it exists but deploy did not create it (then it is left alone)."""
    try:
        arn = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryArn"]
    except ecr.exceptions.RepositoryNotFoundException:
        return False
    if CREATED_BY not in ecr.list_tags_for_resource(resourceArn=arn).get("tags", []):
        return None
    ecr.delete_repository(repositoryName=name, force=True)
    return True


# ---- SageMaker -------------------------------------------------------------------------------------------


def endpoint_calls(values: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The SageMaker API calls of one deploy, in order: (operation, keyword arguments)."""
    name = f"{values['SAGEMAKER_ENDPOINT_NAME']}-{values['IMAGE_TAG']}"
    environment = {
        "PORT": "8080",  # SageMaker sends traffic to port 8080
        "LLM_DEVICE": "cpu",
        # >>> llama_cpp
        **backend_environment(values),
        # <<< llama_cpp
    }
    return [
        (
            "create_model",
            {
                "ModelName": name,
                "ExecutionRoleArn": values["SAGEMAKER_ROLE_ARN"],
                "PrimaryContainer": {"Image": values["IMAGE_URI"], "Environment": environment},
                "Tags": [CREATED_BY],
            },
        ),
        (
            "create_endpoint_config",
            {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": VARIANT,
                        "ModelName": name,
                        "InstanceType": values["SAGEMAKER_INSTANCE_TYPE"],
                        "InitialInstanceCount": int(values["SAGEMAKER_MIN_INSTANCES"]),
                        "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
                    }
                ],
                "Tags": [CREATED_BY],
            },
        ),
        (
            "create_endpoint",
            {"EndpointName": values["SAGEMAKER_ENDPOINT_NAME"], "EndpointConfigName": name, "Tags": [CREATED_BY]},
        ),
    ]


def deploy_endpoint(
    sagemaker, values: dict[str, str], *, autoscaling=None, delay_s: int = 30, max_attempts: int = 60
) -> dict:
    """Create the model and endpoint config, create the endpoint (or point an existing one that deploy made
    at the new config), wait until it is InService (`delay_s` x `max_attempts`), then, given the
    `autoscaling` client (application-autoscaling), attach scaling_calls; returns describe_endpoint's
    answer. An existing endpoint that deploy did not make (no CREATED_BY tag) is refused before anything is
    created: SAGEMAKER_ENDPOINT_NAME may name an endpoint that serves something else."""
    endpoint = values["SAGEMAKER_ENDPOINT_NAME"]
    existing = _endpoint_arn(sagemaker, endpoint)
    if existing and not _made_here(sagemaker, existing):
        raise DeploySettingsError(
            f"SAGEMAKER_ENDPOINT_NAME={endpoint}: that endpoint exists and `make deploy` did not create it (no tag "
            f"{CREATED_BY['Key']}={CREATED_BY['Value']}); choose another name. Nothing was created."
        )
    if existing and autoscaling is not None:
        # SageMaker refuses to update an endpoint whose variant is a registered scalable target: detach
        # scaling for the switch, attach it again once the new config is in service.
        remove_scaling(autoscaling, endpoint)
    for operation, kwargs in endpoint_calls(values):
        if operation == "create_endpoint" and existing:
            operation = "update_endpoint"
            kwargs = {key: value for key, value in kwargs.items() if key != "Tags"}  # the endpoint keeps its tags
        getattr(sagemaker, operation)(**kwargs)
    waiter = sagemaker.get_waiter("endpoint_in_service")
    waiter.wait(EndpointName=endpoint, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts})
    if autoscaling is not None:
        for operation, kwargs in scaling_calls(values):
            getattr(autoscaling, operation)(**kwargs)
    return sagemaker.describe_endpoint(EndpointName=endpoint)


def _variant_resource(endpoint: str) -> dict[str, str]:
    """The endpoint variant as Application Auto Scaling names it."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": f"endpoint/{endpoint}/variant/{VARIANT}",
        "ScalableDimension": SCALABLE_DIMENSION,
    }


def scaling_policy_name(endpoint: str) -> str:
    """The one scaling policy deploy makes; teardown deletes only a policy with this name."""
    return f"{endpoint}-invocations"


def scaling_calls(values: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The Application Auto Scaling calls of one deploy: the variant as a scalable target between the min and
    max instance counts, and a target tracking policy on invocations per instance (per minute)."""
    resource = _variant_resource(values["SAGEMAKER_ENDPOINT_NAME"])
    tracking = {
        "TargetValue": float(values["SAGEMAKER_TARGET_INVOCATIONS"]),
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
        "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
    }
    return [
        (
            "register_scalable_target",
            {
                **resource,
                "MinCapacity": int(values["SAGEMAKER_MIN_INSTANCES"]),
                "MaxCapacity": int(values["SAGEMAKER_MAX_INSTANCES"]),
            },
        ),
        (
            "put_scaling_policy",
            {
                "PolicyName": scaling_policy_name(values["SAGEMAKER_ENDPOINT_NAME"]),
                **resource,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": tracking,
            },
        ),
    ]


def remove_scaling(autoscaling, endpoint: str) -> list[str]:
    """Delete deploy's scaling policy and deregister the variant as a scalable target (call only for an endpoint
    deploy made). Returns what was removed, as `kind:name`; nothing registered, nothing removed."""
    resource = _variant_resource(endpoint)
    removed = []
    policies = autoscaling.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource["ResourceId"], ScalableDimension=SCALABLE_DIMENSION
    )["ScalingPolicies"]
    if any(policy["PolicyName"] == scaling_policy_name(endpoint) for policy in policies):
        autoscaling.delete_scaling_policy(PolicyName=scaling_policy_name(endpoint), **resource)
        removed.append(f"scaling-policy:{scaling_policy_name(endpoint)}")
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource["ResourceId"]], ScalableDimension=SCALABLE_DIMENSION
    )["ScalableTargets"]
    if targets:
        autoscaling.deregister_scalable_target(**resource)
        removed.append(f"scalable-target:{resource['ResourceId']}")
    return removed


def _endpoint_arn(sagemaker, name: str) -> str | None:
    """The endpoint's ARN, or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sagemaker.describe_endpoint(EndpointName=name)["EndpointArn"]
    except ClientError as err:
        if err.response["Error"]["Code"] == "ValidationException":  # SageMaker's "could not find endpoint"
            return None
        raise


def _made_here(sagemaker, arn: str) -> bool:
    """Whether deploy created the resource: it carries the CREATED_BY tag."""
    return CREATED_BY in sagemaker.list_tags(ResourceArn=arn).get("Tags", [])


def delete_endpoint(
    sagemaker, endpoint: str, *, autoscaling=None, delay_s: int = 15, max_attempts: int = 80
) -> list[str]:
    """Delete the endpoint's scaling (given the `autoscaling` client), the endpoint, then every endpoint config
    and model this project's deploys made for it (named <endpoint>-<tag> and tagged CREATED_BY). Returns what
    was deleted, as `kind:name`; an endpoint that deploy did not make is left alone, with its configs, models
    and scaling."""
    deleted = []
    arn = _endpoint_arn(sagemaker, endpoint)
    if arn and not _made_here(sagemaker, arn):
        return deleted
    if autoscaling is not None:
        deleted += remove_scaling(autoscaling, endpoint)
    if arn:
        sagemaker.delete_endpoint(EndpointName=endpoint)
        waiter = sagemaker.get_waiter("endpoint_deleted")
        waiter.wait(EndpointName=endpoint, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts})
        deleted.append(f"endpoint:{endpoint}")
    ours = _ours(endpoint)
    configs = sagemaker.list_endpoint_configs
    for config, arn in _names(configs, "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn", endpoint):
        if ours(config) and _made_here(sagemaker, arn):
            sagemaker.delete_endpoint_config(EndpointConfigName=config)
            deleted.append(f"endpoint-config:{config}")
    for model, arn in _names(sagemaker.list_models, "Models", "ModelName", "ModelArn", endpoint):
        if ours(model) and _made_here(sagemaker, arn):
            sagemaker.delete_model(ModelName=model)
            deleted.append(f"model:{model}")
    return deleted


def _ours(endpoint: str) -> Callable[[str], bool]:
    """<endpoint>-<tag> exactly (tags have no dashes): `shop` must not match `shop-test-v1`, the model of an
    endpoint named `shop-test`."""
    import re

    pattern = re.compile(rf"{re.escape(endpoint)}-[a-z0-9]{{1,15}}")
    return lambda name: bool(pattern.fullmatch(name))


def _names(list_call, key: str, field: str, arn_field: str, contains: str) -> list[tuple[str, str]]:
    """(name, ARN) of every resource whose name contains `contains`, all pages."""
    names, token = [], None
    while True:
        page = list_call(NameContains=contains, MaxResults=100, **({"NextToken": token} if token else {}))
        names += [(item[field], item[arn_field]) for item in page[key]]
        token = page.get("NextToken")
        if not token:
            return names


# ---- the deploy commands (clouds/deploy.py; deploy.sh, teardown.sh) ---------------------------------------


def up(values: dict[str, str], *, project: str, dry_run: bool, **_files: object) -> None:
    """Create the SageMaker model, endpoint config and endpoint for IMAGE_URI; wait until InService."""
    # --out and --bundle do not apply: the image in ECR carries the model, nothing is staged.
    if dry_run:
        for operation, kwargs in endpoint_calls(values):
            print_call("sagemaker", operation, kwargs)
        typer.echo("# update_endpoint instead of create_endpoint when the endpoint exists (scaling detached first)")
        print_call(
            "sagemaker", "get_waiter('endpoint_in_service').wait", {"EndpointName": values["SAGEMAKER_ENDPOINT_NAME"]}
        )
        for operation, kwargs in scaling_calls(values):
            print_call("application-autoscaling", operation, kwargs)
        return
    import boto3

    sagemaker = boto3.client("sagemaker", region_name=values["AWS_REGION"])
    autoscaling = boto3.client("application-autoscaling", region_name=values["AWS_REGION"])
    typer.echo(f"deploying {values['IMAGE_URI']} to endpoint {values['SAGEMAKER_ENDPOINT_NAME']} (minutes)...")
    endpoint = deploy_endpoint(sagemaker, values, autoscaling=autoscaling)
    typer.secho(f"{endpoint['EndpointName']}: {endpoint['EndpointStatus']}", fg=typer.colors.GREEN)
    typer.echo(
        f"try it: python -m {__package__.split('.')[0]}.clouds.aws.deploy invoke --project {project} "
        "'Where is my order B11688?'"
    )


def down(values: dict[str, str], *, dry_run: bool) -> None:
    """Delete the endpoint, its endpoint configs and models, and the ECR repository with its images."""
    endpoint, repo = values["SAGEMAKER_ENDPOINT_NAME"], values["ECR_REPOSITORY"]
    if dry_run:
        resource = _variant_resource(endpoint)
        print_call(
            "application-autoscaling",
            "delete_scaling_policy",
            {"PolicyName": scaling_policy_name(endpoint), **resource},
        )
        print_call("application-autoscaling", "deregister_scalable_target", resource)
        print_call("sagemaker", "delete_endpoint", {"EndpointName": endpoint})
        typer.echo(f"# then delete_endpoint_config and delete_model for every {endpoint}-<tag> (list_* NameContains)")
        typer.echo(f"# all of these only when deploy created them (tag {CREATED_BY['Key']}={CREATED_BY['Value']})")
        print_call("ecr", "delete_repository", {"force": True, "repositoryName": repo})
        typer.echo(f"# only when deploy created it (tag {CREATED_BY['Key']}={CREATED_BY['Value']})")
        return
    import boto3

    region = values["AWS_REGION"]
    sagemaker = boto3.client("sagemaker", region_name=region)
    deleted = delete_endpoint(
        sagemaker, endpoint, autoscaling=boto3.client("application-autoscaling", region_name=region)
    )
    if f"endpoint:{endpoint}" not in deleted and _endpoint_arn(sagemaker, endpoint):
        typer.echo(
            f"kept endpoint {endpoint} with its configs and models: deploy did not create it "
            f"(no {CREATED_BY['Key']}={CREATED_BY['Value']} tag)"
        )
    removed = delete_repository(boto3.client("ecr", region_name=region), repo)
    if removed:
        deleted.append(f"ecr-repository:{repo}")
    typer.echo("\n".join(f"deleted {name}" for name in deleted) or "nothing to delete")
    if removed is None:
        typer.echo(
            f"kept ECR repository {repo}: deploy did not create it (no {CREATED_BY['Key']}={CREATED_BY['Value']} tag); "
            "delete its images yourself if they are no longer needed"
        )


app = command_group("SageMaker endpoint + ECR image of the served model.", VARIABLES, settings, up, down)


@app.command()
def repository(project: ProjectOption, dry_run: DryRunOption = False) -> None:
    """Create the ECR repository when missing; print its URI."""
    values = settings(read_environment(), project=project)
    if dry_run:
        print_call("ecr", "create_repository", {"repositoryName": values["ECR_REPOSITORY"]})
        typer.echo("# only when describe_repositories does not find it")
        return
    import boto3

    typer.echo(ensure_repository(boto3.client("ecr", region_name=values["AWS_REGION"]), values["ECR_REPOSITORY"]))


@app.command()
def invoke(project: ProjectOption, message: Annotated[str, typer.Argument(help="The user message.")]) -> None:
    """Send one chat message to the endpoint (POST /invocations) and print the answer."""
    import boto3

    values = settings(read_environment(), project=project)
    runtime = boto3.client("sagemaker-runtime", region_name=values["AWS_REGION"])
    body = {"messages": [{"role": "user", "content": message}], "max_tokens": 128}
    answer = runtime.invoke_endpoint(
        EndpointName=values["SAGEMAKER_ENDPOINT_NAME"], ContentType="application/json", Body=json.dumps(body)
    )
    typer.echo(json.loads(answer["Body"].read())["choices"][0]["message"]["content"])


if __name__ == "__main__":
    app()
