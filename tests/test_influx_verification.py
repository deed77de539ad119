"""Content verification of InfluxDB chunks: after a chunk's points are written and counted, the
target reads the chunk's range back and compares every point (measurement, tag set, time,
field keys, field types and values) with what the staged rows map to. A value that counts
cannot see fails the chunk, naming the field or tag, and the ledger does not mark it loaded.
"""

from __future__ import annotations

import decimal
import re
from datetime import date, time

import numpy as np
import pyarrow as pa
import pytest

from blocks.errors import MigrationFailed
from blocks.influxdb import writes
from blocks.influxdb.line_protocol import FieldSpec, PointMapping, encode_batch, rows_written
from blocks.influxdb.mapping import FieldPlan, PointsPlan
from blocks.influxdb.verify import expected_points as target_free_expected
from blocks.influxdb.verify import kind_of
from tests.energy_support import influx_migrations, write_files
from tests.influx_readback import field_types
from tests.test_influxdb_target import FIELD_KEYS, MEASUREMENT, TAGS, make_target, source_table
from tests.test_pairs import DAYS, READINGS, points_mapping, window

PLAN = PointsPlan(
    time_column="time",
    measurement=MEASUREMENT,
    tags=TAGS,
    fields=tuple(FieldPlan(column=c, key=k) for c, k in FIELD_KEYS.items()),
)


@pytest.fixture(params=["v1", "v2"])
def api(request) -> str:
    return request.param


def migrate_readings(tmp_path, servers, pg_database, influx_database, *, api="v1", verify=None):
    """READINGS from Parquet files into InfluxDB through the pairs' mapping: three daily chunks."""
    from flows.migrate import migrate

    write_files(tmp_path / "files" / "readings", READINGS)
    table = {
        "name": "readings",
        "chunk_column": "taken_at",
        "chunk_interval": "1d",
        "mapping": points_mapping(),
    }
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [table],
        source={"type": "parquet", "location": str(tmp_path / "files")},
        api=api,
        name="readings_points",
        extra={"verify": verify} if verify else None,
    )
    return migrate(source_name="readings_points", migrations_file=str(path), job_id="points-job", **window())


def ledger_chunks(servers, pg_database) -> dict[str, tuple[str, dict]]:
    with servers["pg"].connect(pg_database) as conn:
        rows = conn.execute(
            "SELECT chunk_id, status, details FROM migration_status.migration_chunk_status WHERE job_id = %s",
            ("points-job",),
        ).fetchall()
    return {cid: (status, details or {}) for cid, status, details in rows}


def assert_no_chunk_loaded(servers, pg_database) -> None:
    chunks = ledger_chunks(servers, pg_database)
    assert len(chunks) == DAYS
    assert not [cid for cid, (status, _) in chunks.items() if status == "loaded"], chunks


def fault_in_lines(monkeypatch, pattern: bytes, replacement: bytes, count: int = 0) -> None:
    """Rewrite the line protocol after the encoder made it, before it is sent (a fault in the
    encoder's text, or on the way): `count` rewrites per request body (0: all)."""
    encode = writes.encode_batch

    def faulty(batch, mapping):
        data, report = encode(batch, mapping)
        return re.sub(pattern, replacement, data, count=count), report

    monkeypatch.setattr(writes, "encode_batch", faulty)


# --- what the chunk check refuses -----------------------------------------------------------------


def test_an_integer_field_written_as_a_float_is_refused(
    tmp_path, servers, pg_database, influx_database, monkeypatch
):
    # Every units value loses its "i": InfluxDB stores the field as float, the counts still agree.
    fault_in_lines(monkeypatch, rb"(?<=[ ,])units=(-?\d+)i(?=[ ,])", rb"units=\1")
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings(tmp_path, servers, pg_database, influx_database)
    message = str(failure.value)
    assert "field 'units' of point ('readings', {'site': " in message, message
    assert "(float) in InfluxDB where the staged chunk maps to" in message, message
    assert re.search(r"maps to -?\d+i \(integer\)", message), message
    assert "chunk readings/" in message, message
    assert field_types(servers, influx_database, "readings")["units"] == "float"
    assert_no_chunk_loaded(servers, pg_database)


def test_a_tag_altered_on_the_way_is_refused(tmp_path, servers, pg_database, influx_database, monkeypatch):
    # One point per request gets another site: same number of points, one of them in another series.
    fault_in_lines(monkeypatch, rb"readings,site=plant\\ 2 ", rb"readings,site=plant\\ 7 ", count=1)
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings(tmp_path, servers, pg_database, influx_database)
    message = str(failure.value)
    assert "tag 'site' of point ('readings', {'site': 'plant 2'}, 2024-03-0" in message, message
    assert "is 'plant 7' in InfluxDB where the staged chunk has 'plant 2'" in message, message
    assert "1 staged point(s) not in InfluxDB; 1 point(s) in InfluxDB the chunk does not map to" in message
    assert "chunk readings/" in message, message
    assert_no_chunk_loaded(servers, pg_database)


def test_verify_counts_lets_the_same_fault_through_and_records_it(
    tmp_path, servers, pg_database, influx_database, monkeypatch
):
    fault_in_lines(monkeypatch, rb"(?<=[ ,])units=(-?\d+)i(?=[ ,])", rb"units=\1")
    report = migrate_readings(tmp_path, servers, pg_database, influx_database, verify="counts")
    assert report.status == "completed" and report.rows == READINGS.num_rows
    assert field_types(servers, influx_database, "readings")["units"] == "float"  # the fault is stored
    chunks = ledger_chunks(servers, pg_database)
    assert {status for status, _ in chunks.values()} == {"loaded"}
    assert {details["verified"] for _, details in chunks.values()} == {"counts"}


def test_a_clean_migration_passes_content_verification_and_records_it(
    tmp_path, servers, pg_database, influx_database, api
):
    report = migrate_readings(tmp_path, servers, pg_database, influx_database, api=api)
    assert report.status == "completed" and report.rows == READINGS.num_rows and len(report.chunks) == DAYS
    chunks = ledger_chunks(servers, pg_database)
    assert {status for status, _ in chunks.values()} == {"loaded"}
    assert {details["verified"] for _, details in chunks.values()} == {"content"}


# --- the canonical form, straight on the target -----------------------------------------------------


def test_read_back_equals_the_staged_points_for_nasty_data(servers, api, influx_database):
    """Nasty tags and strings, NaN and NULL values, -0.0, 1e-310, int64 extremes, times in 1900
    and 2200, and rows the encoder drops: what InfluxDB holds reads back equal to what the rows
    map to; one value changed in InfluxDB is named with its point and both values."""
    table = source_table(20_000)
    target = make_target(servers, api, influx_database)
    load = target.write_chunk(table.to_batches(max_chunksize=6_000), PLAN.point_mapping())
    expected = target.expected_points(table, PLAN)
    actual = target.read_points([MEASUREMENT], None, None)
    assert expected.num_rows == actual.num_rows == load.points_written < table.num_rows
    assert target.compare_points(expected, actual, "here") is None
    assert "-0" in expected["value f"].to_pylist() and kind_of("-0") == "float"

    # Overwrite one point's integer with another integer, straight through the encoder.
    row = table.slice(100, 1)
    changed = row.set_column(row.schema.get_field_index("i"), "i", pa.array([12345], pa.int64()))
    target.write_chunk(changed.to_batches(), PLAN.point_mapping())
    problem = target.compare_points(expected, target.read_points([MEASUREMENT], None, None), "chunk x")
    want = row.column("i")[0].as_py()
    assert problem is not None and problem.startswith("chunk x: field 'count=i' of point ")
    assert f"holds 12345i (integer) in InfluxDB where the staged chunk maps to {want}i (integer)" in problem


def test_every_field_type_maps_as_the_encoder_writes_it(servers, api, influx_database):
    """Field values of every Arrow type a mapping accepts read back equal to their canonical form,
    in both timestamp_fields settings, with a chunk range that leaves out points around it."""
    n = 40
    times = np.arange(n, dtype=np.int64) * 1_000_000_007 + 1_709_251_200_000_000_000
    columns = {
        "time": pa.array(times, pa.timestamp("ns", "UTC")),
        "n": pa.array(range(n), pa.int64()),  # an integer tag
        "f32": pa.array([0.1 * i if i % 5 else None for i in range(n)], pa.float32()),
        "dec": pa.array([decimal.Decimal(f"{i}.10") for i in range(n)], pa.decimal128(12, 2)),
        "i8": pa.array([i - 20 for i in range(n)], pa.int8()),
        "u32": pa.array([i * 100_000_000 for i in range(n)], pa.uint32()),
        "stamp": pa.array((times - 5_000) // 1_000, pa.timestamp("us")),
        "day": pa.array([date(2024, 1, 1 + i % 28) for i in range(n)]),
        "clock": pa.array([time(i % 24, 30) for i in range(n)]),
        "dec_text": pa.array([decimal.Decimal(f"-{i}.05") for i in range(n)], pa.decimal128(12, 2)),
        "int_float": pa.array([2**60 + i for i in range(n)], pa.int64()),
    }
    fields = [
        FieldPlan(column="f32", key="f32"),
        FieldPlan(column="dec", key="dec"),
        FieldPlan(column="i8", key="i8"),
        FieldPlan(column="u32", key="u32"),
        FieldPlan(column="stamp", key="stamp"),
        FieldPlan(column="day", key="day"),
        FieldPlan(column="clock", key="clock"),
        FieldPlan(column="dec_text", key="dec text", kind="string"),
        FieldPlan(column="int_float", key="int as float", kind="float"),
    ]
    target = make_target(servers, api, influx_database)
    for timestamp_fields in ("integer", "string"):  # one measurement each: a field keeps its type
        names = [f"{timestamp_fields} {i % 3}" for i in range(n)]
        table = pa.table({**columns, "kind": pa.array(names)})
        plan = PointsPlan(
            time_column="time",
            measurement_column="kind",
            tags=("n",),
            fields=tuple(fields),
            timestamp_fields=timestamp_fields,
        )
        target.write_chunk(table.to_batches(), plan.point_mapping())
        start, stop = int(times[5]), int(times[30])
        inside = table.filter(pa.array((times >= start) & (times < stop)))
        expected = target.expected_points(inside, plan)
        actual = target.read_points(sorted(set(names)), start, stop)
        assert actual.num_rows == 25
        assert target.compare_points(expected, actual, "here") is None, timestamp_fields
        kinds = field_types(servers, influx_database, f"{timestamp_fields} 0")
        assert kinds["stamp"] == timestamp_fields and kinds["u32"] == "integer" and kinds["dec"] == "float"


def test_rows_written_is_the_encoders_own_decision():
    table = source_table(5_000)
    mapping = PointMapping(
        fields=tuple(FieldSpec(c, k) for c, k in FIELD_KEYS.items()),
        time_column="time",
        tags=TAGS,
        measurement="m",
    )
    kept = rows_written(table, mapping)
    data, report = encode_batch(table, mapping)
    again, report_kept = encode_batch(table.filter(pa.array(kept)), mapping)
    assert report.rows_dropped > 0 and int(kept.sum()) == report.lines_out
    assert again == data and report_kept.rows_dropped == 0
    # expected_points leaves out the same rows, even all of them.
    assert target_free_expected(table, PLAN).num_rows == report.lines_out
    assert target_free_expected(table.filter(pa.array(~kept)), PLAN).num_rows == 0
