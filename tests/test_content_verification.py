"""WIP issue 13: a value counts cannot see is refused before commit, naming the column."""

from __future__ import annotations

import pytest

from blocks.errors import MigrationFailed
from tests.test_pairs import READINGS, migrate_readings_into_postgres, window, write_files


def test_a_real_column_for_a_double_source_is_refused(tmp_path, servers, pg_database, pg_connect):
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute(
            "CREATE TABLE analytics.readings (reading_id bigint, taken_at timestamptz, site text, "
            "power real, units bigint, note text, ok boolean)"
        )
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column power holds" in str(failure.value), str(failure.value)
    print(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == 0
