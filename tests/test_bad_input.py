"""Bad input fails fast, names the problem, and writes nothing to the target database.

Every case runs the real `migrate` flow against the session's servers and then checks the
test's own PostgreSQL database: no `migration_status` ledger, no `analytics` schema, no tables.
"""

from __future__ import annotations

import re
import time
import traceback
from pathlib import Path

import pytest
import yaml

from blocks.errors import ConfigError, ConnectionCheckError, SourceSchemaError
from devstack.servers import free_port
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

PAGE_VIEWS = {"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}


@pytest.fixture
def migrations(tmp_path, servers, pg_database, demo_source):
    """Write migrations.yaml for this test's database; returns its path (as a string)."""

    def write(tables: list[dict] | None = None, **kwargs) -> str:
        path = write_migrations(
            tmp_path / "migrations.yaml", servers, pg_database, tables or [dict(PAGE_VIEWS)], **kwargs
        )
        return str(path)

    return write


def assert_target_untouched(pg_connect) -> None:
    """The target database holds no ledger, no target schema and no tables at all."""
    with pg_connect() as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname IN ('migration_status', 'analytics')"
        ).fetchall()
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    assert schemas == [], f"schemas written to the target: {schemas}"
    assert tables == [], f"tables written to the target: {tables}"


def run_migrate(**kwargs):
    from flows.migrate import migrate

    return migrate(source_name=kwargs.pop("source_name", "analytics"), **kwargs)


def test_control_a_valid_config_writes_to_the_checked_database(migrations, pg_connect, snowflake_kwargs):
    """The check below every failure case does see what a good run writes (one small chunk)."""
    file = migrations([{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 10_000}])
    report = run_migrate(migrations_file=file)
    assert report.status == "completed"
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)
    with pytest.raises(AssertionError, match="migration_status"):
        assert_target_untouched(pg_connect)


# 1. unknown source_name ------------------------------------------------------------------


def test_unknown_source_name(tmp_path, servers, pg_database, demo_source, pg_connect):
    first = write_migrations(tmp_path / "a.yaml", servers, pg_database, [dict(PAGE_VIEWS)], name="analytics")
    second = write_migrations(tmp_path / "b.yaml", servers, pg_database, [dict(PAGE_VIEWS)], name="conflict")
    merged = yaml.safe_load(first.read_text())
    merged["migrations"].update(yaml.safe_load(second.read_text())["migrations"])
    path = tmp_path / "migrations.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))

    with pytest.raises(ConfigError, match=r"unknown source_name 'analyticz'") as info:
        run_migrate(source_name="analyticz", migrations_file=str(path))
    assert "defines analytics, conflict" in str(info.value)
    assert_target_untouched(pg_connect)


# 2. bad run window -----------------------------------------------------------------------


def test_malformed_start_time(migrations, pg_connect):
    with pytest.raises(ConfigError, match=r"start_time 'yesterday-ish' is not an ISO 8601 time"):
        run_migrate(start_time="yesterday-ish", migrations_file=migrations())
    assert_target_untouched(pg_connect)


def test_end_time_before_start_time(migrations, pg_connect):
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "end_time 2024-03-01T00:00:00+00:00 is not after start_time 2024-03-02T00:00:00+00:00"
        ),
    ):
        run_migrate(
            start_time="2024-03-02T00:00:00Z", end_time="2024-03-01T00:00:00Z", migrations_file=migrations()
        )
    assert_target_untouched(pg_connect)


@pytest.mark.parametrize("job_id", ["../elsewhere", "a/b", "with space", "", ".hidden", "x" * 129])
def test_job_id_that_would_shape_paths_is_refused(migrations, pg_connect, job_id):
    with pytest.raises(ConfigError, match=re.escape(f"job_id {job_id!r} is not a valid job id")):
        run_migrate(job_id=job_id, migrations_file=migrations())
    assert_target_untouched(pg_connect)


def test_table_names_cannot_shape_result_paths():
    from tasks.storage_keys import path_segment

    assert path_segment("../etc") == "..%2Fetc"
    assert path_segment("..") == "%2E%2E"
    assert path_segment("a\\b%c") == "a%5Cb%25c"
    assert path_segment('Mixed Case; "quoted"') == 'Mixed Case; "quoted"'


# 3-5. the config names things the source does not have -----------------------------------


def test_missing_table(migrations, pg_connect):
    file = migrations([{"name": "NO_SUCH_TABLE", "chunk_column": "ID"}])
    with pytest.raises(
        SourceSchemaError, match=r"table 'NO_SUCH_TABLE' not found in Snowflake ANALYTICS\.PUBLIC"
    ):
        run_migrate(migrations_file=file)
    assert_target_untouched(pg_connect)


def test_missing_column(migrations, pg_connect):
    file = migrations([{**PAGE_VIEWS, "columns": ["VIEW_ID", "NO_SUCH_COLUMN"]}])
    with pytest.raises(
        SourceSchemaError,
        match=r"table PAGE_VIEWS: column\(s\) \['NO_SUCH_COLUMN'\] not found; the source has",
    ) as info:
        run_migrate(migrations_file=file)
    assert "'VIEWED_AT'" in str(info.value)  # the message lists what the source does have
    assert_target_untouched(pg_connect)


def test_missing_primary_key_column(migrations, pg_connect):
    file = migrations([{**PAGE_VIEWS, "primary_key": ["PAGE_VIEW_ID"]}])
    with pytest.raises(
        SourceSchemaError, match=r"table PAGE_VIEWS: primary_key column\(s\) \['PAGE_VIEW_ID'\] not found"
    ):
        run_migrate(migrations_file=file)
    assert_target_untouched(pg_connect)


def test_table_without_the_chunk_column(migrations, pg_connect):
    file = migrations([{"name": "CUSTOMERS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}])
    with pytest.raises(
        SourceSchemaError, match=r"table CUSTOMERS: chunk_column \['VIEWED_AT'\] not found; the source has"
    ):
        run_migrate(migrations_file=file)
    assert_target_untouched(pg_connect)


def test_chunk_column_of_a_non_chunkable_type(migrations, pg_connect):
    file = migrations([{"name": "EVENTS", "chunk_column": "LABEL"}])
    with pytest.raises(
        SourceSchemaError,
        match=r"table EVENTS: chunk_column LABEL is (VARCHAR|TEXT)\b.*must be an integer or a timestamp",
    ):
        run_migrate(migrations_file=file)
    assert_target_untouched(pg_connect)


def test_schema_error_is_not_retried(migrations, pg_connect, monkeypatch):
    """A SourceSchemaError is permanent (blocks/errors.py, tasks/policy.py): one look, no retry."""
    from blocks.snowflake.source import SnowflakeSource

    calls: list[str] = []
    real_describe = SnowflakeSource.describe

    def counting_describe(self, table):
        calls.append(table)
        return real_describe(self, table)

    monkeypatch.setattr(SnowflakeSource, "describe", counting_describe)
    file = migrations([{"name": "NO_SUCH_TABLE", "chunk_column": "ID"}])
    started = time.monotonic()
    with pytest.raises(SourceSchemaError, match="NO_SUCH_TABLE"):
        run_migrate(migrations_file=file)
    elapsed = time.monotonic() - started
    assert_target_untouched(pg_connect)
    assert calls == ["NO_SUCH_TABLE"], f"the missing table was looked up {len(calls)} times ({elapsed:.1f}s)"


# 6-7. servers that cannot be reached or refuse us ----------------------------------------


def test_unreachable_snowflake_source(migrations, pg_connect):
    closed = free_port()
    file = migrations(source={"port": closed, "login_timeout": 5})
    started = time.monotonic()
    with pytest.raises(
        ConnectionCheckError, match=rf"source: cannot connect to Snowflake \(127\.0\.0\.1:{closed}\b"
    ) as info:
        run_migrate(migrations_file=file)
    assert time.monotonic() - started < 30  # login_timeout is 5 s
    assert "target:" not in str(info.value)  # only the source failed, and the message says so
    assert_target_untouched(pg_connect)


def test_unreachable_postgres_target(migrations, pg_connect):
    closed = free_port()
    file = migrations(target={"port": closed, "connect_timeout": 5})
    with pytest.raises(
        ConnectionCheckError, match=rf"target: cannot connect to PostgreSQL postgres@127\.0\.0\.1:{closed}/"
    ) as info:
        run_migrate(migrations_file=file)
    assert "source:" not in str(info.value)
    assert_target_untouched(pg_connect)


def test_postgres_wrong_password(migrations, pg_connect, monkeypatch):
    import os

    wrong = "not-the-password-" + os.urandom(4).hex()
    monkeypatch.setenv("BAD_PGPASSWORD", wrong)
    file = migrations(target={"password_env": "BAD_PGPASSWORD"})
    with pytest.raises(ConnectionCheckError, match=r"target: .*password authentication failed") as info:
        run_migrate(migrations_file=file)
    text = str(info.value)
    full = text + repr(info.value) + "".join(traceback.format_exception(info.value))
    assert wrong not in full
    assert os.environ["PGPASSWORD"] not in full
    assert "source:" not in text
    assert_target_untouched(pg_connect)


# 8. migrations.yaml itself is broken ------------------------------------------------------


def test_empty_migrations_file(tmp_path, pg_connect):
    path = tmp_path / "migrations.yaml"
    path.write_text("")
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))} is empty: it needs a top-level 'migrations:'"
    ):
        run_migrate(migrations_file=str(path))
    assert_target_untouched(pg_connect)


def test_migrations_file_cut_off_midway(migrations, pg_connect):
    path = Path(migrations())
    # The same file in flow style, cut in half: an unclosed `{` is invalid YAML wherever the cut lands.
    text = yaml.safe_dump(yaml.safe_load(path.read_text()), default_flow_style=True)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} is not valid YAML"):
        run_migrate(migrations_file=str(path))
    assert_target_untouched(pg_connect)


def test_migrations_file_top_level_list(tmp_path, pg_connect):
    path = tmp_path / "migrations.yaml"
    path.write_text("- migrations:\n    analytics: {}\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping with a 'migrations:' key, not a list"):
        run_migrate(migrations_file=str(path))
    assert_target_untouched(pg_connect)


@pytest.mark.parametrize(
    ("change", "key_path"),
    [
        ({"extra": {"concurrency": "lots"}}, "migrations.analytics.concurrency"),
        ({"tables": [{**PAGE_VIEWS, "load_mode": "merge"}]}, "migrations.analytics.tables.0.load_mode"),
    ],
    ids=["concurrency-lots", "load_mode-merge"],
)
def test_wrong_type_names_the_key_path(migrations, pg_connect, change, key_path):
    file = migrations(**change)
    with pytest.raises(ConfigError, match=rf"is invalid:\n  {re.escape(key_path)}: ") as info:
        run_migrate(migrations_file=file)
    assert len(str(info.value).splitlines()) == 2, str(info.value)  # exactly the one bad key
    assert_target_untouched(pg_connect)


@pytest.mark.parametrize("role", ["target", "source"])
def test_password_env_not_set(migrations, pg_connect, monkeypatch, role):
    import os

    monkeypatch.delenv("MIGRATE_TEST_UNSET_PASSWORD", raising=False)
    file = migrations(**{role: {"password_env": "MIGRATE_TEST_UNSET_PASSWORD"}})
    with pytest.raises(
        ConnectionCheckError,
        match=rf"{role}: environment variable MIGRATE_TEST_UNSET_PASSWORD \(named by {role}\.password_env\) "
        "is not set",
    ) as info:
        run_migrate(migrations_file=file)
    text = str(info.value)
    assert os.environ["PGPASSWORD"] not in text
    other = "source" if role == "target" else "target"
    assert f"{other}:" not in text
    assert_target_untouched(pg_connect)


def test_relative_windows_follow_the_scheduled_time():
    from datetime import UTC, datetime

    from tasks.config import relative_window, run_window

    scheduled = datetime(2024, 3, 5, 2, 0, 7, tzinfo=UTC)
    assert relative_window("previous_day", scheduled) == (
        datetime(2024, 3, 4, tzinfo=UTC),
        datetime(2024, 3, 5, tzinfo=UTC),
    )
    assert relative_window("previous_hour", scheduled) == (
        datetime(2024, 3, 5, 1, tzinfo=UTC),
        datetime(2024, 3, 5, 2, tzinfo=UTC),
    )
    explicit = run_window("2024-03-04T12:00:00Z", None, None, "previous_day", scheduled)
    assert (explicit.start_time, explicit.end_time) == (
        datetime(2024, 3, 4, 12, tzinfo=UTC),
        datetime(2024, 3, 5, tzinfo=UTC),
    )
    with pytest.raises(ConfigError, match="window 'last_week' is not one of previous_day, previous_hour"):
        run_window(None, None, None, "last_week", scheduled)
