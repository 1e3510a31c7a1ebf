#!/usr/bin/env python3
"""The task definitions in deploy/task-definitions/, generated from the
CloudFormation template so the two cannot disagree, and checked against
the local emulator.

  task_definitions.py --write     regenerate deploy/task-definitions/*.json
  task_definitions.py --check     fail if the files differ from the template
  task_definitions.py --register ENDPOINT
                                  register each (placeholders filled)
                                  against ECS at ENDPOINT
  task_definitions.py --stack ENDPOINT
                                  create the stack in CloudFormation at
                                  ENDPOINT (a VPC and subnets made there)
                                  and check what it made
  task_definitions.py --containers
                                  run each task definition's container
                                  (the images compose builds) with exactly
                                  its environment, its memory limit, init
                                  and health check, against the emulator
                                  in a container beside it, and wait for
                                  it to be healthy
  task_definitions.py --bounds BIN_DIR
                                  run each binary's --check-config on
                                  every task definition the template makes
                                  at its defaults and with each parameter
                                  at its bounds; fail on a number the
                                  template leaves unbounded

In the files, parameters of the template appear with their defaults, and
what the stack creates appears as a placeholder, `${JobQueueUrl}` for
instance: fill them (envsubst, sed) before `aws ecs register-task-definition
--cli-input-json file://…`.
"""
import json
import os
import pathlib
import subprocess
import sys

from cfnlint.decode import decode_str

HERE = pathlib.Path(__file__).resolve().parent
TEMPLATE = HERE / "url2png.yaml"
OUT = HERE / "task-definitions"
TASKS = {
    "ProducerTaskDefinition": "producer",
    "WorkerTaskDefinition": "worker",
    "ScalerTaskDefinition": "scaler",
}
# What the stack creates, as placeholders.
PLACEHOLDERS = {
    "JobQueue": "${JobQueueUrl}",
    "WebhookQueue": "${WebhookQueueUrl}",
    "ImageBucket": "${BucketName}",
    "Cluster": "${ClusterName}",
    "LogGroup": "${LogGroupName}",
    "AWS::Region": "${AwsRegion}",
    "ExecutionRole.Arn": "${ExecutionRoleArn}",
    "ProducerRole.Arn": "${ProducerTaskRoleArn}",
    "WorkerRole.Arn": "${WorkerTaskRoleArn}",
    "ScalerRole.Arn": "${ScalerTaskRoleArn}",
}
# Values for string parameters whose default leaves a feature off, so the
# bounds check also runs the task with it on.
SAMPLES = {"WebhookSecret": "sample-webhook-secret"}
# Keys whose own keys are data, not API fields.
DATA_KEYS = {"options"}


def condition(value, params, overrides, conditions):
    """Evaluate a template condition (Fn::Not, Fn::Equals, Fn::And,
    Fn::Or, Condition) on the parameters."""
    (fn, arg), = value.items()
    if fn == "Condition":
        return condition(conditions[arg], params, overrides, conditions)
    if fn == "Fn::Not":
        return not condition(arg[0], params, overrides, conditions)
    if fn == "Fn::And":
        return all(condition(a, params, overrides, conditions) for a in arg)
    if fn == "Fn::Or":
        return any(condition(a, params, overrides, conditions) for a in arg)
    if fn == "Fn::Equals":
        a, b = (resolve(x, params, overrides, conditions) for x in arg)
        return str(a) == str(b)
    raise SystemExit(f"{fn} is not supported in conditions")


def resolve(value, params, overrides=None, conditions=None):
    overrides = overrides or {}
    conditions = conditions or {}
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Fn::If":
            name, then, otherwise = arg
            chosen = then if condition({"Condition": name}, params, overrides, conditions) else otherwise
            return resolve(chosen, params, overrides, conditions)
        if fn == "Ref":
            if arg in overrides:
                return str(overrides[arg])
            if arg in params:
                if "Default" not in params[arg]:
                    return "${" + arg + "}"
                return str(params[arg]["Default"])
            return PLACEHOLDERS[arg]
        if fn == "Fn::GetAtt":
            name = ".".join(arg) if isinstance(arg, list) else arg
            return PLACEHOLDERS[name]
        if fn.startswith("Fn::"):
            raise SystemExit(f"{fn} is not supported in task definitions")
    if isinstance(value, dict):
        return {k: resolve(v, params, overrides, conditions) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, params, overrides, conditions) for v in value]
    return value


def refs(value):
    """The names a value refers to with `Ref`."""
    if isinstance(value, dict):
        if len(value) == 1 and "Ref" in value:
            return {value["Ref"]}
        return set().union(*(refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value)) if value else set()
    return set()


def bound_cases(params, names):
    """The defaults; each parameter at each of its bounds (or allowed
    values), the others at their defaults; every number at its minimum, and
    at its maximum; and each at one end with all the others at the other
    (which is where two settings the binary checks against each other
    meet: a heartbeat at its largest with the shortest visibility)."""
    yield "defaults", {}
    numbers = sorted(n for n in names if "MinValue" in params[n] and "MaxValue" in params[n])
    for name in sorted(names):
        spec = params[name]
        for key in ("MinValue", "MaxValue"):
            if key in spec:
                yield f"{name}={spec[key]} ({key})", {name: spec[key]}
        for allowed in spec.get("AllowedValues", []):
            yield f"{name}={allowed}", {name: allowed}
        if name in SAMPLES:
            yield f"{name} set", {name: SAMPLES[name]}
    lows = {n: params[n]["MinValue"] for n in numbers}
    highs = {n: params[n]["MaxValue"] for n in numbers}
    yield "every number at its minimum", lows
    yield "every number at its maximum", highs
    for name in numbers:
        yield f"{name} at its maximum, the others at their minimum", {**lows, name: highs[name]}
        yield f"{name} at its minimum, the others at their maximum", {**highs, name: lows[name]}


def check_bounds(bin_dir):
    template, matches = decode_str(TEMPLATE.read_text())
    if matches:
        raise SystemExit(f"cannot read {TEMPLATE}: {matches}")
    params = template.get("Parameters", {})
    problems = []
    cases = 0
    for logical, name in TASKS.items():
        properties = template["Resources"][logical]["Properties"]
        used = {n for n in refs(properties) if n in params}
        unbounded = sorted(
            n for n in used
            if params[n].get("Type") == "Number" and "AllowedValues" not in params[n]
            and not ("MinValue" in params[n] and "MaxValue" in params[n])
        )
        problems += [f"{name}: parameter {n} has no MinValue and MaxValue" for n in unbounded]
        binary = pathlib.Path(bin_dir) / f"url2png-{name}"
        for case, overrides in bound_cases(params, used):
            resolved = resolve(properties, params, overrides, template.get("Conditions", {}))
            task = json.loads(fill(json.dumps(as_api(resolved))))
            for container in task["containerDefinitions"]:
                env = {p["name"]: p["value"] for p in container.get("environment", [])}
                # What ECS and the image provide besides the task's own.
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_REGION": "us-east-1", **env}
                run = subprocess.run([str(binary), "--check-config"], env=env,
                                     capture_output=True, text=True)
                cases += 1
                if run.returncode != 0:
                    problems.append(f"{name} with {case}: {(run.stderr or run.stdout).strip()}")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{cases} task definitions checked by their binaries; {len(problems)} refused or unbounded")
    return 1 if problems else 0


def camel(value, data=False):
    if isinstance(value, dict):
        return {
            (k if data else k[:1].lower() + k[1:]): camel(v, (k[:1].lower() + k[1:]) in DATA_KEYS)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def as_api(properties):
    """CloudFormation's properties → RegisterTaskDefinition's input."""
    task = camel(properties)
    for key in ("cpu", "memory"):
        task[key] = str(task[key])
    for container in task["containerDefinitions"]:
        for pair in container.get("environment", []):
            pair["value"] = str(pair["value"])
    return task


def generate():
    template, matches = decode_str(TEMPLATE.read_text())
    if matches:
        raise SystemExit(f"cannot read {TEMPLATE}: {matches}")
    params = template.get("Parameters", {})
    out = {}
    for logical, name in TASKS.items():
        properties = template["Resources"][logical]["Properties"]
        resolved = resolve(properties, params, conditions=template.get("Conditions", {}))
        out[name] = json.dumps(as_api(resolved), indent=2) + "\n"
    return out


def fill(text, account="123456789012", region="us-east-1", sqs=None):
    sqs = sqs or f"https://sqs.{region}.amazonaws.com"
    values = {
        "JobQueueUrl": f"{sqs}/{account}/url2png-jobs",
        "WebhookQueueUrl": f"{sqs}/{account}/url2png-webhooks",
        "BucketName": "url2png-images",
        "ClusterName": "url2png",
        "LogGroupName": "url2png",
        "AwsRegion": region,
        "ExecutionRoleArn": f"arn:aws:iam::{account}:role/url2png-execution",
        "ProducerTaskRoleArn": f"arn:aws:iam::{account}:role/url2png-producer",
        "WorkerTaskRoleArn": f"arn:aws:iam::{account}:role/url2png-worker",
        "ScalerTaskRoleArn": f"arn:aws:iam::{account}:role/url2png-scaler",
        "ProducerImage": f"{account}.dkr.ecr.{region}.amazonaws.com/url2png-producer:latest",
        "WorkerImage": f"{account}.dkr.ecr.{region}.amazonaws.com/url2png-worker:latest",
        "ScalerImage": f"{account}.dkr.ecr.{region}.amazonaws.com/url2png-scaler:latest",
    }
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, text
    return text


def main(argv):
    mode = argv[1] if len(argv) > 1 else "--check"
    generated = generate()
    if mode == "--write":
        OUT.mkdir(exist_ok=True)
        for name, text in generated.items():
            (OUT / f"{name}.json").write_text(text)
        return 0
    if mode == "--check":
        stale = [n for n, t in generated.items() if not (OUT / f"{n}.json").exists() or (OUT / f"{n}.json").read_text() != t]
        if stale:
            print(f"deploy/task-definitions out of date for {stale}: run deploy/task_definitions.py --write", file=sys.stderr)
            return 1
        return 0
    if mode == "--register":
        import boto3

        ecs = boto3.client("ecs", endpoint_url=argv[2], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for name in TASKS.values():
            task = json.loads(fill((OUT / f"{name}.json").read_text()))
            arn = ecs.register_task_definition(**task)["taskDefinition"]["taskDefinitionArn"]
            print(f"registered {arn}")
        return 0
    if mode == "--stack":
        return create_stack(argv[2])
    if mode == "--bounds":
        return check_bounds(argv[2])
    if mode == "--containers":
        return run_containers()
    print(__doc__, file=sys.stderr)
    return 2


CONTAINER_LABEL = "url2png.test=ecs"
CONTAINER_NETWORK = "url2png-ecs-test"
LOCAL_IMAGES = {"${ProducerImage}": "localhost/url2png-producer",
                "${WorkerImage}": "localhost/url2png-worker",
                "${ScalerImage}": "localhost/url2png-scaler"}


def podman(*args, check=True):
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True)


def run_containers():
    """Each task definition's container, as ECS would start it."""
    import time
    import urllib.request

    import boto3

    compose = (HERE.parent / "compose.yaml").read_text()
    moto_version = compose.split("${MOTO_VERSION:-", 1)[1].split("}", 1)[0]
    podman("rm", "-f", "-a", "--filter", f"label={CONTAINER_LABEL}", check=False)
    podman("network", "rm", "-f", CONTAINER_NETWORK, check=False)
    podman("network", "create", CONTAINER_NETWORK)
    failed = []
    try:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        podman("run", "-d", "--name", "url2png-ecs-moto", "--label", CONTAINER_LABEL,
               "--network", CONTAINER_NETWORK, "--network-alias", "moto",
               "-p", f"127.0.0.1:{port}:5000", f"docker.io/motoserver/moto:{moto_version}")
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        session = boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                                aws_secret_access_key="testing")
        sqs = session.client("sqs", endpoint_url=endpoint)
        for name in ("url2png-jobs", "url2png-webhooks"):
            sqs.create_queue(QueueName=name)
        session.client("s3", endpoint_url=endpoint).create_bucket(Bucket="url2png-images")
        ecs = session.client("ecs", endpoint_url=endpoint)
        ecs.create_cluster(clusterName="url2png")
        ecs.create_service(cluster="url2png", serviceName="url2png-worker", desiredCount=0)

        for name in TASKS.values():
            task = json.loads(fill((OUT / f"{name}.json").read_text(), sqs="http://moto:5000"))
            for container in task["containerDefinitions"]:
                problem = run_task_container(name, task, container)
                print(f"task {name}, container {container['name']}: {problem or 'healthy'}",
                      file=sys.stderr)
                if problem:
                    failed.append(name)
    finally:
        podman("rm", "-f", "-a", "--filter", f"label={CONTAINER_LABEL}", check=False)
        podman("network", "rm", "-f", CONTAINER_NETWORK, check=False)
    return 1 if failed else 0


def run_task_container(name, task, container):
    """Start one container of a task definition and wait for its health
    check; the reason it failed, or None."""
    import time

    image = container["image"]
    for placeholder, local in LOCAL_IMAGES.items():
        image = image.replace(fill(placeholder), local)
    args = ["run", "-d", "--name", f"url2png-ecs-{name}", "--label", CONTAINER_LABEL,
            "--network", CONTAINER_NETWORK]
    # What ECS gives the task: its environment, and the emulator's address
    # and credentials in place of the task role.
    for variable in container.get("environment", []):
        args += ["-e", f"{variable['name']}={variable['value']}"]
    args += ["-e", "AWS_ENDPOINT_URL=http://moto:5000", "-e", "AWS_REGION=us-east-1",
             "-e", "AWS_ACCESS_KEY_ID=testing", "-e", "AWS_SECRET_ACCESS_KEY=testing"]
    if container.get("linuxParameters", {}).get("initProcessEnabled"):
        args.append("--init")
    memory = container.get("memory") or task.get("memory")
    if memory:
        args += ["--memory", f"{memory}m"]
    if container.get("stopTimeout"):
        args += ["--stop-timeout", str(container["stopTimeout"])]
    check = container.get("healthCheck")
    if not check:
        return "no healthCheck in the task definition"
    # ECS's command is Docker's HealthConfig.Test: ["CMD", argv...] or
    # ["CMD-SHELL", line]. podman (4.3) splits a JSON array that starts
    # with "CMD" on whitespace, quotes and all; without the "CMD" it
    # takes the array as the argv.
    command = check["command"]
    if command[:1] == ["CMD"]:
        command = command[1:]
    args += ["--health-cmd", json.dumps(command),
             "--health-interval", f"{check.get('interval', 30)}s",
             "--health-timeout", f"{check.get('timeout', 5)}s",
             "--health-retries", str(check.get("retries", 3)),
             "--health-start-period", f"{check.get('startPeriod', 0)}s"]
    started = podman(*args, image, check=False)
    if started.returncode:
        return f"podman run failed: {started.stderr.strip()}"
    cid = f"url2png-ecs-{name}"
    # ECS marks the task unhealthy after startPeriod plus retries failed
    # checks; no systemd here to run them on a timer, so run them.
    deadline = time.monotonic() + check.get("startPeriod", 0) + check.get("interval", 30) * check.get("retries", 3)
    while time.monotonic() < deadline:
        if podman("healthcheck", "run", cid, check=False).returncode == 0:
            return None
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout.split()
        if state and state[0] != "running":
            logs = podman("logs", "--tail", "20", cid, check=False)
            return f"exited {state[1:]}: {(logs.stdout + logs.stderr).strip()}"
        time.sleep(1)
    logs = podman("logs", "--tail", "20", cid, check=False)
    return f"not healthy in time: {(logs.stdout + logs.stderr).strip()}"


def create_stack(endpoint):
    import boto3

    session = boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    client = lambda name: session.client(name, endpoint_url=endpoint)  # noqa: E731
    ec2, cfn, sqs, s3, ecs = (client(n) for n in ("ec2", "cloudformation", "sqs", "s3", "ecs"))
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24")["Subnet"]["SubnetId"]
        for i in range(4)
    ]
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/url2png-{}:latest"
    cfn.create_stack(
        StackName="url2png",
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[
            {"ParameterKey": "VpcId", "ParameterValue": vpc},
            {"ParameterKey": "PublicSubnetIds", "ParameterValue": ",".join(subnets[:2])},
            {"ParameterKey": "PrivateSubnetIds", "ParameterValue": ",".join(subnets[2:])},
            {"ParameterKey": "ProducerImage", "ParameterValue": image.format("producer")},
            {"ParameterKey": "WorkerImage", "ParameterValue": image.format("worker")},
            {"ParameterKey": "ScalerImage", "ParameterValue": image.format("scaler")},
            {"ParameterKey": "MaxReceiveCount", "ParameterValue": "4"},
            {"ParameterKey": "WebhookSecret", "ParameterValue": "stack-webhook-secret"},
            {"ParameterKey": "WebhookMaxAttempts", "ParameterValue": "7"},
        ],
    )
    stack = cfn.describe_stacks(StackName="url2png")["Stacks"][0]
    status = stack["StackStatus"]
    if status != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName="url2png")["StackEvents"]
        reasons = [e.get("ResourceStatusReason") for e in events if e.get("ResourceStatusReason")]
        raise SystemExit(f"stack {status}: {reasons}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    for key in ("ServiceUrl", "QueueUrl", "DeadLetterQueueUrl", "WebhookQueueUrl",
                "WebhookDeadLetterQueueUrl", "BucketName", "ClusterName"):
        assert outputs.get(key), f"output {key} missing: {outputs}"
    attributes = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 4, redrive
    assert attributes["MaximumMessageSize"] == "1048576", attributes
    assert attributes["VisibilityTimeout"] == "60", attributes
    hooks = sqs.get_queue_attributes(
        QueueUrl=outputs["WebhookQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    hooks_redrive = json.loads(hooks["RedrivePolicy"])
    assert int(hooks_redrive["maxReceiveCount"]) == 7, hooks_redrive
    assert hooks_redrive["deadLetterTargetArn"].endswith(
        outputs["WebhookDeadLetterQueueUrl"].rsplit("/", 1)[-1]
    ), hooks_redrive
    s3.head_bucket(Bucket=outputs["BucketName"])
    services = ecs.list_services(cluster=outputs["ClusterName"])["serviceArns"]
    names = sorted(arn.rsplit("/", 1)[-1] for arn in services)
    assert names == ["url2png-producer", "url2png-scaler", "url2png-worker"], names
    families = {
        arn.rsplit("/", 1)[-1].split(":")[0]
        for arn in ecs.list_task_definitions()["taskDefinitionArns"]
    }
    assert {"url2png-producer", "url2png-worker", "url2png-scaler"} <= families, families
    print(f"stack created: {sorted(outputs)}; services {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
