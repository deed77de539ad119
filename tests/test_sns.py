"""The SNS notification block against moto's SNS, read back through an SQS subscription."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets

import boto3
import pytest


@pytest.fixture
def aws(servers) -> dict:
    """boto3 client settings for moto."""
    return {
        "endpoint_url": f"http://127.0.0.1:{servers['moto'].port}",
        "region_name": "us-east-1",
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def credentials(aws):
    from prefect_aws import AwsCredentials

    return AwsCredentials(
        aws_access_key_id=aws["aws_access_key_id"],
        aws_secret_access_key=aws["aws_secret_access_key"],
        region_name=aws["region_name"],
        aws_client_parameters={"endpoint_url": aws["endpoint_url"]},
    )


def subscribed_queue(aws: dict, raw: bool = False) -> tuple[str, str]:
    """A new SNS topic with a new SQS queue subscribed to it; (topic ARN, queue URL)."""
    suffix = secrets.token_hex(4)
    sns = boto3.client("sns", **aws)
    sqs = boto3.client("sqs", **aws)
    topic_arn = sns.create_topic(Name=f"migration-{suffix}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"migration-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true" if raw else "false"},
    )
    return topic_arn, queue_url


def received(aws: dict, queue_url: str, count: int = 1) -> list[str]:
    """The bodies of the next `count` messages on the queue (waits up to ~10 s)."""
    sqs = boto3.client("sqs", **aws)
    bodies: list[str] = []
    for _ in range(10):
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        bodies += [m["Body"] for m in answer.get("Messages", [])]
        if len(bodies) >= count:
            break
    return bodies


def test_notify_publishes_subject_and_body(aws, credentials):
    from blocks.notify.sns import SnsNotification

    topic_arn, queue_url = subscribed_queue(aws)
    block = SnsNotification(aws_credentials=credentials, topic_arn=topic_arn)
    body = "Flow run brave-fox ended Failed.\nMigration: analytics\nJob: 1234"
    long_subject = "Migration analytics Failed:\nflow run brave-fox " + "x" * 200

    block.notify(body, subject=long_subject)

    [envelope] = received(aws, queue_url)
    message = json.loads(envelope)
    assert message["TopicArn"] == topic_arn
    assert message["Message"] == body
    # SNS takes a subject of one line, under 100 characters.
    assert message["Subject"].startswith("Migration analytics Failed: flow run brave-fox xxx")
    assert "\n" not in message["Subject"] and len(message["Subject"]) <= 99


def test_notify_from_async_code_and_raw_delivery(aws, credentials):
    """The server awaits `notify` inside its event loop; that path publishes too."""
    from blocks.notify.sns import SnsNotification

    topic_arn, queue_url = subscribed_queue(aws, raw=True)
    block = SnsNotification(aws_credentials=credentials, topic_arn=topic_arn)

    async def send():
        await block.notify("validation failed for EVENTS/0003")

    asyncio.run(send())

    assert received(aws, queue_url) == ["validation failed for EVENTS/0003"]


def test_saved_block_keeps_the_secret_out_and_loads_back(aws, credentials):
    from prefect.client.orchestration import get_client

    from blocks.notify.sns import SnsNotification

    topic_arn, queue_url = subscribed_queue(aws, raw=True)
    name = f"sns-{secrets.token_hex(4)}"
    secret = aws["aws_secret_access_key"]
    block = SnsNotification(aws_credentials=credentials, topic_arn=topic_arn)
    block.save(name)

    assert secret not in repr(block) and secret not in str(block.model_dump())
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name, "migration-sns-notification", include_secrets=False
        )
    assert secret not in json.dumps(document.data, default=str)
    assert document.block_schema and "notify" in document.block_schema.capabilities

    loaded = SnsNotification.load(name)
    assert loaded.aws_credentials.aws_secret_access_key.get_secret_value() == secret
    loaded.notify("from the saved block", subject="saved")
    assert received(aws, queue_url) == ["from the saved block"]


def test_failure_is_logged_or_raised_without_the_secret(aws, credentials, caplog):
    from prefect.blocks.abstract import NotificationError

    from blocks.notify.sns import SnsNotification

    secret = aws["aws_secret_access_key"]
    block = SnsNotification(
        aws_credentials=credentials, topic_arn="arn:aws:sns:us-east-1:123456789012:no-such-topic"
    )

    with caplog.at_level(logging.WARNING):
        block.notify("nobody listens")
    assert "no-such-topic" in caplog.text and secret not in caplog.text

    with block.raise_on_failure(), pytest.raises(NotificationError) as failed:
        block.notify("nobody listens")
    assert "no-such-topic" in failed.value.log
    assert secret not in failed.value.log and secret not in repr(failed.value)


def test_subject_and_message_limits():
    from blocks.notify.sns import MESSAGE_MAX_BYTES, sns_message, sns_subject

    assert sns_subject(None) is None
    assert sns_subject(" \n\t ") is None
    assert sns_subject("a\r\nb\tc") == "a b c"
    assert len(sns_subject("é" * 500)) == 99
    assert sns_message("") == "-"
    huge = sns_message("ü" * MESSAGE_MAX_BYTES)
    assert len(huge.encode()) <= MESSAGE_MAX_BYTES and huge.endswith("…")
