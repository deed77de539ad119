"""Schema drift: a Snowflake source table whose columns change under a job (one added, removed
or retyped) fails the job with a clear, permanent error naming the column, never a silent
loss or a silent cast, and never an error that is retried as if it were transient.

Each test has its own fakesnow database and table (`own_snowflake_database`), 30 rows in
three chunks of 10 keys, loaded one chunk at a time.
"""

from __future__ import annotations

import pytest

from blocks.errors import DataConversionError, MigrationFailed
from blocks.postgres.target import PostgresTarget
from tests.support import (
    assert_same_rows,
    own_snowflake_database,
    source_rows,
    target_rows,
    target_tables,
    write_migrations,
)

CHANGES = {
    "added": ("ALTER TABLE EVENTS ADD COLUMN EXTRA VARCHAR", "column EXTRA (TEXT) was added"),
    "removed": ("ALTER TABLE EVENTS DROP COLUMN NOTE", "column NOTE (TEXT) was removed"),
    # Snowflake itself would rebuild the table (CREATE OR REPLACE ... AS SELECT); DuckDB can
    # ALTER the type, and the text '10' still casts to an integer, so nothing else fails.
    "retyped": (
        "ALTER TABLE EVENTS ALTER COLUMN AMOUNT SET DATA TYPE VARCHAR",
        "column AMOUNT was NUMBER(38,0) when the job was planned, now TEXT",
    ),
}
ADVICE = (
    "The job's chunks are planned, and some may be loaded, with the old columns: restore them in "
    "the source and resume, or roll the job back and start a new job (no_resume) that plans the new ones"
)


@pytest.fixture
def events(tmp_path, servers, pg_database, snowflake_kwargs):
    """(migrations file, run, the source's rows before any change) for a private EVENTS table."""
    with own_snowflake_database(snowflake_kwargs) as (database, run):
        run("CREATE TABLE EVENTS (ID NUMBER(38,0) NOT NULL, AMOUNT NUMBER(38,0), NOTE VARCHAR)")
        run(
            "INSERT INTO EVENTS SELECT n + 1, (n + 1) * 10, 'note ' || n "
            "FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => 30)))"
        )
        names, rows = source_rows(snowflake_kwargs, database, "PUBLIC", "EVENTS", "ID")
        path = write_migrations(
            tmp_path / "migrations.yaml",
            servers,
            pg_database,
            [{"name": "EVENTS", "chunk_column": "ID", "chunk_size": 10}],
            database=database,
            extra={"concurrency": 1},
        )
        yield str(path), run, (names, rows)


def second_chunk(chunk_id: str) -> bool:
    return chunk_id.startswith("00001-")


@pytest.mark.parametrize("change", list(CHANGES))
def test_drift_during_a_run_fails_the_chunk_clearly_and_is_not_retried(
    events, pg_connect, monkeypatch, change
):
    from blocks.snowflake.source import SnowflakeSource
    from flows.migrate import migrate

    path, run, (names, rows) = events
    statement, what = CHANGES[change]
    real_read = SnowflakeSource.read_chunk
    reads: list[int] = []

    def read_after_a_change(self, table, columns, column, lower, upper):
        reads.append(lower)
        if lower == 11 and reads.count(11) == 1:
            run(statement)  # between planning and the second chunk's read
        yield from real_read(self, table, columns, column, lower, upper)

    monkeypatch.setattr(SnowflakeSource, "read_chunk", read_after_a_change)
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="analytics", migrations_file=path)
    assert f"schema drift in EVENTS: {what}. {ADVICE}" in str(failed.value)
    assert reads == [1, 11], "the drift was retried, or a later chunk started"
    # The first chunk was loaded before the change, and nothing of the second one.
    assert_same_rows(rows[:10], target_rows(pg_connect, "analytics.events", names, "id"), names)


@pytest.mark.parametrize("change", list(CHANGES))
def test_drift_between_a_failed_run_and_its_resume_is_refused(events, pg_connect, monkeypatch, change):
    from flows.migrate import migrate

    path, run, (names, rows) = events
    statement, what = CHANGES[change]
    real_load = PostgresTarget.load_chunk

    def failing_second_chunk(self, **kwargs):
        if second_chunk(kwargs["chunk_id"]):
            raise DataConversionError("injected failure in the second chunk")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", failing_second_chunk)
    with pytest.raises(MigrationFailed, match="injected failure in the second chunk"):
        migrate(source_name="analytics", migrations_file=path, job_id=f"drift-{change}")
    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)

    run(statement)
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="analytics", migrations_file=path, job_id=f"drift-{change}")
    assert f"schema drift in EVENTS: {what}. {ADVICE}" in str(failed.value)
    assert_same_rows(rows[:10], target_rows(pg_connect, "analytics.events", names, "id"), names)
    assert target_tables(pg_connect) == {("analytics", "events"): 10}
