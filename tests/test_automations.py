"""The automations against the session's real Prefect server: notifications reach a local HTTP
receiver (and SNS, through the server loading our block), and a crashed deployment run is run again.

Every test's blocks and automations carry a prefix of their own and are deleted afterwards, so
they never act on other tests' runs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import write_migrations

ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """A local HTTP server that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                receiver.messages.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, matches: Callable[[dict], bool], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if matches(message):
                    return message
            time.sleep(0.5)
        raise AssertionError(f"no matching message within {timeout}s; got {self.messages}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A name prefix for one test; its automations and blocks are deleted afterwards."""
    from prefect.client.orchestration import get_client

    name_prefix = f"t{secrets.token_hex(3)}-"
    yield name_prefix
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(name_prefix):
                client.delete_automation(automation.id)
        for document in client.read_block_documents():
            if document.name and document.name.startswith(name_prefix):
                client.delete_block_document(document.id)


def _automations(prefix: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [a for a in client.read_automations() if a.name.startswith(prefix)]


def test_running_twice_leaves_one_of_each(prefix):
    from prefect.client.orchestration import get_client

    from deployments.automations import ensure_automations

    options = dict(
        webhook_url="http://127.0.0.1:9/hook",
        slack_webhook_url="https://hooks.slack.com/services/T000/B000/secret-part",
        sns_topic_arns=["arn:aws:sns:us-east-1:123456789012:migration_alerts"],
        name_prefix=prefix,
        enabled=False,  # never acts on other tests' runs
    )
    first = ensure_automations(**options)
    second = ensure_automations(**options)

    expected = {f"{prefix}migration-run-finished", f"{prefix}migration-validation-failed"}
    expected |= {f"{prefix}migration-auto-resume", f"{prefix}migration-zombie-runs"}
    assert set(first) == set(second) == expected
    automations = _automations(prefix)
    assert sorted(a.name for a in automations) == sorted(expected)
    assert not any(a.enabled for a in automations)
    with get_client(sync_client=True) as client:
        blocks = [d for d in client.read_block_documents() if d.name and d.name.startswith(prefix)]
    assert sorted((d.name, d.block_type.slug) for d in blocks) == [
        (f"{prefix}migration-slack", "slack-webhook"),
        (f"{prefix}migration-sns-migration-alerts", "migration-sns-notification"),
        (f"{prefix}migration-webhook", "custom-webhook"),
    ]
    # Both notifying automations notify every block, and name the blocks that exist now.
    block_ids = {d.id for d in blocks}
    for automation in automations:
        if automation.name.endswith(("migration-run-finished", "migration-validation-failed")):
            assert {a.block_document_id for a in automation.actions} == block_ids


def test_command_line_twice(prefix):
    from prefect.client.orchestration import get_client

    slack_url = "https://hooks.slack.com/services/T000/B000/" + secrets.token_hex(8)
    command = [
        sys.executable,
        "-m",
        "deployments.automations",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
        "--slack-webhook-url-env",
        "TEST_SLACK_URL",
        "--name-prefix",
        prefix,
        "--no-auto-resume",
        "--zombie-after",
        "300",
        "--disabled",
    ]
    env = {**os.environ, "TEST_SLACK_URL": slack_url}
    for _ in range(2):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert slack_url not in done.stdout + done.stderr
    assert (
        f"automations: {prefix}migration-run-finished, {prefix}migration-validation-failed, "
        f"{prefix}migration-zombie-runs\n" in done.stdout
    )
    automations = {a.name: a for a in _automations(prefix)}
    assert sorted(automations) == [
        f"{prefix}migration-run-finished",
        f"{prefix}migration-validation-failed",
        f"{prefix}migration-zombie-runs",
    ]
    assert automations[f"{prefix}migration-zombie-runs"].trigger.within == timedelta(seconds=300)
    with get_client(sync_client=True) as client:
        slack = client.read_block_document_by_name(f"{prefix}migration-slack", "slack-webhook")
    assert slack.data["url"] == slack_url

    unset = subprocess.run(
        [*command[:5], "--slack-webhook-url-env", "NO_SUCH_VARIABLE_SET"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unset.returncode == 2 and "NO_SUCH_VARIABLE_SET is not set" in unset.stderr
    too_soon = subprocess.run(
        [*command[:5], "--zombie-after", "30"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert too_soon.returncode == 2 and "every live run would be marked Crashed" in too_soon.stderr


def test_bad_input_changes_nothing(prefix):
    from deployments.automations import ensure_automations

    with pytest.raises(ValueError, match="not an SNS topic ARN"):
        ensure_automations(webhook_url="http://127.0.0.1:9/", sns_topic_arns=["my-topic"], name_prefix=prefix)
    with pytest.raises(ValueError, match="no such block"):
        ensure_automations(notify_blocks=["slack-webhook/does-not-exist"], name_prefix=prefix)
    with pytest.raises(ValueError, match="name prefix"):
        ensure_automations(webhook_url="http://127.0.0.1:9/", name_prefix="Bad Prefix")
    with pytest.raises(ValueError, match="not longer than the 30 s between heartbeats"):
        ensure_automations(
            webhook_url="http://127.0.0.1:9/", name_prefix=prefix, zombie_after=timedelta(seconds=20)
        )
    assert _automations(prefix) == []


def test_an_unknown_aws_credentials_block_is_a_usage_error(prefix, capsys):
    from deployments.automations import main

    topic = "arn:aws:sns:us-east-1:123456789012:migrations"
    with pytest.raises(SystemExit) as exited:
        main(["--sns-topic-arn", topic, "--aws-credentials-block", "no-such-block", "--name-prefix", prefix])
    assert exited.value.code == 2
    assert (
        "--aws-credentials-block: no saved AwsCredentials block named 'no-such-block'"
        in capsys.readouterr().err
    )
    assert _automations(prefix) == []


def _failed_migrate_run(tmp_path, servers) -> uuid.UUID:
    """Run flow `migrate` for a migration its file does not define: it fails at once (ConfigError)."""
    from flows.migrate import migrate

    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        "unused",
        [{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}],
    )
    state = migrate(source_name="nope", migrations_file=str(path), return_state=True)
    assert state.is_failed()
    return state.state_details.flow_run_id


def test_failed_run_reaches_the_webhook_and_sns(tmp_path, servers, receiver, prefix):
    """The server renders the notification and sends it through both blocks: the webhook's, and
    ours for SNS (which the server finds through the `prefect.collections` entry point)."""
    from prefect.client.orchestration import get_client
    from prefect_aws import AwsCredentials

    from deployments.automations import ensure_automations
    from tests.test_sns import received, subscribed_queue

    aws = {
        "endpoint_url": f"http://127.0.0.1:{servers['moto'].port}",
        "region_name": "us-east-1",
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    topic_arn, queue_url = subscribed_queue(aws, raw=True)
    credentials = AwsCredentials(
        aws_access_key_id=aws["aws_access_key_id"],
        aws_secret_access_key=aws["aws_secret_access_key"],
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": aws["endpoint_url"]},
    )
    ensure_automations(
        webhook_url=receiver.url,
        sns_topic_arns=[topic_arn],
        aws_credentials=credentials,
        name_prefix=prefix,
        auto_resume=False,
        zombie_runs=False,
    )

    flow_run_id = _failed_migrate_run(tmp_path, servers)
    with get_client(sync_client=True) as client:
        flow_run_name = client.read_flow_run(flow_run_id).name

    message = receiver.wait_for(lambda m: flow_run_name in m.get("subject", ""))
    assert message["source"] == "prefect-migrate"
    assert message["subject"] == f"Migration nope Failed: flow run {flow_run_name}"
    body = message["body"]
    assert f"Flow run {flow_run_name} ({flow_run_id}) of flow migrate ended Failed." in body
    assert "Migration: nope" in body
    assert "Job: none yet" in body
    assert "unknown source_name 'nope'" in body

    sns_bodies = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(flow_run_name in b for b in sns_bodies):
        sns_bodies += received(aws, queue_url)
    assert any(f"Flow run {flow_run_name} ({flow_run_id})" in b for b in sns_bodies), sns_bodies


def test_validation_failed_event_reaches_the_webhook(receiver, prefix):
    from prefect.events import emit_event

    from deployments.automations import ensure_automations

    ensure_automations(webhook_url=receiver.url, name_prefix=prefix, auto_resume=False, zombie_runs=False)
    job = f"test-{secrets.token_hex(3)}"
    # The server's trigger service learns of a new automation a moment after it is saved; an
    # event it sees before then matches nothing. So the event is sent again until it notifies.
    message = None
    for _ in range(6):
        emit_event(
            event="migration.validation.failed",
            resource={
                "prefect.resource.id": f"migration.job.{job}",
                "migration.table": "EVENTS",
                "migration.chunk": "0007",
            },
            payload={"error": "checksum mismatch in column AMOUNT"},
        )
        try:
            message = receiver.wait_for(lambda m: job in m.get("subject", ""), timeout=10)
            break
        except AssertionError:
            continue
    assert message is not None, f"no notification for job {job} within 60 s; got {receiver.messages}"
    assert message["subject"] == f"Migration validation failed: job {job}, EVENTS chunk 0007"
    assert f"Job: {job}\nTable: EVENTS\nChunk: 0007\n" in message["body"]
    assert "Error: checksum mismatch in column AMOUNT" in message["body"]


def test_auto_resume_parameters_render_from_the_crashed_run(prefix):
    """The stored template, rendered as the server renders it, against a run as the API returns it."""
    from prefect.client.orchestration import get_client
    from prefect.server.schemas.responses import FlowRunResponse
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from deployments.automations import ensure_automations

    ensure_automations(name_prefix=prefix, zombie_runs=False, enabled=False)
    [automation] = _automations(prefix)
    [action] = automation.actions
    assert (action.type, action.source, action.deployment_id) == ("run-deployment", "inferred", None)
    assert automation.trigger.expect == {"prefect.flow-run.Crashed"}

    def render(parameters: dict, tags: list[str]) -> dict:
        flow_run = FlowRunResponse.model_validate(
            {"id": str(uuid.uuid4()), "flow_id": str(uuid.uuid4()), "name": "x", "parameters": parameters}
            | {"tags": tags}
        )
        return hydrate(
            action.parameters, HydrationContext(render_jinja=True, jinja_context={"flow_run": flow_run})
        )

    crashed = {"source_name": "analytics", "job_id": None, "batch_size": 500, "resume_attempt": 0}
    assert render(crashed, ["migration", "job:abc123", "migration:analytics"]) == {
        "source_name": "analytics",
        "job_id": "abc123",
        "batch_size": 500,
        "resume_attempt": 1,
    }
    # A job_id passed to the run wins over its tag; an earlier attempt count goes up by one.
    assert render({**crashed, "job_id": "given", "resume_attempt": 2}, ["job:other"])["job_id"] == "given"
    assert render({**crashed, "resume_attempt": 2}, [])["resume_attempt"] == 3
    # Crashed before its job was known: no job_id, so the rerun resumes the newest unfinished job.
    assert render({"source_name": "analytics"}, ["migration"]) == {
        "source_name": "analytics",
        "job_id": None,
        "resume_attempt": 1,
    }
    with get_client(sync_client=True) as client:
        assert client.read_automation(automation.id).enabled is False


def test_crashed_deployment_run_is_run_again(prefix):
    """A run of a `migrate` deployment that crashes is scheduled again by the server, with its job.

    No worker serves this deployment's pool, so nothing runs: the test reads the new run's parameters.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.states import Crashed

    from deployments.automations import ensure_automations

    ensure_automations(name_prefix=prefix)
    pool = f"{prefix}pool"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("migrate")
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=f"{prefix}analytics",
            work_pool_name=pool,
            entrypoint="flows/migrate.py:migrate",
            parameters={"source_name": "analytics"},
        )
        try:
            run = client.create_flow_run_from_deployment(
                deployment_id, parameters={"batch_size": 700}, tags=["job:job-42"]
            )
            client.set_flow_run_state(run.id, Crashed(message="worker died"), force=True)

            deadline = time.monotonic() + 60
            reruns = []
            while time.monotonic() < deadline and not reruns:
                time.sleep(1)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    flow_run_filter=FlowRunFilter(),
                )
                reruns = [r for r in runs if r.id != run.id]
            assert reruns, "the crashed run was not run again within 60s"
            rerun = reruns[0]
            assert rerun.parameters == {
                **run.parameters,
                "job_id": "job-42",
                "resume_attempt": 1,
            }
            assert rerun.parameters["batch_size"] == 700
            assert rerun.state.is_scheduled()
        finally:
            for flow_run in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            ):
                client.delete_flow_run(flow_run.id)
            client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)
