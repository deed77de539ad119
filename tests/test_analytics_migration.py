"""The `analytics` migration end to end: Snowflake (fakesnow) -> staging -> PostgreSQL."""

from __future__ import annotations

import pytest

from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}


@pytest.fixture
def analytics_file(tmp_path, servers, pg_database, demo_source):
    return write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        tables=[
            {"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 20_000, "primary_key": ["EVENT_ID"]},
            {"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"},
        ],
        extra={"concurrency": 2},
    )


def test_every_type_lands_exactly(analytics_file, pg_connect, snowflake_kwargs):
    from flows.migrate import migrate

    report = migrate(source_name="analytics", migrations_file=str(analytics_file))

    assert report.status == "completed"
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert len(expected) >= 100_000
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)

    by_table = {t.table: t for t in report.tables}
    assert by_table["EVENTS"].rows == 110_000 and by_table["EVENTS"].chunks == 6
    assert by_table["PAGE_VIEWS"].rows == 20_000 and by_table["PAGE_VIEWS"].chunks > 1
    with pg_connect() as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
                "JOIN pg_attribute a ON a.attrelid = 'analytics.events'::regclass AND a.attname = c.column_name "
                "WHERE table_schema = 'analytics' AND table_name = 'events'"
            ).fetchall()
        )
        run = conn.execute(
            "SELECT status, rows_total, chunks_done, chunks_total FROM migration_status.migration_runs "
            "WHERE job_id = %s",
            (report.job_id,),
        ).fetchone()
    assert types == {
        "event_id": "bigint",
        "user_id": "bigint",
        "amount": "numeric(18,4)",
        "ratio": "numeric(38,37)",
        "score": "double precision",
        "label": "text",
        "is_active": "boolean",
        "event_date": "date",
        "event_clock": "time without time zone",
        "event_time": "timestamp without time zone",
        "created_at": "timestamp with time zone",
        "seen_at": "timestamp with time zone",
        "payload": "jsonb",
        "attrs": "jsonb",
        "tags": "jsonb",
        "digest": "bytea",
    }
    assert run == ("completed", 130_000, report_chunks(report), report_chunks(report))


def report_chunks(report) -> int:
    return len(report.chunks)
