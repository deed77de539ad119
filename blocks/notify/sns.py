"""AWS SNS as a notification target for automations.

`SnsNotification` keeps the AWS credentials (a prefect-aws `AwsCredentials` block, its secret key a
`SecretStr`) apart from the one thing it does: publish a subject and a body to a topic.

Automations' "send notification" action runs inside the Prefect server, which finds a block's
class by its type slug among the modules that the `prefect.collections` entry point group names;
this project's pyproject.toml names this module there, so the server can load the block.
"""

from __future__ import annotations

import asyncio
import uuid

from botocore.exceptions import BotoCoreError, ClientError
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.abstract import NotificationBlock, NotificationError
from prefect_aws import AwsCredentials
from pydantic import Field

# SNS limits: a subject is under 100 characters, on one line; a message is at most 256 KiB.
SUBJECT_MAX_CHARS = 99
MESSAGE_MAX_BYTES = 256 * 1024


def sns_subject(subject: str | None) -> str | None:
    """`subject` as SNS accepts it: one line of printable text, under 100 characters, or None if empty."""
    if not subject:
        return None
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in subject).split())
    if len(line) > SUBJECT_MAX_CHARS:
        line = line[: SUBJECT_MAX_CHARS - 1] + "…"
    return line or None


def sns_message(body: str) -> str:
    """`body` cut to SNS's 256 KiB message limit (on a character boundary); an empty body becomes "-"."""
    data = body.encode()
    if len(data) <= MESSAGE_MAX_BYTES:
        return body or "-"
    return data[: MESSAGE_MAX_BYTES - 3].decode(errors="ignore") + "…"


class SnsNotification(NotificationBlock):
    """Publishes notifications to an AWS SNS topic through boto3."""

    _block_type_name = "Migration SNS Notification"
    _block_type_slug = "migration-sns-notification"

    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="Credentials, region and endpoint for SNS; by default boto3's own chain",
    )
    topic_arn: str = Field(description="arn:aws:sns:<region>:<account>:<topic>")

    def _publish(self, body: str, subject: str | None) -> None:
        request = {"TopicArn": self.topic_arn, "Message": sns_message(body)}
        if line := sns_subject(subject):
            request["Subject"] = line
        if self.topic_arn.endswith(".fifo"):
            request["MessageGroupId"] = "prefect-migrate"
            request["MessageDeduplicationId"] = uuid.uuid4().hex
        try:
            self.aws_credentials.get_client("sns").publish(**request)
        except (BotoCoreError, ClientError) as exc:
            # botocore's messages name the operation, the topic and AWS's error code, never the keys.
            message = f"publishing to SNS topic {self.topic_arn} failed: {exc}"
            if self._raise_on_failure:
                raise NotificationError(log=message) from None
            self.logger.warning(message)

    async def anotify(self, body: str, subject: str | None = None) -> None:
        """Publish `body` (and `subject`, if any) to the topic. A failure is logged, or raised as
        `NotificationError` inside `raise_on_failure()`."""
        await asyncio.to_thread(self._publish, body, subject)

    @async_dispatch(anotify)
    def notify(self, body: str, subject: str | None = None) -> None:  # type: ignore[override]
        """Publish `body` (and `subject`, if any) to the topic. A failure is logged, or raised as
        `NotificationError` inside `raise_on_failure()`."""
        self._publish(body, subject)
