"""Notification blocks and automations for the `migrate` flow, created or updated by name.

    python -m deployments.automations [--webhook-url URL] [--slack-webhook-url-env VAR]
        [--sns-topic-arn ARN ...] [--aws-credentials-block NAME] [--notify-block SLUG/NAME ...]
        [--name-prefix PREFIX] [--no-auto-resume] [--no-zombie-runs] [--zombie-after SECONDS] [--disabled]

Idempotent: running it again updates the blocks and automations of the same names in place, so
there is always exactly one of each. The automations:

- `migration-run-finished`: a `migrate` flow run ended Completed, Failed (or TimedOut), Crashed or Cancelled;
  notifies every configured block with the run, its state, its migration and its job.
- `migration-validation-failed`: the flow emitted `migration.validation.failed` for a chunk;
  notifies with the error, the job and the chunk.
- `migration-auto-resume`: a `migrate` flow run of a deployment crashed; runs the same deployment
  again with the same parameters, `job_id` taken from the run's `job:<id>` tag when it had none,
  and `resume_attempt` one higher (the flow gives up past `resume_attempt_count`).
- `migration-zombie-runs`: a `migrate`, `rollback` or `verify` flow run sent a heartbeat, then neither
  another one nor a final state within `--zombie-after` (default 4 minutes): its process is gone
  (kill -9, a lost machine or worker), so the run is marked Crashed. A deployment run of
  `migrate` marked so is then resumed by `migration-auto-resume`, once.

The two notifying automations are created only when at least one notification target is given;
without one, any that exist are left as they are.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect_aws import AwsCredentials
from pydantic import SecretStr

from blocks.notify.sns import SnsNotification
from deployments.templates import (
    AUTO_RESUME_PARAMETERS,
    RUN_FINISHED_BODY,
    RUN_FINISHED_SUBJECT,
    VALIDATION_FAILED_BODY,
    VALIDATION_FAILED_SUBJECT,
)
from flows.heartbeats import HEARTBEAT_SECONDS

FLOW_NAME = "migrate"
RUN_FINISHED = "migration-run-finished"
VALIDATION_FAILED = "migration-validation-failed"
AUTO_RESUME = "migration-auto-resume"
ZOMBIE_RUNS = "migration-zombie-runs"
WEBHOOK_BLOCK = "migration-webhook"
SLACK_BLOCK = "migration-slack"
SNS_BLOCK = "migration-sns"

# A run that exceeds its timeout ends in state TimedOut, of type Failed, so it is announced too.
FINISHED_STATES = ("Completed", "Failed", "TimedOut", "Crashed", "Cancelled")

# Zombie runs. A flow run sends the event `prefect.flow-run.heartbeat` every HEARTBEAT_SECONDS
# while it runs: a call of a migration flow sends its own (flows/heartbeats.py), a deployment's
# run Prefect's, every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, which prefect.yaml sets to
# HEARTBEAT_SECONDS (Prefect's minimum); Prefect's default is 180.
# A run is taken for dead after this long without a heartbeat: 8 missed heartbeats at 30 s, and
# still longer than the default 180 s, so a process started without the setting is not taken for
# dead. A live run marked Crashed would break: the server refuses to start task runs (chunks) of a
# flow run that is not Running.
ZOMBIE_AFTER = timedelta(minutes=4)
ZOMBIE_FLOWS = ("migrate", "rollback", "verify")

_NAME_PREFIX = re.compile(r"[a-z0-9-]*")
_TOPIC_ARN = re.compile(r"arn:[\w-]+:sns:(?P<region>[\w-]+):\d+:(?P<topic>[\w-]+(\.fifo)?)")


def _migrate_runs(*, of_deployment: bool = False) -> list[dict[str, str]]:
    """match_related for flow runs of flow `migrate` (and of some deployment)."""
    related = [{"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME}]
    if of_deployment:
        related.append({"prefect.resource.role": "deployment"})
    return related


def run_finished_automation(name: str, block_ids: Sequence[UUID], enabled: bool = True) -> AutomationCore:
    return AutomationCore(
        name=name,
        description="Notify when a migrate flow run ends Completed, Failed, TimedOut, Crashed or Cancelled",
        enabled=enabled,
        tags=["prefect-migrate"],
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in FINISHED_STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_migrate_runs(),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=RUN_FINISHED_SUBJECT, body=RUN_FINISHED_BODY)
            for block_id in block_ids
        ],
    )


def validation_failed_automation(
    name: str, block_ids: Sequence[UUID], enabled: bool = True
) -> AutomationCore:
    return AutomationCore(
        name=name,
        description="Notify when a migration chunk fails validation (event migration.validation.failed)",
        enabled=enabled,
        tags=["prefect-migrate"],
        trigger=EventTrigger(
            expect={"migration.validation.failed"},
            match={"prefect.resource.id": "migration.job.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id, subject=VALIDATION_FAILED_SUBJECT, body=VALIDATION_FAILED_BODY
            )
            for block_id in block_ids
        ],
    )


def auto_resume_automation(name: str, enabled: bool = True) -> AutomationCore:
    return AutomationCore(
        name=name,
        description=(
            "Run a crashed migrate deployment run again with the same job_id, so it resumes "
            "(resume_attempt + 1; the flow gives up past resume_attempt_count)"
        ),
        enabled=enabled,
        tags=["prefect-migrate"],
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_migrate_runs(of_deployment=True),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[RunDeployment(source="inferred", parameters=AUTO_RESUME_PARAMETERS)],
    )


def zombie_runs_automation(
    name: str, zombie_after: timedelta = ZOMBIE_AFTER, enabled: bool = True
) -> AutomationCore:
    """Mark a `migrate`, `rollback` or `verify` flow run Crashed when, after a heartbeat, neither another
    heartbeat nor a final state arrives within `zombie_after` (Prefect's "detect zombie flows")."""
    seconds = int(zombie_after.total_seconds())
    return AutomationCore(
        name=name,
        description=(
            f"Mark a migrate, rollback or verify flow run Crashed when it sends no heartbeat for {seconds} s "
            "(its process was killed or its machine lost)"
        ),
        enabled=enabled,
        tags=["prefect-migrate"],
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                *(f"prefect.flow-run.{state}" for state in FINISHED_STATES),
            },
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": list(ZOMBIE_FLOWS)}],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=zombie_after,
        ),
        # Not forced: the server refuses Crashed for a run that already ended (or is being
        # cancelled), so a run its worker marked Crashed first is not crashed, nor resumed, twice.
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {seconds} s: the flow run's process is gone "
                f"(marked by the automation {name})",
                force=False,
            )
        ],
    )


def sns_block_name(topic_arn: str, name_prefix: str = "") -> str:
    """The SNS block's name for a topic: `<prefix>migration-sns-<topic>`; a malformed ARN raises ValueError."""
    found = _TOPIC_ARN.fullmatch(topic_arn)
    if not found:
        raise ValueError(f"{topic_arn!r} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)")
    topic = re.sub(r"[^a-z0-9]+", "-", found["topic"].lower()).strip("-")
    return f"{name_prefix}{SNS_BLOCK}-{topic}"


def _notify_block_id(client, reference: str) -> UUID:
    """The id of a saved notification block named `<block-type-slug>/<name>`."""
    slug, _, name = reference.partition("/")
    if not slug or not name:
        raise ValueError(
            f"--notify-block {reference!r}: expected <block-type-slug>/<name>, like slack-webhook/ops"
        )
    try:
        document = client.read_block_document_by_name(name, slug, include_secrets=False)
    except ObjectNotFound:
        raise ValueError(f"--notify-block {reference!r}: no such block") from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise ValueError(f"--notify-block {reference!r}: block type {slug} cannot send notifications")
    return document.id


def _ensure(client, automation: AutomationCore) -> None:
    """Create `automation`, or update the one of its name in place (removing any duplicates)."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        client.create_automation(automation)
        return
    keep, *extra = existing
    client.update_automation(keep.id, automation)
    for duplicate in extra:
        client.delete_automation(duplicate.id)


def ensure_automations(
    *,
    webhook_url: str | None = None,
    slack_webhook_url: str | None = None,
    sns_topic_arns: Sequence[str] = (),
    aws_credentials: AwsCredentials | None = None,
    notify_blocks: Sequence[str] = (),
    name_prefix: str = "",
    auto_resume: bool = True,
    zombie_runs: bool = True,
    zombie_after: timedelta = ZOMBIE_AFTER,
    enabled: bool = True,
) -> list[str]:
    """Create or update the notification blocks and automations; return the automations' names.

    `webhook_url` gets a Custom Webhook block posting JSON {"subject", "body", "source"};
    `slack_webhook_url` a Slack Webhook block; each of `sns_topic_arns` a Migration SNS Notification
    block using `aws_credentials` (default: boto3's own chain in the topic's region). `notify_blocks`
    names saved notification blocks as `<block-type-slug>/<name>`. Every name gets `name_prefix`
    (lowercase letters, digits and dashes). `zombie_after` is how long a run may send no heartbeat
    before it is marked Crashed; it must be longer than the heartbeat interval (`HEARTBEAT_SECONDS`)
    of every process that runs the flows. A bad ARN, prefix, block reference or a `zombie_after` of
    `HEARTBEAT_SECONDS` or less raises ValueError before anything is changed.
    """
    if not _NAME_PREFIX.fullmatch(name_prefix):
        raise ValueError(f"name prefix {name_prefix!r} may hold only lowercase letters, digits and dashes")
    if zombie_runs and zombie_after <= timedelta(seconds=HEARTBEAT_SECONDS):
        raise ValueError(
            f"zombie_after {zombie_after.total_seconds():g} s is not longer than the {HEARTBEAT_SECONDS} s "
            "between heartbeats: every live run would be marked Crashed"
        )
    sns_names = [sns_block_name(arn, name_prefix) for arn in sns_topic_arns]
    with get_client(sync_client=True) as client:
        block_ids = [_notify_block_id(client, reference) for reference in notify_blocks]
        if webhook_url:
            webhook = CustomWebhookNotificationBlock(
                name="prefect-migrate",
                url=webhook_url,
                json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "prefect-migrate"},
            )
            block_ids.append(webhook.save(f"{name_prefix}{WEBHOOK_BLOCK}", overwrite=True))
        if slack_webhook_url:
            slack = SlackWebhook(url=SecretStr(slack_webhook_url))
            block_ids.append(slack.save(f"{name_prefix}{SLACK_BLOCK}", overwrite=True))
        for arn, block_name in zip(sns_topic_arns, sns_names, strict=True):
            credentials = aws_credentials or AwsCredentials(
                region_name=_TOPIC_ARN.fullmatch(arn)["region"]  # type: ignore[index]
            )
            sns = SnsNotification(aws_credentials=credentials, topic_arn=arn)
            block_ids.append(sns.save(block_name, overwrite=True))

        automations: list[AutomationCore] = []
        if block_ids:
            automations += [
                run_finished_automation(f"{name_prefix}{RUN_FINISHED}", block_ids, enabled),
                validation_failed_automation(f"{name_prefix}{VALIDATION_FAILED}", block_ids, enabled),
            ]
        if auto_resume:
            automations.append(auto_resume_automation(f"{name_prefix}{AUTO_RESUME}", enabled))
        if zombie_runs:
            automations.append(zombie_runs_automation(f"{name_prefix}{ZOMBIE_RUNS}", zombie_after, enabled))
        for automation in automations:
            _ensure(client, automation)
    return [automation.name for automation in automations]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.automations",
        description="Create or update the migrate flow's notification blocks and automations (idempotent).",
    )
    parser.add_argument("--webhook-url", help="POST JSON {subject, body, source} to this URL")
    parser.add_argument(
        "--slack-webhook-url-env",
        metavar="VAR",
        help="the environment variable holding a Slack incoming-webhook URL (a secret, so not an argument)",
    )
    parser.add_argument(
        "--sns-topic-arn",
        action="append",
        default=[],
        metavar="ARN",
        help="publish to this SNS topic (repeatable)",
    )
    parser.add_argument(
        "--aws-credentials-block",
        metavar="NAME",
        help="a saved AwsCredentials block for SNS (default: boto3's own chain, the topic's region)",
    )
    parser.add_argument(
        "--notify-block",
        action="append",
        default=[],
        metavar="SLUG/NAME",
        help="also notify this saved notification block, e.g. email/ops (repeatable)",
    )
    parser.add_argument("--name-prefix", default="", help="prefix for every block and automation name")
    parser.add_argument("--no-auto-resume", action="store_true", help="leave out migration-auto-resume")
    parser.add_argument("--no-zombie-runs", action="store_true", help="leave out migration-zombie-runs")
    parser.add_argument(
        "--zombie-after",
        type=int,
        default=int(ZOMBIE_AFTER.total_seconds()),
        metavar="SECONDS",
        help="mark a run Crashed after this long without a heartbeat (default: %(default)s; "
        f"must be over the {HEARTBEAT_SECONDS} s between heartbeats)",
    )
    parser.add_argument("--disabled", action="store_true", help="create or update the automations disabled")
    args = parser.parse_args(argv)

    slack_url = None
    if args.slack_webhook_url_env:
        slack_url = os.environ.get(args.slack_webhook_url_env)
        if not slack_url:
            parser.error(f"--slack-webhook-url-env: ${args.slack_webhook_url_env} is not set")
    credentials = None
    if args.aws_credentials_block:
        try:
            credentials = AwsCredentials.load(args.aws_credentials_block)
        except ValueError:
            parser.error(
                f"--aws-credentials-block: no saved AwsCredentials block named {args.aws_credentials_block!r}"
            )
    try:
        names = ensure_automations(
            webhook_url=args.webhook_url,
            slack_webhook_url=slack_url,
            sns_topic_arns=args.sns_topic_arn,
            aws_credentials=credentials,
            notify_blocks=args.notify_block,
            name_prefix=args.name_prefix,
            auto_resume=not args.no_auto_resume,
            zombie_runs=not args.no_zombie_runs,
            zombie_after=timedelta(seconds=args.zombie_after),
            enabled=not args.disabled,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not any((args.webhook_url, slack_url, args.sns_topic_arn, args.notify_block)):
        print("no notification target given: the notifying automations were left as they are")
    print("automations:", ", ".join(names) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
