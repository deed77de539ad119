"""Hostile input, one end-to-end `migrate` run per case against the session's real servers
(fakesnow's Snowflake, PostgreSQL, InfluxDB): each ends in data equal to the source value by
value, in a per-chunk report of exactly what was left out (InfluxDB), or in a clear error
that loaded nothing (a config or planning error leaves the target as it was; an error found
while exporting leaves at most the job's ledger rows, and its rollback drops the empty table).

Every test makes its own Snowflake database and tables (`own_snowflake_database`).
Empty tag values, newlines in tags and broken migrations.yaml files are covered in
test_energy_migration.py and test_bad_input.py; schema drift in test_schema_drift.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from blocks.errors import ConfigError, MigrationFailed, SourceSchemaError
from tests.energy_support import assert_same_points, influx_migrations, stored
from tests.influx_readback import measurements
from tests.support import (
    assert_same_rows,
    own_snowflake_database,
    quoted,
    snowflake_source,
    source_rows,
    target_rows,
    target_tables,
    write_migrations,
)


@pytest.fixture
def snow(snowflake_kwargs):
    """(database, run) of a private Snowflake database; see `own_snowflake_database`."""
    with own_snowflake_database(snowflake_kwargs) as own:
        yield own


def migrations_for(tmp_path, servers, pg_database, database, tables, **kwargs) -> str:
    return str(
        write_migrations(
            tmp_path / "migrations.yaml", servers, pg_database, tables, database=database, **kwargs
        )
    )


def influx_file(tmp_path, servers, pg_database, influx_database, database, tables) -> str:
    source = snowflake_source(servers, database)
    return str(
        influx_migrations(tmp_path / "m.yaml", servers, pg_database, influx_database, tables, source=source)
    )


def check_exact(snowflake_kwargs, database, table, pg_connect, target, order_by="ID"):
    names, expected = source_rows(snowflake_kwargs, database, "PUBLIC", table, order_by)
    actual = target_rows(pg_connect, target, names, order_by.lower())
    assert_same_rows(expected, actual, names)
    return expected


def ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO time taken as UTC."""
    since = datetime.fromisoformat(text).replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return since // timedelta(microseconds=1) * 1000


# NaN, ±Inf and -0.0 -----------------------------------------------------------------------

FLOATS = [
    (1, "'NaN'::FLOAT"),
    (2, "'inf'::FLOAT"),
    (3, "'-inf'::FLOAT"),
    (4, "-0.0::FLOAT"),
    (5, "0.0::FLOAT"),
    (6, "4.9e-324::FLOAT"),  # the smallest subnormal
    (7, "1.7976931348623157e308::FLOAT"),
    (8, "0.1::FLOAT"),
    (9, "NULL"),
]


def float_table(run) -> None:
    run("CREATE TABLE FLOATS (ID NUMBER(38,0) NOT NULL, TS TIMESTAMP_NTZ NOT NULL, F FLOAT, G FLOAT)")
    values = ", ".join(
        f"({i}, '2024-03-01 00:00:0{i}'::TIMESTAMP_NTZ, {f}, {10 * i}.5::FLOAT)" for i, f in FLOATS
    )
    run(f"INSERT INTO FLOATS VALUES {values}")


def test_nan_infinities_and_negative_zero_reach_postgres_exactly(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    float_table(run)
    file = migrations_for(
        tmp_path, servers, pg_database, database, [{"name": "FLOATS", "chunk_column": "ID", "chunk_size": 4}]
    )
    report = migrate(source_name="analytics", migrations_file=file)
    assert report.status == "completed" and report.rows == len(FLOATS)
    expected = check_exact(snowflake_kwargs, database, "FLOATS", pg_connect, "analytics.floats")
    # The comparison tells NaN, -0.0 and 0.0 apart (tests/support.normalise); make sure they were there.
    assert [repr(row[2]) for row in expected[:5]] == ["nan", "inf", "-inf", "-0.0", "0.0"]
    with pg_connect() as conn:
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'analytics.floats'::regclass AND attname = 'f'"
        ).fetchone()
    assert kind == ("double precision",)


def test_nan_and_infinities_are_left_out_of_influxdb_and_reported(
    tmp_path, servers, pg_database, influx_database, snow
):
    from flows.migrate import migrate

    database, run = snow
    float_table(run)
    table = {
        "name": "FLOATS",
        "chunk_column": "TS",
        "chunk_interval": "1d",
        "mapping": {"measurement": "floats", "tags": [], "fields": ["F", "G"]},
    }
    report = migrate(
        source_name="energy",
        migrations_file=influx_file(tmp_path, servers, pg_database, influx_database, database, [table]),
    )
    (chunk,) = report.chunks
    assert chunk.rows == len(FLOATS) and chunk.rows_dropped == 0  # G carries every point
    assert chunk.problems == ["field 'F': 3 NaN/Inf value(s) left out (line protocol cannot carry them)"]
    want = {}
    for i, _ in FLOATS:
        values = {"G": 10 * i + 0.5}
        number = {4: -0.0, 5: 0.0, 6: 4.9e-324, 7: 1.7976931348623157e308, 8: 0.1}.get(i)
        if number is not None:
            values["F"] = number
        want[("floats", (), ns(f"2024-03-01T00:00:0{i}"))] = values
    got, types = stored(servers, influx_database)
    assert_same_points(got, want, {"F", "G"})  # InfluxQL's JSON answers -0 as 0: the sign goes unchecked
    assert types["floats"] == {"F": "float", "G": "float"}


# NUMBER(38,0) and NUMBER(38,37) at their extremes -------------------------------------------

NINES_38 = "9" * 38
NINES_37_AFTER_POINT = "9." + "9" * 37


def test_number_38_extremes_fail_clearly_then_reach_postgres_exactly_with_an_override(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    # fakesnow stores NUMBER(38,0) as a 64-bit BIGINT; spelled NUMBER(38, 00) it keeps DuckDB's
    # DECIMAL(38,0), which holds what Snowflake's NUMBER(38,0) holds. Both describe as NUMBER(38,0).
    run("CREATE TABLE BIGNUM (ID NUMBER(38,0) NOT NULL, BIG NUMBER(38, 00), R NUMBER(38,37))")
    rows = [
        (1, NINES_38, NINES_37_AFTER_POINT),
        (2, "-" + NINES_38, "-" + NINES_37_AFTER_POINT),
        (3, "9223372036854775808", "0.0000000000000000000000000000000000001"),
        (4, "-9223372036854775809", "-0.0000000000000000000000000000000000001"),
        (5, "0", "0"),
        (6, None, None),
    ]
    for row in rows:
        run("INSERT INTO BIGNUM VALUES (%s, %s, %s)", row)
    table = {"name": "BIGNUM", "chunk_column": "ID", "chunk_size": 100}

    file = migrations_for(tmp_path, servers, pg_database, database, [table])
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="analytics", migrations_file=file, rollback_enabled=True)
    assert "BIGNUM.BIG: cannot convert decimal128(38, 0) to int64 exactly" in str(failed.value)
    assert "set type_overrides: {BIG: numeric(38,0)} to keep such values exactly" in str(failed.value)
    assert target_tables(pg_connect) == {}  # nothing loaded; the rollback dropped the empty table

    file = migrations_for(
        tmp_path, servers, pg_database, database, [{**table, "type_overrides": {"BIG": "numeric(38,0)"}}]
    )
    report = migrate(source_name="analytics", migrations_file=file, no_resume=True)
    assert report.rows == len(rows)
    expected = check_exact(snowflake_kwargs, database, "BIGNUM", pg_connect, "analytics.bignum")
    assert str(expected[0][1]) == NINES_38 and str(expected[0][2]) == NINES_37_AFTER_POINT
    assert str(expected[3][2]) == "-1E-37"
    with pg_connect() as conn:
        kinds = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'analytics.bignum'::regclass AND attnum > 0"
            ).fetchall()
        )
    assert kinds == {"id": "bigint", "big": "numeric(38,0)", "r": "numeric(38,37)"}


# Zero rows in the range, and a single row ---------------------------------------------------


def one_row_table(run) -> None:
    run("CREATE TABLE ONE_ROW (ID NUMBER(38,0) NOT NULL, TS TIMESTAMP_NTZ NOT NULL, V FLOAT, S VARCHAR)")
    run("INSERT INTO ONE_ROW VALUES (7, '2024-03-01 12:34:56.789012', 1.25, 'only, \"one\"')")


def test_zero_rows_in_the_range_then_a_single_row_into_postgres(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    one_row_table(run)
    file = migrations_for(
        tmp_path,
        servers,
        pg_database,
        database,
        [{"name": "ONE_ROW", "chunk_column": "TS", "chunk_interval": "1d"}],
    )
    empty = migrate(
        source_name="analytics",
        migrations_file=file,
        start_time="2025-01-01T00:00:00Z",
        end_time="2025-01-03T00:00:00Z",
    )
    assert empty.status == "completed" and empty.rows == 0
    assert [c.rows for c in empty.chunks] == [0, 0]
    assert target_tables(pg_connect) == {("analytics", "one_row"): 0}

    single = migrate(
        source_name="analytics",
        migrations_file=file,
        start_time="2024-03-01T00:00:00Z",
        end_time="2024-03-02T00:00:00Z",
    )
    assert single.status == "completed" and single.rows == 1
    assert len(check_exact(snowflake_kwargs, database, "ONE_ROW", pg_connect, "analytics.one_row")) == 1


def test_zero_rows_in_the_range_then_a_single_row_into_influxdb(
    tmp_path, servers, pg_database, influx_database, snow
):
    from flows.migrate import migrate

    database, run = snow
    one_row_table(run)
    table = {
        "name": "ONE_ROW",
        "chunk_column": "TS",
        "chunk_interval": "1d",
        "mapping": {"measurement": "one", "tags": ["S"], "fields": ["V", "ID"]},
    }
    file = influx_file(tmp_path, servers, pg_database, influx_database, database, [table])
    empty = migrate(
        source_name="energy",
        migrations_file=file,
        start_time="2025-01-01T00:00:00Z",
        end_time="2025-01-02T00:00:00Z",
    )
    assert empty.status == "completed" and empty.rows == 0 and [c.rows for c in empty.chunks] == [0]
    assert measurements(servers, influx_database) == []

    single = migrate(
        source_name="energy",
        migrations_file=file,
        start_time="2024-03-01T00:00:00Z",
        end_time="2024-03-02T00:00:00Z",
    )
    assert single.status == "completed" and single.rows == 1
    got, types = stored(servers, influx_database)
    when = ns("2024-03-01T12:34:56.789012")
    assert_same_points(got, {("one", (("S", 'only, "one"'),), when): {"V": 1.25, "ID": 7}}, {"V"})
    assert types["one"] == {"V": "float", "ID": "integer"}


# A table 200 columns wide -----------------------------------------------------------------

# (Snowflake type, an expression of the row number n and the column number k)
WIDE_TYPES = [
    ("NUMBER(38,0)", "IFF(MOD(n + {k}, 7) = 0, NULL, n * 1000003 * {k} - 5000000)"),
    ("NUMBER(18,6)", "(MOD(n * {k} * 7919, 2000000000) - 1000000000) / 1000000"),
    ("FLOAT", "IFF(MOD(n + {k}, 5) = 0, NULL, n / 7.0 * {k} - 3)"),
    ("VARCHAR", "IFF(MOD(n + {k}, 6) = 0, NULL, 'v' || n || ',\"{k}\"; x')"),
    ("BOOLEAN", "MOD(n + {k}, 2) = 0"),
    ("DATE", "DATEADD(day, n * {k}, '2020-01-01'::DATE)"),
    ("TIMESTAMP_NTZ", "DATEADD(second, n * {k} * 3601, '2024-01-01 00:00:00'::TIMESTAMP_NTZ)"),
    ("BINARY", "TO_BINARY(LPAD(TO_VARCHAR(n * {k}), 6, '0'), 'HEX')"),
]


def test_a_table_200_columns_wide_reaches_postgres_exactly(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    columns = [(f"C{k:03d}", *WIDE_TYPES[k % len(WIDE_TYPES)]) for k in range(200)]
    run(f"CREATE TABLE WIDE (ID NUMBER(38,0) NOT NULL, {', '.join(f'{n} {t}' for n, t, _ in columns)})")
    select = ", ".join(expr.format(k=k + 1) for k, (_, _, expr) in enumerate(columns))
    run(
        f"INSERT INTO WIDE SELECT n, {select} FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => 40)))"
    )

    file = migrations_for(
        tmp_path, servers, pg_database, database, [{"name": "WIDE", "chunk_column": "ID", "chunk_size": 16}]
    )
    report = migrate(source_name="analytics", migrations_file=file)
    assert report.rows == 40 and len(report.chunks) == 3
    expected = check_exact(snowflake_kwargs, database, "WIDE", pg_connect, "analytics.wide")
    assert len(expected[0]) == 201
    assert {type(v).__name__ for row in expected for v in row} >= {
        "int",
        "Decimal",
        "float",
        "str",
        "bool",
        "date",
        "datetime",
        "bytearray",  # BINARY, as the Snowflake connector returns it
        "NoneType",
    }


# Names with quotes, spaces and semicolons --------------------------------------------------

WEIRD_TABLE = 'we"ird; name'
# fakesnow cannot take a single quote in a column name (its information_schema breaks), so
# "it's" is only in the PostgreSQL source's names.
WEIRD_COLUMNS = ['c"; DROP TABLE public.canary; --', "Sp ace", "semi;colon", "comma, = and (parens)"]
PG_WEIRD_COLUMNS = [*WEIRD_COLUMNS, "it's"]


def test_names_with_quotes_spaces_and_semicolons_from_snowflake(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    kinds = ["VARCHAR", "FLOAT", "NUMBER(10,2)", "VARCHAR"]
    run(
        f"CREATE TABLE {quoted(WEIRD_TABLE)} (ID NUMBER(38,0) NOT NULL, "
        + ", ".join(f"{quoted(c)} {k}" for c, k in zip(WEIRD_COLUMNS, kinds, strict=True))
        + ")"
    )
    for i in range(1, 6):
        run(
            f"INSERT INTO {quoted(WEIRD_TABLE)} VALUES (%s, %s, %s, %s, %s)",
            (i, f'x"; DROP TABLE canary; -- {i}', i / 3, f"{i}.25", f"it's {i}"),
        )
    run("CREATE TABLE PLAIN (ID NUMBER(38,0) NOT NULL, V VARCHAR)")
    run("INSERT INTO PLAIN VALUES (1, 'a'), (2, 'b')")
    with pg_connect() as conn:
        conn.execute("CREATE TABLE public.canary (id int)")
        conn.execute("INSERT INTO public.canary VALUES (42)")

    tables = [
        {"name": WEIRD_TABLE, "chunk_column": "ID", "chunk_size": 2, "primary_key": ["ID"]},
        {"name": "PLAIN", "chunk_column": "ID"},
    ]
    report = migrate(
        source_name="analytics",
        migrations_file=migrations_for(tmp_path, servers, pg_database, database, tables),
    )
    assert report.status == "completed" and report.rows == 7
    check_exact(snowflake_kwargs, database, WEIRD_TABLE, pg_connect, f"analytics.{quoted(WEIRD_TABLE)}")
    check_exact(snowflake_kwargs, database, "PLAIN", pg_connect, "analytics.plain")
    assert target_tables(pg_connect) == {
        ("analytics", WEIRD_TABLE): 5,
        ("analytics", "plain"): 2,
        ("public", "canary"): 1,
    }
    staged = sorted(p.parent.name for p in (tmp_path / "staging" / report.job_id).glob("*/*.parquet"))
    assert staged == ["PLAIN"] + [WEIRD_TABLE] * 3


def test_names_with_quotes_spaces_and_semicolons_from_postgres(tmp_path, servers, pg_database, pg_connect):
    from flows.migrate import migrate

    table = 'Odd "T"; x'
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute(
            f"CREATE TABLE src.{quoted(table)} (id bigint PRIMARY KEY, "
            + ", ".join(f"{quoted(c.lower())} text" for c in PG_WEIRD_COLUMNS)
            + ")"
        )
        conn.execute(
            f"INSERT INTO src.{quoted(table)} SELECT n, 'v' || n || '\"; --', NULL, ';', '(', '''' "
            "FROM generate_series(1, 5) n"
        )
        conn.execute("CREATE TABLE public.canary (id int)")
        conn.execute("INSERT INTO public.canary VALUES (42)")
    path = tmp_path / "migrations.yaml"
    write_migrations(path, servers, pg_database, [{"name": table, "chunk_column": "id", "chunk_size": 3}])
    spec = yaml.safe_load(path.read_text())
    spec["migrations"]["analytics"]["source"] = {**spec["migrations"]["analytics"]["target"], "schema": "src"}
    path.write_text(yaml.safe_dump(spec))

    report = migrate(source_name="analytics", migrations_file=str(path))
    assert report.rows == 5
    names = ["id", *(c.lower() for c in PG_WEIRD_COLUMNS)]
    assert_same_rows(
        target_rows(pg_connect, f"src.{quoted(table)}", names, "id"),
        target_rows(pg_connect, f"analytics.{quoted(table.lower())}", names, "id"),
        names,
    )
    assert target_tables(pg_connect) == {
        ("src", table): 5,
        ("analytics", table.lower()): 5,
        ("public", "canary"): 1,
    }


def test_type_overrides_must_be_type_names(tmp_path, servers, pg_database, pg_connect, snow):
    from flows.migrate import migrate
    from tests.test_bad_input import assert_target_untouched

    database, run = snow
    run("CREATE TABLE T (ID NUMBER(38,0) NOT NULL, AMOUNT NUMBER(38,0))")
    injected = "numeric); DROP TABLE public.canary; --"
    file = migrations_for(
        tmp_path,
        servers,
        pg_database,
        database,
        [{"name": "T", "chunk_column": "ID", "type_overrides": {"AMOUNT": injected}}],
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"tables.0.type_overrides: Value error, AMOUNT: {injected!r} is not a PostgreSQL type name "
            "(such as numeric(38,0), varchar(20), timestamp with time zone, double precision or text[])"
        ),
    ):
        migrate(source_name="analytics", migrations_file=file)
    assert_target_untouched(pg_connect)


def test_columns_that_become_one_target_name_are_refused_at_plan_time(
    tmp_path, servers, pg_database, pg_connect
):
    """fakesnow (DuckDB) cannot hold "A" and "a" in one table, so the source is PostgreSQL."""
    from flows.migrate import migrate

    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute('CREATE TABLE src.t (id bigint, "Amount" numeric(10,2), "AMOUNT" numeric(10,2))')
    path = tmp_path / "migrations.yaml"
    write_migrations(path, servers, pg_database, [{"name": "t", "chunk_column": "id"}])
    spec = yaml.safe_load(path.read_text())
    spec["migrations"]["analytics"]["source"] = {**spec["migrations"]["analytics"]["target"], "schema": "src"}
    path.write_text(yaml.safe_dump(spec))

    with pytest.raises(
        SourceSchemaError,
        match=re.escape(
            "table t: columns ['Amount', 'AMOUNT'] would all become column 'amount' in the target "
            "(lowercase_identifiers is on); list the columns to move in columns:, rename one in the "
            "source, or set lowercase_identifiers: false"
        ),
    ):
        migrate(source_name="analytics", migrations_file=str(path))
    assert target_tables(pg_connect) == {("src", "t"): 0}
    with pg_connect() as conn:
        assert conn.execute("SELECT to_regnamespace('migration_status')").fetchone() == (None,)


# Strings over 64 KiB bound for InfluxDB --------------------------------------------------------

# measurement "logs" + ",HOST=" + value + "#!~#" + "MSG" (the longest field key) <= 65535 bytes
LONGEST_HOST = 65535 - len("logs,HOST=") - 4 - len("MSG")


def test_strings_over_64_kib_are_left_out_of_influxdb_and_reported(
    tmp_path, servers, pg_database, influx_database, snow
):
    from flows.migrate import migrate

    database, run = snow
    run("CREATE TABLE LOGS (TS TIMESTAMP_NTZ NOT NULL, HOST VARCHAR, MSG VARCHAR, V FLOAT)")
    rows = [
        ("a", "m" * 70_000, 1.0),  # field over 64 KiB: MSG left out, the point kept
        ("h" * 70_000, "ok", 2.0),  # tag over 64 KiB: the series key is too long, row dropped
        ("é" * (LONGEST_HOST // 2), "fits", 3.0),  # the longest series key that fits, in UTF-8 bytes
        ("x" * (LONGEST_HOST + 1), "one byte too long", 4.0),
        ("b", "fine", 5.0),
    ]
    for i, row in enumerate(rows):
        run("INSERT INTO LOGS VALUES (%s, %s, %s, %s)", (f"2024-03-01 00:00:0{i}", *row))
    table = {
        "name": "LOGS",
        "chunk_column": "TS",
        "chunk_interval": "1d",
        "mapping": {"measurement": "logs", "tags": ["HOST"], "fields": ["MSG", "V"]},
    }
    report = migrate(
        source_name="energy",
        migrations_file=influx_file(tmp_path, servers, pg_database, influx_database, database, [table]),
    )
    (chunk,) = report.chunks
    assert (chunk.rows, chunk.rows_dropped) == (3, 2)
    assert chunk.problems == [
        "2 row(s) dropped: the series key (measurement and tags as written) with a field key is longer "
        "than InfluxDB's 65535-byte key limit",
        "field 'MSG': 1 string value(s) longer than 65535 bytes left out",
    ]
    want = {
        ("logs", (("HOST", "a"),), ns("2024-03-01T00:00:00")): {"V": 1.0},
        ("logs", (("HOST", rows[2][0]),), ns("2024-03-01T00:00:02")): {"MSG": "fits", "V": 3.0},
        ("logs", (("HOST", "b"),), ns("2024-03-01T00:00:04")): {"MSG": "fine", "V": 5.0},
    }
    got, _ = stored(servers, influx_database)
    assert_same_points(got, want, {"V"})
    assert len(rows[2][0].encode()) == LONGEST_HOST


# Timestamps outside the target's range ---------------------------------------------------------


def test_times_outside_influxdb_range_fail_planning_clearly_and_a_window_inside_works(
    tmp_path, servers, pg_database, influx_database, snow
):
    from flows.migrate import migrate

    database, run = snow
    run("CREATE TABLE READINGS (TS TIMESTAMP_NTZ NOT NULL, V FLOAT)")
    run(
        "INSERT INTO READINGS VALUES ('1600-01-01 00:00:00', 1.0), ('2024-03-01 00:00:00', 2.0), "
        "('2024-03-02 12:00:00', 3.0), ('2300-01-01 00:00:00', 4.0)"
    )
    table = {
        "name": "READINGS",
        "chunk_column": "TS",
        "chunk_interval": "1d",
        "mapping": {"measurement": "readings", "tags": [], "fields": ["V"]},
    }
    file = influx_file(tmp_path, servers, pg_database, influx_database, database, [table])
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="energy", migrations_file=file)
    assert (
        "table READINGS: TS holds times from 1600-01-01T00:00:00+00:00, before "
        "1677-09-21T00:12:43.145225+00:00 and up to 2300-01-01T00:00:00+00:00, after "
        "2262-04-11T23:47:16.854775+00:00, which InfluxDB cannot store. Set start_time and end_time "
        "within 1677-09-21T00:12:43.145225+00:00 .. 2262-04-11T23:47:16.854775+00:00 to migrate the "
        "rows InfluxDB can hold"
    ) in str(failed.value)
    assert measurements(servers, influx_database) == []

    report = migrate(
        source_name="energy",
        migrations_file=file,
        start_time="2024-03-01T00:00:00Z",
        end_time="2024-03-03T00:00:00Z",
        no_resume=True,
    )
    assert report.rows == 2 and report.tables[0].rows_dropped == 0
    got, _ = stored(servers, influx_database)
    want = {
        ("readings", (), ns("2024-03-01T00:00:00")): {"V": 2.0},
        ("readings", (), ns("2024-03-02T12:00:00")): {"V": 3.0},
    }
    assert_same_points(got, want, {"V"})


def test_a_far_future_time_names_the_span_instead_of_asking_for_a_bigger_chunk(
    tmp_path, servers, pg_database, pg_connect, snow
):
    from flows.migrate import migrate

    database, run = snow
    run("CREATE TABLE VISITS (ID NUMBER(38,0) NOT NULL, TS TIMESTAMP_NTZ NOT NULL)")
    run(
        "INSERT INTO VISITS VALUES (1, '2024-03-01 00:00:00'), (2, '2024-03-02 00:00:00'), (3, '2999-12-31 00:00:00')"
    )
    file = migrations_for(
        tmp_path,
        servers,
        pg_database,
        database,
        [{"name": "VISITS", "chunk_column": "TS", "chunk_interval": "1d"}],
    )
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="analytics", migrations_file=file)
    assert (
        "table VISITS: TS from 2024-03-01T00:00:00 to 2999-12-31T00:00:00.000001 makes 356,417 chunks of "
        "1 day, 0:00:00, more than 100,000. If a few rows lie far from the rest (a wrong year, a "
        "placeholder date), set start_time and end_time to the range to migrate; otherwise raise "
        "chunk_interval"
    ) in str(failed.value)
    assert target_tables(pg_connect) == {}


# Duplicate keys under upsert across chunks ------------------------------------------------------


def test_upsert_refuses_a_key_that_an_earlier_chunk_of_the_job_loaded(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    from flows.migrate import migrate

    database, run = snow
    run("CREATE TABLE DUPS (ID NUMBER(38,0) NOT NULL, TS TIMESTAMP_NTZ NOT NULL, V VARCHAR)")
    run(
        "INSERT INTO DUPS VALUES (1, '2024-03-01 01:00:00', 'first'), (2, '2024-03-01 02:00:00', 'b'), "
        "(1, '2024-03-02 01:00:00', 'second')"
    )
    table = {
        "name": "DUPS",
        "chunk_column": "TS",
        "chunk_interval": "1d",
        "load_mode": "upsert",
        "primary_key": ["ID"],
    }
    file = migrations_for(tmp_path, servers, pg_database, database, [table], extra={"concurrency": 1})
    with pytest.raises(
        MigrationFailed,
        match=r"upsert into analytics\.dups: 1 row\(s\) of chunk 00001-\w+ have the same \['id'\] as rows "
        r"chunk\(s\) of job \S+ loaded before",
    ):
        migrate(source_name="analytics", migrations_file=file)
    with pg_connect() as conn:  # the first chunk stays; the second left nothing behind
        rows = conn.execute("SELECT id, v FROM analytics.dups ORDER BY id").fetchall()
    assert rows == [(1, "first"), (2, "b")]


# The pure checks behind the cases above, over more inputs --------------------------------------


@pytest.mark.parametrize(
    "type_name",
    [
        "numeric(38,0)",
        "numeric(38, 0)",
        "NUMERIC(10,2)",
        "varchar(20)",
        "character varying(255)",
        "bit varying(8)",
        "timestamp with time zone",
        "timestamp(3) without time zone",
        "time with time zone",
        "interval day to second(3)",
        "double precision",
        "text[]",
        "int4[][]",
        "public.my_type",
    ],
)
def test_type_override_names_that_are_accepted(type_name):
    from blocks.spec import TableSpec

    assert TableSpec(name="T", chunk_column="ID", type_overrides={"A": type_name}).type_overrides == {
        "A": type_name
    }


@pytest.mark.parametrize(
    "type_name",
    [
        "numeric); DROP TABLE x; --",
        "text; DROP TABLE x",
        "text -- comment",
        "text /* comment */",
        "text NOT NULL",
        "text DEFAULT 'x'",
        "bigint PRIMARY KEY",
        "integer REFERENCES other (id)",
        'text COLLATE "C"',
        "bigint GENERATED ALWAYS AS IDENTITY",
        "numeric(38,0) CHECK (true)",
        "text\n",
        "'text'",
        '"text"',
        "",
    ],
)
def test_type_override_values_that_are_refused(type_name):
    from pydantic import ValidationError

    from blocks.spec import TableSpec

    with pytest.raises(ValidationError, match="is not a PostgreSQL type name"):
        TableSpec(name="T", chunk_column="ID", type_overrides={"A": type_name})


@pytest.mark.parametrize(
    ("table", "folder"),
    [
        ("PAGE_VIEWS", "PAGE_VIEWS"),
        ('we"ird; name', 'we"ird; name'),
        ("ünïcødé", "ünïcødé"),
        ("a/b", "a%2Fb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("..x", "..x"),
        ("50%", "50%25"),
        ("back\\slash", "back%5Cslash"),
        ("new\nline", "new%0Aline"),
    ],
)
def test_every_staged_chunk_stays_in_its_jobs_folder(table, folder):
    from tasks.export import staging_key
    from tasks.plan import Chunk

    chunk = Chunk(table=table, chunk_id="00000-0123456789", index=0, lower=None, upper=None)
    assert staging_key("job-1", chunk) == f"job-1/{folder}/00000-0123456789.parquet"


def test_schema_drift_names_each_change_and_ignores_what_does_not_matter():
    from blocks.columns import Column, LogicalType
    from tasks.plan import schema_drift

    def number(name, precision=38, scale=0, nullable=True):
        logical = LogicalType.INTEGER if scale == 0 else LogicalType.DECIMAL
        return Column(
            name=name,
            logical=logical,
            precision=precision,
            scale=scale,
            nullable=nullable,
            source_type=f"NUMBER({precision},{scale})",
        )

    text = Column(name="NOTE", logical=LogicalType.STRING, source_type="TEXT")
    planned = [number("ID", nullable=False), number("AMOUNT", 18, 4), text]
    assert schema_drift(planned, [text, number("AMOUNT", 18, 4), number("ID", nullable=False)], True) == []
    assert schema_drift(planned, [*planned[:2], text, number("NEW_ONE")], False) == []
    assert schema_drift([number("ID")], [number("ID", nullable=False)], True) == []  # became NOT NULL
    assert schema_drift(planned, [number("ID"), number("AMOUNT", 18, 6), number("EXTRA")], True) == [
        "column ID was NOT NULL when the job was planned, now allows NULL",
        "column AMOUNT was NUMBER(18,4) when the job was planned, now NUMBER(18,6)",
        "column NOTE (TEXT) was removed",
        "column EXTRA (NUMBER(38,0)) was added",
    ]
