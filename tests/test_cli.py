"""`prefect-migrate` (flows/cli.py) against the session's real servers: each subcommand's output
and exit code, on success and on a refusal, and what it did to the data."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from uuid import UUID

import pytest
import yaml

# Imported before any test captures output: Prefect's console log handler keeps the stream it
# first sees, and a test's capsys stream is closed once that test ends.
from flows.cli import main
from flows.migrate import migrate
from tests.prefect_support import ROOT, flow_run, flow_runs_tagged
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

CUSTOMERS = {
    "name": "CUSTOMERS",
    "chunk_column": "CUSTOMER_ID",
    "chunk_size": 1000,
    "primary_key": ["CUSTOMER_ID"],
}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`prefect-migrate ARGV` in this process: its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_target_port(path, name: str, port: int):
    """A copy of migrations file `path` whose migration `name` has its target on `port`."""
    spec = yaml.safe_load(path.read_text())
    spec["migrations"][name]["target"]["port"] = port
    bad = path.with_name("wrong-port.yaml")
    bad.write_text(yaml.safe_dump(spec, sort_keys=False))
    return bad


@pytest.fixture(scope="module")
def migrated(servers, demo_source, tmp_path_factory):
    """One completed job of CUSTOMERS (3,000 rows) into a database of this module, for the
    read-only checks: {name, job_id, path, connect}."""
    database = "cli_" + secrets.token_hex(4)
    with servers["pg"].connect() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    name = unique("cli")
    path = write_migrations(
        tmp_path_factory.mktemp("cli") / "migrations.yaml",
        servers,
        database,
        [CUSTOMERS],
        name=name,
        extra={"concurrency": 3},
    )
    job_id = f"{name}-done"
    report = migrate(source_name=name, job_id=job_id, migrations_file=str(path))
    assert report.status == "completed" and report.rows == 3000
    yield {"name": name, "job_id": job_id, "path": path, "connect": lambda: servers["pg"].connect(database)}
    with servers["pg"].connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def deployment():
    """A deployment of `migrate` (no work pool: its runs stay Scheduled) whose parameters name a
    migration of its own; yields that migration's name and the deployment's id."""
    from prefect.client.orchestration import get_client

    name = unique("deployed")
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow(migrate),
            name=name,
            parameters={"source_name": name},
            entrypoint="flows/migrate.py:migrate",
        )
    yield name, deployment_id
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)


def test_help_and_a_subcommand_in_a_child_process(migrated):
    def child(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )

    helped = child("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "plan", "status", "jobs", "cancel", "rollback", "verify", "test-connections"):
        assert re.search(rf"│ {command}\s", helped.stdout), command
    assert "Exit codes: 0 ok; 1 failed" in " ".join(helped.stdout.split())

    shown = child("status", migrated["job_id"], "--json", "--migrations-file", str(migrated["path"]))
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert (status["job_id"], status["state"], status["rows"]) == (migrated["job_id"], "completed", 3000)
    assert status["ledger"]["status"] == "completed"

    # test-connections needs no Prefect API: here none answers.
    dead_api = {"PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api"}
    checked = child(
        "test-connections", migrated["name"], "--migrations-file", str(migrated["path"]), env=dead_api
    )
    assert checked.returncode == 0, checked.stderr
    assert [line.split()[0] for line in checked.stdout.splitlines()] == [
        "source",
        "staging",
        "target",
        "ledger",
    ]

    unknown = child("frobnicate")
    assert unknown.returncode == 2 and "frobnicate" in unknown.stderr + unknown.stdout


def test_usage_errors_exit_2(capsys):
    code, _, err = cli(capsys, "run")
    assert code == 2 and "NAME" in err
    code, _, err = cli(capsys, "jobs", "--limit", "many")
    assert code == 2 and "--limit" in err
    code, _, err = cli(capsys, "jobs", "--limit", "0")
    assert code == 2 and "--limit must be at least 1" in err


def test_run_in_process_moves_every_row_and_refuses_bad_input(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source, capsys
):
    name = unique("inproc")
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [CUSTOMERS], name=name)
    code, out, err = cli(capsys, "run", name, "--job-id", f"{name}-1", "--migrations-file", str(path))
    assert code == 0, err
    assert f"Migration '{name}', job {name}-1: completed, 3,000 rows" in out
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)

    code, out, err = cli(capsys, "run", "no_such_migration", "--migrations-file", str(path))
    assert (code, out) == (2, "") and "unknown source_name 'no_such_migration'" in err
    code, out, err = cli(capsys, "run", name, "--start", "yesterday", "--migrations-file", str(path))
    assert (code, out) == (2, "") and "start_time 'yesterday' is not an ISO 8601 time" in err

    bad = with_target_port(path, name, closed_port())
    code, out, err = cli(capsys, "run", name, "--no-resume", "--json", "--migrations-file", str(bad))
    assert (code, out) == (1, "")
    assert "connection check failed, nothing was touched" in err and "target:" in err, err
    assert os.environ["PGPASSWORD"] not in err


def test_a_catch_up_deployment_serves_only_catch_ups(deployment, capsys):
    """`run NAME` must not go through a deployment that fixes `catch_up: true` (the backfill
    would be refused there); `run NAME --catch-up` prefers it."""
    from prefect.client.orchestration import get_client

    name, plain_id = deployment
    with get_client(sync_client=True) as client:
        loop_id = client.create_deployment(
            flow_id=client.create_flow(migrate),
            name=f"{name}-catch-up",
            parameters={"source_name": name, "catch_up": True},
            entrypoint="flows/migrate.py:migrate",
        )
    try:
        for argv, chosen in (((), plain_id), (("--catch-up",), loop_id)):
            code, out, err = cli(capsys, "run", name, *argv, "--no-wait", "--json")
            assert code == 0, err
            run = flow_run(json.loads(out)["flow_run_id"])
            assert run["deployment_id"] == str(chosen), argv
            cli(capsys, "cancel", run["id"])
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(loop_id)


def test_run_starts_the_deployment_that_names_the_migration_and_cancel_cancels_it(deployment, capsys):
    name, deployment_id = deployment
    job_id = f"{name}-1"
    code, out, err = cli(
        capsys, "run", name, "--no-wait", "--job-id", job_id, "--batch-size", "500", "--no-resume", "--json"
    )
    assert code == 0, err
    started = json.loads(out)
    run = flow_run(started["flow_run_id"])
    assert run["deployment_id"] == str(deployment_id)
    assert run["parameters"] == {"source_name": name, "job_id": job_id, "batch_size": 500, "no_resume": True}
    assert run["state_type"] == "SCHEDULED" and f"job:{job_id}" in run["tags"]
    assert started["deployment"] == f"migrate/{name}"

    code, out, err = cli(capsys, "cancel", job_id)
    assert code == 0, err
    assert f"({run['id']}): Scheduled -> Cancelled: cancelled at once: it had not started" in out
    assert flow_run(run["id"])["state_type"] == "CANCELLED"

    code, out, err = cli(capsys, "cancel", run["id"])  # by its flow run's id: the same job
    assert (code, out) == (1, "")
    assert f"job {job_id} has no active flow run (1 ended): nothing to cancel" in err
    assert "run the job again to resume it, or roll it back" in err
    code, out, err = cli(capsys, "cancel", "no-such-job-" + secrets.token_hex(3))
    assert (code, out) == (2, "") and "no migration job 'no-such-job-" in err


@pytest.mark.parametrize(("final", "exit_code"), [("Failed", 1), ("Completed", 0)])
def test_run_waits_for_the_deployment_run_to_end(deployment, capsys, monkeypatch, final, exit_code):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Completed, Failed, Running

    import flows.cli_run
    from tasks.progress import artifact_slug

    monkeypatch.setattr(flows.cli_run, "WAIT_POLL_SECONDS", 0.2)
    name, _ = deployment
    job_id = f"{name}-{final.lower()}"
    outcome = {}
    waiting = threading.Thread(
        target=lambda: outcome.update(code=main(["run", name, "--job-id", job_id])), daemon=True
    )
    waiting.start()
    deadline = time.monotonic() + 30
    while not (runs := flow_runs_tagged(f"job:{job_id}")):
        assert time.monotonic() < deadline, "no flow run was started"
        time.sleep(0.1)
    run_id = UUID(runs[0]["id"])
    with get_client(sync_client=True) as client:  # as a worker and the flow would take it along
        time.sleep(0.5)
        client.set_flow_run_state(run_id, Running(), force=True)
        client.create_artifact(
            ArtifactCreate(
                type="progress",
                key=f"migration-progress-{artifact_slug(name)}",
                data=33.3,
                description=f"Job `{job_id}`: 1/3 chunks done, 1,000 rows moved. Current stage: idle.",
                flow_run_id=run_id,
            )
        )
        time.sleep(0.8)
        end = Failed(message="chunk 00001 failed: boom") if final == "Failed" else Completed()
        client.set_flow_run_state(run_id, end, force=True)
    waiting.join(timeout=30)
    assert outcome.get("code") == exit_code
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("started flow run") and f"({run_id})" in lines[0]
    assert (
        lines[1:3] == [f"job {job_id}", "Scheduled"] and "Running: 33.3 % (1/3 chunks), 1,000 rows" in lines
    ), out
    assert lines[-1] == f"{final}: 33.3 % (1/3 chunks), 1,000 rows", out
    assert ("chunk 00001 failed: boom" in err) == (final == "Failed")


def test_status_and_jobs(migrated, capsys):
    job_id, path = migrated["job_id"], str(migrated["path"])
    code, out, err = cli(capsys, "status", job_id, "--migrations-file", path)
    assert code == 0, err
    assert f"job:        {job_id} (migration '{migrated['name']}')" in out
    assert "state:      completed" in out and "rows moved: 3,000" in out and "percent:    100.0 %" in out
    unknown = "no-such-job-" + secrets.token_hex(3)
    code, out, err = cli(capsys, "status", unknown)
    assert (code, out) == (2, "") and f"no migration job {unknown!r}" in err

    code, out, err = cli(capsys, "jobs", migrated["name"], "--json", "--migrations-file", path)
    assert code == 0, err
    (job,) = json.loads(out)["jobs"]
    assert (job["job_id"], job["state"], job["rows"], job["percent"]) == (job_id, "completed", 3000, 100.0)
    assert job["started"] and job["ended"]
    code, out, _ = cli(capsys, "jobs", migrated["name"], "--limit", "5", "--migrations-file", path)
    header, line = out.splitlines()
    assert header.split()[:6] == ["JOB", "MIGRATION", "STATE", "PROGRESS", "ROWS", "STARTED"]
    assert "ENDED (UTC)" in header
    assert line.startswith(job_id) and "completed" in line and "3,000" in line


def test_verify_clean_then_edited_then_unknown(migrated, capsys):
    job_id, path, connect = migrated["job_id"], str(migrated["path"]), migrated["connect"]
    code, out, err = cli(capsys, "verify", job_id, "--migrations-file", path)
    assert code == 0, err
    assert f"Verified job {job_id} ({migrated['name']}, completed)" in out and "the target matches" in out
    code, out, err = cli(capsys, "verify", job_id, "--json", "--migrations-file", path)
    assert code == 0, err
    clean = json.loads(out)
    assert clean["job_id"] == job_id and [t["table"] for t in clean["tables"]] == ["CUSTOMERS"]
    assert (clean["tables"][0]["source_rows"], clean["tables"][0]["changed"]) == (3000, 0)

    with connect() as conn:
        key, name = conn.execute(
            "SELECT customer_id, name FROM analytics.customers ORDER BY 1 LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE analytics.customers SET name = 'edited' WHERE customer_id = %s", (key,))
    try:
        code, out, err = cli(capsys, "verify", job_id, migrated["name"], "--migrations-file", path)
        json_code, json_out, json_err = cli(capsys, "verify", job_id, "--json", "--migrations-file", path)
    finally:
        with connect() as conn:
            conn.execute("UPDATE analytics.customers SET name = %s WHERE customer_id = %s", (name, key))
    assert (code, out) == (1, "")
    assert "the target differs from the source in 1 table(s)" in err and f"customer_id={key}" in err, err
    # --json: the report on stdout on exit 1 too, naming the table, the key and the value.
    assert json_code == 1 and "the target differs from the source in 1 table(s)" in json_err
    report = json.loads(json_out)
    assert (report["job_id"], report["migration"], report["errors"]) == (job_id, migrated["name"], [])
    (table,) = report["tables"]
    assert (table["table"], table["target"], table["key"]) == (
        "CUSTOMERS",
        "analytics.customers",
        ["customer_id"],
    )
    assert (table["missing"], table["extra"], table["changed"], table["changed_columns"]) == (
        0,
        0,
        1,
        {"name": 1},
    )
    (changed,) = table["sample_changed"]
    assert changed["key"] == {"customer_id": key} and changed["column"] == "name"
    assert changed["source"] == name and changed["target"] == "edited"

    code, out, err = cli(capsys, "verify", f"{migrated['name']}-nope", "--migrations-file", path)
    assert (code, out) == (
        2,
        "",
    ) and f"verify refused: job {migrated['name']}-nope is not in the ledger" in err


def test_verify_failure_keeps_its_report_when_pickled():
    """Prefect may persist a failed run's error: the report `--json` prints goes with it."""
    import pickle

    from tasks.verify_report import TableVerification, VerifyDifferences, VerifyReport

    table = TableVerification(table="T", target="s.t", key=["id"], missing=2, source_rows=5, target_rows=3)
    report = VerifyReport(job_id="j", migration="m", job_status="completed", tables=[table])
    failure = report.failure()
    assert isinstance(failure, VerifyDifferences) and failure.report is report
    again = pickle.loads(pickle.dumps(failure))
    assert type(again) is VerifyDifferences and str(again) == str(failure)
    assert again.report.model_dump() == report.model_dump()


def test_test_connections(migrated, capsys):
    name, path = migrated["name"], migrated["path"]
    code, out, err = cli(capsys, "test-connections", name, "--migrations-file", str(path))
    assert code == 0, err
    by_role = {line.split()[0]: line.split() for line in out.splitlines()}
    assert list(by_role) == ["source", "staging", "target", "ledger"]
    assert all(words[-1] == "OK" for words in by_role.values())
    assert by_role["source"][1] == "snowflake" and by_role["target"][1] == "postgres"

    code, out, err = cli(
        capsys,
        "test-connections",
        name,
        "--migrations-file",
        str(with_target_port(path, name, closed_port())),
    )
    assert (code, out) == (1, "")
    assert "connection check failed" in err and "target:" in err and "source:" not in err, err
    assert os.environ["PGPASSWORD"] not in err

    code, out, err = cli(capsys, "test-connections", "no_such_migration", "--migrations-file", str(path))
    assert (code, out) == (2, "") and "unknown source_name 'no_such_migration'" in err


def test_cancel_an_in_process_run_then_rollback_refused_until_forced(
    tmp_path, servers, pg_database, pg_connect, demo_source, capsys
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    name = unique("rb")
    path = str(write_migrations(tmp_path / "m.yaml", servers, pg_database, [CUSTOMERS], name=name))
    job_id = f"{name}-1"
    migrate(source_name=name, job_id=job_id, migrations_file=path)
    with pg_connect() as conn:  # as a run that is still going (or was killed) leaves it
        conn.execute(
            f"UPDATE migration_status.migration_runs SET status = 'running' WHERE job_id = '{job_id}'"
        )

    @flow(name="migrate")
    def stand_in() -> None:
        pass

    with get_client(sync_client=True) as client:  # a run of the job in a process no worker started
        active = client.create_flow_run(stand_in, tags=[f"job:{job_id}"], state=Running())

    code, out, err = cli(capsys, "rollback", job_id, "--migrations-file", path)
    assert (code, out) == (1, "")
    assert f"rollback refused: job {job_id} is still running (flow run {active.name})" in err
    assert "pass --force if it crashed" in err, err

    code, out, err = cli(capsys, "cancel", job_id)
    assert code == 0, err
    assert f"{active.name} ({active.id}): Running -> Cancelling: cancelling, but no worker started it" in out
    assert flow_run(str(active.id))["state_type"] == "CANCELLING"
    code, _, err = cli(capsys, "rollback", job_id, name, "--migrations-file", path)
    assert code == 1 and "still running" in err  # Cancelling is not over yet

    code, out, err = cli(capsys, "rollback", job_id, name, "--force", "--migrations-file", path)
    assert code == 0, err
    assert out.startswith(f"Rolled back job {job_id} ({name})")
    with pg_connect() as conn:
        assert conn.execute("SELECT to_regclass('analytics.customers')").fetchone() == (None,)
        assert conn.execute(
            f"SELECT status FROM migration_status.migration_runs WHERE job_id = '{job_id}'"
        ).fetchone() == ("rolled_back",)

    code, out, err = cli(capsys, "rollback", f"{name}-nope", "--migrations-file", path)
    assert (code, out) == (2, "") and f"job {name}-nope is not in the ledger" in err
    code, out, err = cli(capsys, "rollback", "unknown-prefix-1", "--migrations-file", path)
    assert (code, out) == (2, "") and "give the migration's NAME after the job id" in err, err


def test_plan_exit_codes(migrated, capsys):
    """`plan` exits 0 when a run would go ahead, 1 when a guard would refuse it (the plan still
    printed, naming the job in the way), 2 for an unknown migration."""
    name, path = migrated["name"], str(migrated["path"])
    code, out, err = cli(capsys, "plan", name, "--migrations-file", path)
    assert code == 0, err
    assert f"job {migrated['job_id']} already completed with the same tables and window" in out

    # Another chunk size is another job, whose append would load the completed job's rows again.
    code, out, err = cli(capsys, "plan", name, "--batch-size", "500", "--json", "--migrations-file", path)
    assert code == 1, err
    plan = json.loads(out)
    assert plan["job"]["action"] == "new" and len(plan["tables"][0]["chunks"]) == 6
    assert any(f"job {migrated['job_id']} (completed) already loaded" in r for r in plan["refusals"]), plan

    code, out, err = cli(capsys, "plan", "no_such_migration", "--migrations-file", path)
    assert (code, out) == (2, "") and "unknown source_name 'no_such_migration'" in err
