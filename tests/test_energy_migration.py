"""Time series into InfluxDB through the `migrate` flow: Parquet files (a Timestream UNLOAD) and
Timestream's query API (moto) as sources, InfluxDB 1.x directly and through the v2 API.

Every test reads InfluxDB back and compares every measurement, tag, field value, field type
and nanosecond timestamp with the source records.
"""

from __future__ import annotations

import math
import re
import time
from datetime import timedelta

import boto3
import numpy as np
import pyarrow as pa
import pytest

from blocks.errors import ConfigError, ConnectionCheckError, DataConversionError, SourceSchemaError
from blocks.influxdb.target import InfluxDBTarget
from tests.energy_support import (
    FIELDS,
    FLOAT_KEYS,
    INFLUX_KIND,
    MEASURES,
    START,
    START_NS,
    TAGS,
    VALUE_COLUMNS,
    assert_same_points,
    expected_points,
    influx_migrations,
    single_measure_records,
    stored,
    write_files,
)
from tests.influx_readback import select, write_lines
from tests.support import timestream_settings
from tests.test_resume import task_states
from tests.timestream_fake import queue_table


def unload_source(tmp_path, table: pa.Table) -> dict:
    write_files(tmp_path / "unload" / "generation_data", table)
    return {"type": "parquet", "location": str(tmp_path / "unload")}


def energy_table(**mapping) -> dict:
    return {"name": "generation_data", "chunk_column": "time", "chunk_interval": "1d", **mapping}


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_unload_files_reach_influxdb_value_for_value(tmp_path, servers, pg_database, influx_database, api):
    """With the default mapping: measurement from measure_name, text columns as tags."""
    from flows.migrate import migrate

    records = single_measure_records(6_000)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table()],
        source=unload_source(tmp_path, records),
        api=api,
    )
    report = migrate(source_name="energy", migrations_file=str(path))

    assert report.status == "completed" and report.rows == records.num_rows
    assert len(report.chunks) == 3 and all(c.unit == "points" and not c.problems for c in report.chunks)
    assert "points" in report.summary()
    got, types = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)
    for name, (kind, column) in MEASURES.items():  # measurement = measure_name, one typed field each
        assert types[name] == {column: INFLUX_KIND[kind]}


def test_multi_measure_records_with_constant_measurement_and_string_timestamps(
    tmp_path, servers, pg_database, influx_database
):
    from flows.migrate import migrate

    n = 2_000
    index = np.arange(n)
    times = pa.array(
        1_709_251_200_000_000_000 + index * 86_400_000_000_000 // n * 2 + 7, pa.timestamp("ns", "UTC")
    )
    records = pa.table(
        {
            "time": times,
            "plant": pa.array(np.array(["a, b=c", 'q "x"', "ü €", "p\\q"], dtype=object)[index % 4]),
            "power": pa.array(np.linspace(-1e6, 1e6, n)),
            "units": pa.array(index * 3 - 100, pa.int64()),
            "note": pa.array(np.array(["x=1, y", None, "ok"], dtype=object)[index % 3]),
            "online": pa.array(index % 5 != 0),
            "read_at": pa.array(times.cast(pa.int64()).to_numpy() - 1, pa.timestamp("ns", "UTC")),
        }
    )
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [
            energy_table(
                name="plant_metrics",
                chunk_interval="12h",
                mapping={
                    "measurement": "plant metrics, v1",
                    "tags": ["plant"],
                    "fields": [
                        "power",
                        {"column": "units", "key": "units online"},
                        "note",
                        "online",
                        "read_at",
                    ],
                    "timestamp_fields": "string",
                    "count_field": "power",
                },
            )
        ],
        source={"type": "parquet", "location": str(tmp_path / "files")},
        api="v2",
    )
    write_files(tmp_path / "files" / "plant_metrics", records)
    report = migrate(source_name="energy", migrations_file=str(path))
    assert report.rows == n and len(report.chunks) == 4

    fields = {"power": "power", "units": "units online", "note": "note", "online": "online"}
    want = expected_points(records, ["plant"], fields, None, "plant metrics, v1")
    read_at = {
        t: v
        for t, v in zip(
            times.cast(pa.int64()).to_pylist(), records.column("read_at").to_pylist(), strict=True
        )
    }
    for (_, _, ns), values in want.items():  # RFC 3339 with all nine digits
        values["read_at"] = read_at[ns].strftime("%Y-%m-%dT%H:%M:%S.") + f"{(ns - 1) % 10**9:09d}Z"
    got, types = stored(servers, influx_database)
    assert_same_points(got, want, {"power"})
    assert types["plant metrics, v1"] == {
        "power": "float",
        "units online": "integer",
        "note": "string",
        "online": "boolean",
        "read_at": "string",
    }


def test_lossy_rows_and_values_are_reported_per_chunk(tmp_path, servers, pg_database, influx_database):
    from flows.migrate import migrate

    base = 1_709_251_200_000_000_000
    records = pa.table(
        {
            "time": pa.array([base + k for k in range(8)], pa.timestamp("ns", "UTC")),
            "host": pa.array(["ok", "new\nline", "ok", "", "ok", "ok", "ok", "b"]),
            "value": pa.array([1.0, 2.0, math.nan, 4.0, math.inf, None, -math.inf, 8.0]),
            "flag": pa.array([True, True, True, True, None, None, None, False]),
        }
    )
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(name="m", mapping={"tags": ["host"], "fields": ["value", "flag"]})],
        source={"type": "parquet", "location": str(tmp_path / "files")},
    )
    write_files(tmp_path / "files" / "m", records, files=1)
    report = migrate(source_name="energy", migrations_file=str(path))

    (chunk,) = report.chunks
    # row 1: newline in a tag; rows 4 and 6: ±Inf and no other field; row 5: nothing at all
    assert chunk.rows == 4 and chunk.rows_dropped == 4
    problems = "\n".join(chunk.problems)
    assert "1 row(s) dropped: the measurement or a tag value holds a newline" in problems
    assert "3 row(s) dropped: no field value is left" in problems
    assert "field 'value': 3 NaN/Inf value(s) left out" in problems
    assert "tag 'host': 1 empty value(s) left out" in problems
    assert report.tables[0].rows_dropped == 4 and "left out" in report.summary()
    got, _ = stored(servers, influx_database)
    assert_same_points(
        got,
        expected_points(records.take([0, 2, 3, 7]), ["host"], {"value": "value", "flag": "flag"}, None, "m"),
        {"value"},
    )


def test_field_type_conflict_fails_naming_field_and_chunk(tmp_path, servers, pg_database, influx_database):
    from blocks.errors import MigrationFailed
    from flows.migrate import migrate

    records = single_measure_records(400, days=1)
    # the field exists as a string (in the same shard: 1.x keeps field types per shard)
    write_lines(servers, influx_database, f'generation_mw measure_value::double="text" {START_NS + 1}')
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(mapping={"tags": TAGS})],
        source=unload_source(tmp_path, records),
    )
    with pytest.raises(MigrationFailed) as failure:
        migrate(source_name="energy", migrations_file=str(path))
    message = str(failure.value)
    assert 'field "measure_value::double" of measurement "generation_mw" is stored as string' in message
    assert "chunk generation_data/00000-" in message


def test_failure_in_chunk_k_then_rerun_resumes_without_exporting_again(
    tmp_path, servers, pg_database, influx_database, monkeypatch
):
    from flows.migrate import migrate

    records = single_measure_records(8_000, days=6)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(mapping={"tags": TAGS})],
        source=unload_source(tmp_path, records),
        extra={"concurrency": 1},
    )
    real_write = InfluxDBTarget.write_chunk
    failing = "00003"

    def write_failing_at_k(self, batches, mapping, *, chunk=None):
        if chunk.split("/")[1].startswith(failing):
            raise DataConversionError("injected failure in chunk 3")
        return real_write(self, batches, mapping, chunk=chunk)

    monkeypatch.setattr(InfluxDBTarget, "write_chunk", write_failing_at_k)
    with pytest.raises(RuntimeError, match="injected failure"):
        migrate(source_name="energy", job_id="energy-k", migrations_file=str(path))
    got, _ = stored(servers, influx_database)
    assert 0 < len(got) < records.num_rows

    monkeypatch.setattr(InfluxDBTarget, "write_chunk", real_write)
    referenced = referenced_chunks(monkeypatch)  # the files are read in place: no staged file to watch
    state = migrate(source_name="energy", job_id="energy-k", migrations_file=str(path), return_state=True)
    report = state.result()
    assert report.status == "completed" and report.resumed and len(report.chunks) == 6
    chunk_states = task_states(state.state_details.flow_run_id, "chunk", expected=6)
    done_before = [c for c in chunk_states if c < failing]
    assert len(done_before) == 3
    for cid in done_before:  # finished in the first run: cached whole, nothing exported again
        assert chunk_states[cid] == "Cached"
    # the others are exported again: a reference to their rows is taken afresh
    assert len(referenced) == 3 and not list((tmp_path / "staging").rglob("*.parquet"))
    got, _ = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)


def referenced_chunks(monkeypatch) -> list[tuple]:
    """The (lower, upper) of every chunk `ParquetTables` hands over by reference from now on."""
    from blocks.parquet.source import ParquetTables

    real, seen = ParquetTables.reference_chunk, []

    def recording(self, table, columns, column, lower, upper):
        seen.append((lower, upper))
        return real(self, table, columns, column, lower, upper)

    monkeypatch.setattr(ParquetTables, "reference_chunk", recording)
    return seen


def ledger_staged_uris(servers, pg_database: str, job_id: str) -> dict[str, str]:
    with servers["pg"].connect(pg_database) as conn:
        rows = conn.execute(
            "SELECT chunk_id, staged_uri FROM migration_status.migration_chunk_status WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return dict(rows)


def test_parquet_files_are_loaded_in_place_with_nothing_copied_into_staging(
    tmp_path, servers, pg_database, influx_database
):
    """A Parquet source stages by reference: the load reads the source's own files (each chunk
    its rows of them, whatever files they lie in), staging stays empty though staged files are
    kept, and the ledger names the folder the chunk came from."""
    from flows.migrate import migrate

    records = single_measure_records(3_000, days=3)
    source = unload_source(tmp_path, records)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(mapping={"tags": TAGS})],
        source=source,
        extra={"keep_staged_files": True, "verify": "content"},
    )
    report = migrate(source_name="energy", job_id="energy-ref", migrations_file=str(path))
    assert report.status == "completed" and report.rows == records.num_rows and len(report.chunks) == 3
    assert all(c.verified == "content" and c.bytes > 0 for c in report.chunks)
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    uris = ledger_staged_uris(servers, pg_database, "energy-ref")
    assert len(uris) == 3 and set(uris.values()) == {f"{source['location']}/generation_data"}
    got, _ = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)


# --- bad input: a clear error, and nothing written ----------------------------------------------


def energy_file(tmp_path, servers, pg_database, influx_database, records=None, **changes):
    records = records if records is not None else single_measure_records(300, days=1)
    table = energy_table(mapping={"tags": TAGS}) | changes.pop("table", {})
    return influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [table],
        source=unload_source(tmp_path, records),
        **changes,
    )


def assert_nothing_written(servers, db: str) -> None:
    assert not select(servers, db, "SHOW MEASUREMENTS")


def test_bad_time_range_is_refused(tmp_path, servers, pg_database, influx_database):
    from flows.migrate import migrate

    path = energy_file(tmp_path, servers, pg_database, influx_database)
    with pytest.raises(ConfigError, match="is not after start_time"):
        migrate(
            source_name="energy",
            migrations_file=str(path),
            start_time=(START + timedelta(days=1)).isoformat(),
            end_time=START.isoformat(),
        )
    with pytest.raises(ConfigError, match="not an ISO 8601 time"):
        migrate(source_name="energy", migrations_file=str(path), start_time="yesterday")
    assert_nothing_written(servers, influx_database)


def test_unknown_table_is_named(tmp_path, servers, pg_database, influx_database):
    from flows.migrate import migrate

    path = energy_file(tmp_path, servers, pg_database, influx_database, table={"name": "no_such_table"})
    with pytest.raises(SourceSchemaError, match="no_such_table"):
        migrate(source_name="energy", migrations_file=str(path))
    assert_nothing_written(servers, influx_database)


def test_measure_type_the_mapping_cannot_represent(tmp_path, servers, pg_database, influx_database):
    from flows.migrate import migrate

    records = single_measure_records(100, days=1).append_column(
        "blob", pa.array([b"\x00"] * 100, pa.binary())
    )
    path = energy_file(tmp_path, servers, pg_database, influx_database, records=records)
    with pytest.raises(SourceSchemaError, match="field blob .*no binary field type"):
        migrate(source_name="energy", migrations_file=str(path))
    path = energy_file(
        tmp_path,
        servers,
        pg_database,
        influx_database,
        table={
            "mapping": {"tags": TAGS, "fields": [{"column": "measure_value::varchar", "kind": "integer"}]}
        },
    )
    with pytest.raises(SourceSchemaError, match="measure_value::varchar .*cannot be written as kind integer"):
        migrate(source_name="energy", migrations_file=str(path))
    assert_nothing_written(servers, influx_database)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"url": "http://127.0.0.1:9"}, "cannot reach InfluxDB at http://127.0.0.1:9"),
        ({"username": "nobody"}, "unauthorized"),
        ({"database": "missing_db"}, "missing_db"),
    ],
)
def test_unreachable_unauthorized_or_missing_database(
    tmp_path, servers, pg_database, influx_database, target, message
):
    from flows.migrate import migrate

    path = energy_file(tmp_path, servers, pg_database, influx_database, target=target)
    with pytest.raises(ConnectionCheckError, match=message) as failure:
        migrate(source_name="energy", migrations_file=str(path))
    assert "target:" in str(failure.value)
    assert_nothing_written(servers, influx_database)


def test_v2_unknown_bucket_and_bad_token(tmp_path, servers, pg_database, influx_database, monkeypatch):
    from flows.migrate import migrate

    path = energy_file(
        tmp_path, servers, pg_database, influx_database, api="v2", target={"bucket": "nobucket"}
    )
    with pytest.raises(ConnectionCheckError, match="nobucket"):
        migrate(source_name="energy", migrations_file=str(path))
    monkeypatch.setenv("INFLUX_TOKEN", "wrong-token-" + str(time.time()))
    path = energy_file(tmp_path, servers, pg_database, influx_database, api="v2")
    with pytest.raises(ConnectionCheckError, match="unauthorized") as failure:
        migrate(source_name="energy", migrations_file=str(path))
    assert "wrong-token" not in str(failure.value)
    assert_nothing_written(servers, influx_database)


def test_influxdb_target_needs_a_ledger_and_no_replace(tmp_path, servers, pg_database, influx_database):
    import yaml

    from tasks.config import load_migrations

    path = energy_file(tmp_path, servers, pg_database, influx_database)
    spec = yaml.safe_load(path.read_text())
    del spec["migrations"]["energy"]["ledger"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="an influxdb target needs ledger"):
        load_migrations(path)
    for mode in ("replace", "upsert"):
        table = {"load_mode": mode, "primary_key": ["time"]}
        path = energy_file(tmp_path, servers, pg_database, influx_database, table=table)
        with pytest.raises(ConfigError, match=f"load_mode {mode} is not available for influxdb"):
            load_migrations(path)


# --- Timestream's query API (moto) as the source --------------------------------------------


# Timestream's types and attribute roles of `single_measure_records`' columns.
SINGLE_KINDS = {"region": "VARCHAR", "plant": "VARCHAR", "source": "VARCHAR", "measure_name": "VARCHAR"}
SINGLE_KINDS |= {"time": "TIMESTAMP"} | {column: kind for kind, column in MEASURES.values()}
SINGLE_ROLES = {
    "region": "DIMENSION",
    "plant": "DIMENSION",
    "source": "DIMENSION",
    "measure_name": "MEASURE_NAME",
}
SINGLE_ROLES |= {"time": "TIMESTAMP"} | {column: "MEASURE_VALUE" for column in VALUE_COLUMNS}


def queue_timestream(
    servers, settings: dict, table: str, data: pa.Table, kinds: dict, roles: dict, days: int
):
    from blocks.timestream import TimestreamSettings
    from blocks.timestream.source import TimestreamSource

    source: TimestreamSource = TimestreamSettings.model_validate(settings).build("source")
    windows = [(START + timedelta(days=d), START + timedelta(days=d + 1)) for d in range(days)]
    return queue_table(
        servers["moto"].port,
        source,
        table,
        data,
        kind_by_column=kinds,
        roles=roles,
        windows=windows,
        page_rows=300,
    )


def migrate_two_days_exactly(tmp_path, servers, pg_database, influx_database, settings, records) -> dict:
    """Run `energy` from Timestream over START's first two days; InfluxDB must hold every record
    exactly. Returns the field types per measurement."""
    from flows.migrate import migrate

    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [energy_table()], source=settings
    )
    report = migrate(
        source_name="energy",
        migrations_file=str(path),
        start_time=START.isoformat(),
        end_time=(START + timedelta(days=2)).isoformat(),
    )
    assert report.rows == records.num_rows and len(report.chunks) == 2
    got, types = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)
    return types


def test_timestream_single_measure_records_with_default_mapping(
    tmp_path, servers, pg_database, influx_database
):

    records = single_measure_records(3_000, days=2)
    settings = timestream_settings(servers, "ons_" + influx_database, page_rows=300)
    kinds, roles = SINGLE_KINDS, SINGLE_ROLES
    windows = queue_timestream(servers, settings, "generation_data", records, kinds, roles, days=2)
    assert sum(w.num_rows for w in windows) == records.num_rows
    types = migrate_two_days_exactly(tmp_path, servers, pg_database, influx_database, settings, records)
    assert types["units_online"] == {"measure_value::bigint": "integer"}


def test_timestream_multi_measure_records(tmp_path, servers, pg_database, influx_database):
    from flows.migrate import migrate

    n = 1_500
    index = np.arange(n)
    times = 1_709_251_200_000_000_000 + index * (86_400_000_000_000 // n) + 123
    records = pa.table(
        {
            "plant": pa.array(np.array(["a, b=c", 'q "x"', "ü €", "p\\q"], dtype=object)[index % 4]),
            "measure_name": pa.array(["metrics"] * n),
            "time": pa.array(times, pa.timestamp("ns", "UTC")),
            "power": pa.array(np.where(index % 9 == 0, np.nan, np.linspace(-5e5, 5e5, n))),
            "units": pa.array(index - 700, pa.int64()),
            "note": pa.array(np.array(["x=1, y", None, "ok"], dtype=object)[index % 3]),
            "online": pa.array(index % 5 != 0),
        }
    )
    settings = timestream_settings(servers, "ons_" + influx_database, page_rows=300)
    kinds = {"plant": "VARCHAR", "measure_name": "VARCHAR", "time": "TIMESTAMP", "power": "DOUBLE"}
    kinds |= {"units": "BIGINT", "note": "VARCHAR", "online": "BOOLEAN"}
    roles = {"plant": "DIMENSION", "measure_name": "MEASURE_NAME", "time": "TIMESTAMP"}
    roles |= {c: "MULTI" for c in ("power", "units", "note", "online")}
    queue_timestream(servers, settings, "plant_metrics", records, kinds, roles, days=1)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(name="plant_metrics")],
        source=settings,
        api="v2",
    )
    report = migrate(
        source_name="energy",
        migrations_file=str(path),
        start_time=START.isoformat(),
        end_time=(START + timedelta(days=1)).isoformat(),
    )
    (chunk,) = report.chunks
    assert chunk.rows == n and "field 'power': 167 NaN/Inf value(s) left out" in chunk.problems[0]
    fields = {c: c for c in ("power", "units", "note", "online")}
    got, types = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, ["plant"], fields, "measure_name", None), {"power"})
    assert types["metrics"] == {"power": "float", "units": "integer", "note": "string", "online": "boolean"}


def test_the_repos_migrations_file_defines_the_energy_jobs():
    from tasks.config import DEFAULT_MIGRATIONS_FILE, load_migrations

    migrations = load_migrations(DEFAULT_MIGRATIONS_FILE).migrations
    assert {"analytics", "conflict", "energy", "energy_live"} <= migrations.keys()
    energy, live = migrations["energy"], migrations["energy_live"]
    assert (energy.source.type, energy.target.type, energy.target.container) == (
        "parquet",
        "influxdb",
        "generation_data",
    )
    assert (live.source.type, live.source.database, live.target.bucket) == (
        "timestream",
        "ons_energy_data",
        "generation_data",
    )


def test_a_postgresql_target_keeps_its_own_ledger(tmp_path, servers, pg_database):
    from tasks.config import load_migrations
    from tests.support import write_migrations

    ledger = {"type": "postgres", "host": "127.0.0.1", "port": servers["pg"].port, "dbname": "elsewhere"}
    path = write_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        [{"name": "EVENTS", "chunk_column": "EVENT_ID"}],
        extra={"ledger": ledger},
    )
    with pytest.raises(ConfigError, match="ledger applies to influxdb targets"):
        load_migrations(path)


def queue_unloads(servers, influx_database: str, records: pa.Table, skew: int = 0) -> dict:
    """The Timestream settings (unload mode) of a source whose two one-day UNLOADs of `records`
    each write two files and a manifest; `skew` rows more per file in the manifest (and in the
    UNLOAD's answer) than the file holds."""
    from blocks.timestream import TimestreamSettings
    from tests.test_timestream_source import put_unload, queue_unload

    settings = timestream_settings(servers, "ons_" + influx_database, page_rows=300)
    settings |= {
        "export_mode": "unload",
        "unload_location": f"s3://unload-{influx_database.replace('_', '-')}/x/",
    }
    source = TimestreamSettings.model_validate(settings).build("source")
    kinds, roles = SINGLE_KINDS, SINGLE_ROLES
    windows = [(START + timedelta(days=d), START + timedelta(days=d + 1)) for d in range(2)]
    # DESCRIBE runs once per chunk too in unload mode (for the types to read the files back as)
    rows = queue_table(
        servers["moto"].port,
        source,
        "generation_data",
        records,
        kind_by_column=kinds,
        roles=roles,
        windows=windows,
        repeat=3,
    )
    names = records.column_names
    for (lower, upper), window in zip(windows, rows, strict=True):
        select_sql = source.window_sql("generation_data", names, "time", lower, upper)
        naive = window.set_column(names.index("time"), "time", window.column("time").cast(pa.timestamp("ns")))
        files = [naive.slice(0, 300), naive.slice(300)]  # UNLOAD writes naive nanosecond times
        manifest = put_unload(servers, source, select_sql, files, skew=skew)
        queue_unload(servers, source, select_sql, window.num_rows + 2 * skew, manifest)
    return settings


def unload_objects(servers, settings: dict) -> list[str]:
    from tests.test_timestream_source import endpoint

    s3 = boto3.client("s3", endpoint_url=endpoint(servers), region_name="us-east-1")
    bucket = settings["unload_location"].removeprefix("s3://").split("/")[0]
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_timestream_unload_mode_loads_each_chunks_unload_files_in_place(
    tmp_path, servers, pg_database, influx_database
):
    """Each chunk is read through its manifest, exactly its files, where UNLOAD wrote them:
    nothing is copied into staging, the ledger names the manifest, and a rollback of the job
    removes its points but leaves the UNLOAD's files (they are the source's, not staged)."""
    from flows.migrate import migrate
    from flows.rollback import rollback

    records = single_measure_records(2_000, days=2)
    settings = queue_unloads(servers, influx_database, records)
    unloaded = unload_objects(servers, settings)
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [energy_table()], source=settings
    )
    report = migrate(
        source_name="energy",
        job_id="energy-unload",
        migrations_file=str(path),
        start_time=START.isoformat(),
        end_time=(START + timedelta(days=2)).isoformat(),
    )
    assert report.rows == records.num_rows and len(report.chunks) == 2
    got, _ = stored(servers, influx_database)
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    manifests = set(ledger_staged_uris(servers, pg_database, "energy-unload").values())
    assert len(manifests) == 2 and all(m.endswith("_manifest.json") for m in manifests)

    result = rollback(job_id="energy-unload", migrations_file=str(path))
    assert result.points_deleted_ranges > 0 and stored(servers, influx_database)[0] == {}
    assert unload_objects(servers, settings) == unloaded and len(unloaded) == 2 * 3


def test_an_unload_whose_manifest_miscounts_its_files_is_refused_naming_the_chunk(
    tmp_path, servers, pg_database, influx_database
):
    """The manifest (and the UNLOAD's answer) count one row more per file than the files hold:
    validation compares the files' own count with it and refuses the chunk before its load."""
    from blocks.errors import MigrationFailed
    from flows.migrate import migrate

    records = single_measure_records(2_000, days=2)
    settings = queue_unloads(servers, influx_database, records, skew=1)
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [energy_table()], source=settings
    )
    with pytest.raises(MigrationFailed) as failure:
        migrate(
            source_name="energy",
            migrations_file=str(path),
            start_time=START.isoformat(),
            end_time=(START + timedelta(days=2)).isoformat(),
        )
    message = str(failure.value)
    # whichever chunk fails first: the files hold 1,000 rows, the manifest says 1,002
    assert re.search(
        r"generation_data chunk 0000[01]-\w+ \[.*\): staged rows 1000, the source's manifest reports 1002",
        message,
    ), message
    assert_nothing_written(servers, influx_database)
