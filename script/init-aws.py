#!/usr/bin/env python3
"""Create the fleet's queue, dead-letter queue, webhook deliveries queue
(with its own dead-letter queue), bucket and (for the scaler)
an ECS cluster with a worker service in an AWS endpoint.

Used by script/server against a local moto_server, and by the compose
file's emulator at its start. Idempotent: existing resources are kept.

Settings (environment):
  AWS_ENDPOINT_URL              where to create them (required)
  URL2PNG_QUEUE_NAME            main queue name (default url2png-jobs)
  URL2PNG_DLQ_NAME              dead-letter queue name (default <queue>-dlq)
  URL2PNG_MAX_RECEIVE_COUNT     receives before a message is dead-lettered (default 5)
  URL2PNG_VISIBILITY_TIMEOUT    main queue visibility timeout, seconds (default 60)
  URL2PNG_WEBHOOK_QUEUE_NAME    webhook deliveries queue (default url2png-webhooks)
  URL2PNG_WEBHOOK_MAX_RECEIVE_COUNT  attempts before a delivery is dead-lettered (default 20)
  URL2PNG_BUCKET                bucket name (default url2png-images)
  URL2PNG_ECS_CLUSTER           ECS cluster name (default url2png)
  URL2PNG_ECS_SERVICE           worker service name (default url2png-worker)

The ECS service stands for the worker service the scaler sizes; in an
emulator it runs nothing (the worker runs as a process beside it).

Prints the queue URL, DLQ URL, webhook queue URL, bucket, cluster and service
as KEY=VALUE lines.
"""
import json
import os
import sys

import boto3


def main() -> int:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        print("AWS_ENDPOINT_URL is not set", file=sys.stderr)
        return 2
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    queue = os.environ.get("URL2PNG_QUEUE_NAME", "url2png-jobs")
    dlq = os.environ.get("URL2PNG_DLQ_NAME", f"{queue}-dlq")
    bucket = os.environ.get("URL2PNG_BUCKET", "url2png-images")
    max_receive = os.environ.get("URL2PNG_MAX_RECEIVE_COUNT", "5")
    visibility = os.environ.get("URL2PNG_VISIBILITY_TIMEOUT", "60")

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region)

    def with_dlq(name, dead_name, attributes, receives):
        """Create `dead_name`, then `name` redriving to it; their URLs."""
        dead_url = sqs.create_queue(QueueName=dead_name)["QueueUrl"]
        dead_arn = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": receives})
        url = sqs.create_queue(
            QueueName=name, Attributes={**attributes, "RedrivePolicy": redrive}
        )["QueueUrl"]
        return url, dead_url

    queue_url, dlq_url = with_dlq(queue, dlq, {"VisibilityTimeout": visibility}, max_receive)
    webhooks = os.environ.get("URL2PNG_WEBHOOK_QUEUE_NAME", "url2png-webhooks")
    webhook_queue_url, _ = with_dlq(
        webhooks,
        f"{webhooks}-dlq",
        {"MessageRetentionPeriod": "1209600"},
        os.environ.get("URL2PNG_WEBHOOK_MAX_RECEIVE_COUNT", "20"),
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)

    cluster = os.environ.get("URL2PNG_ECS_CLUSTER", "url2png")
    service = os.environ.get("URL2PNG_ECS_SERVICE", "url2png-worker")
    ecs = boto3.client("ecs", endpoint_url=endpoint, region_name=region)
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(
        family=service,
        containerDefinitions=[{"name": "worker", "image": "url2png-worker", "memory": 2048}],
    )
    found = ecs.describe_services(cluster=cluster, services=[service])["services"]
    if not any(s.get("status") == "ACTIVE" for s in found):
        ecs.create_service(
            cluster=cluster, serviceName=service, taskDefinition=service, desiredCount=1
        )
        ecs.update_service(cluster=cluster, service=service, desiredCount=1)

    print(f"URL2PNG_QUEUE_URL={queue_url}")
    print(f"URL2PNG_DLQ_URL={dlq_url}")
    print(f"URL2PNG_WEBHOOK_QUEUE_URL={webhook_queue_url}")
    print(f"URL2PNG_BUCKET={bucket}")
    print(f"URL2PNG_ECS_CLUSTER={cluster}")
    print(f"URL2PNG_ECS_SERVICE={service}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
