"""InfluxDB failing in the middle of a migration: chunk writes retry with backoff, the circuit
breaker stops new chunks after N failures in a row, the run fails with a clear error, and a
rerun once InfluxDB is back finishes with exactly the source's points.

The target is the session's InfluxDB 1.x behind a `FaultProxy`; the source is Parquet files
of six days, one chunk a day, loaded one chunk at a time. The fault starts with the first write
after the ledger shows chunk 0 loaded: either every write answers 503, or InfluxDB goes away.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import timedelta

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.energy_support import (
    FIELDS,
    FLOAT_KEYS,
    START,
    TAGS,
    assert_same_points,
    expected_points,
    influx_migrations,
    single_measure_records,
    stored,
    write_files,
)
from tests.fault_proxy import FaultProxy
from tests.test_resume import _task_states, ledger

RETRIES = {"attempts": 2, "delay_seconds": 0.4, "jitter": 0.1}
BREAKER = 2  # max_consecutive_chunk_failures
DAYS = 6


@pytest.fixture
def proxy(servers):
    with FaultProxy(servers["influx"].port) as proxy:
        yield proxy


@pytest.fixture
def energy(tmp_path, servers, pg_database, influx_database, proxy):
    """(migrations file, source records) for an `energy` job writing through the proxy."""
    records = single_measure_records(3_000, days=DAYS)
    write_files(tmp_path / "unload" / "generation_data", records)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [
            {
                "name": "generation_data",
                "chunk_column": "time",
                "chunk_interval": "1d",
                "mapping": {"tags": TAGS},
            }
        ],
        source={"type": "parquet", "location": str(tmp_path / "unload")},
        target={"url": proxy.url},
        extra={"concurrency": 1, "retries": RETRIES, "max_consecutive_chunk_failures": BREAKER},
    )
    return path, records


def loaded_chunks(pg_connect, job_id: str) -> list[str]:
    """The chunk ids the ledger shows loaded (none before the job's ledger exists)."""
    try:
        return sorted(cid for cid, (status, *_) in ledger(pg_connect, job_id).items() if status == "loaded")
    except psycopg.errors.UndefinedTable:
        return []


def chunk_states(flow_run_id, started: int) -> dict[str, str]:
    """chunk id -> final state of the flow run's chunk tasks, once `started` of them are final."""
    deadline = time.monotonic() + 30
    while True:
        states = _task_states(flow_run_id, "chunk")
        final = all(s in ("Completed", "Cached", "Failed") for s in states.values())
        if (len(states) >= started and final) or time.monotonic() > deadline:
            return states
        time.sleep(0.3)


def secrets_in(text: str) -> list[str]:
    values = [os.environ["INFLUX_PASSWORD"], os.environ["INFLUX_TOKEN"], os.environ["PGPASSWORD"]]
    return [v for v in values if v in text]


def first_day(records):
    return records.filter(
        pc.less(
            records.column("time"), pa.scalar(START + timedelta(days=1), records.schema.field("time").type)
        )
    )


def assert_failed_after_chunk_0(state, servers, pg_connect, influx_database, job_id, records) -> str:
    """The run failed with the breaker open after chunks 1 and 2 failed; chunks 3-5 never
    started; the ledger and InfluxDB hold chunk 0 only. Returns the error message."""
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    not_started = DAYS - 1 - BREAKER
    assert (
        f"circuit breaker open: {BREAKER} consecutive chunks failed (max_consecutive_chunk_failures: "
        f"{BREAKER}); {not_started} chunks not started; first error: load generation_data/00001-"
    ) in message
    assert f"gave up after {RETRIES['attempts'] + 1} attempts" in message
    assert not secrets_in(message)

    states = chunk_states(state.state_details.flow_run_id, started=1 + BREAKER)
    assert sorted(states.values()) == ["Completed"] + ["Failed"] * BREAKER, states
    chunk_ids = sorted(ledger(pg_connect, job_id))
    assert len(chunk_ids) == DAYS
    assert loaded_chunks(pg_connect, job_id) == chunk_ids[:1]
    assert sorted(states) == chunk_ids[: 1 + BREAKER]  # the rest were never started
    got, _ = stored(servers, influx_database)
    want = expected_points(first_day(records), TAGS, FIELDS, "measure_name", None)
    assert_same_points(got, want, FLOAT_KEYS)
    with pg_connect() as conn:
        ((status, error),) = conn.execute(
            "SELECT status, error FROM migration_status.migration_runs WHERE job_id = %s", (job_id,)
        ).fetchall()
    assert status == "failed" and "circuit breaker open" in error and not secrets_in(error)
    return message


def rerun_is_exact(servers, influx_database, path, job_id, records) -> None:
    from flows.migrate import migrate

    report = migrate(source_name="energy", job_id=job_id, migrations_file=str(path))
    assert report.status == "completed" and report.resumed and len(report.chunks) == DAYS
    assert sum(c.rows for c in report.chunks) == records.num_rows
    got, _ = stored(servers, influx_database)
    assert len(got) == records.num_rows  # every source row is one point: nothing lost or doubled
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)


def test_writes_answered_503_retry_with_growing_gaps_then_the_breaker_stops_the_run(
    servers, pg_connect, influx_database, energy, proxy
):
    from flows.migrate import migrate

    path, records = energy
    job_id = "influx-503-" + secrets.token_hex(3)
    proxy.fail_requests(503, path="/write", when=lambda: bool(loaded_chunks(pg_connect, job_id)))

    state = migrate(source_name="energy", job_id=job_id, migrations_file=str(path), return_state=True)

    message = assert_failed_after_chunk_0(state, servers, pg_connect, influx_database, job_id, records)
    assert f"InfluxDB at {proxy.url} answered 503 while writing chunk generation_data/00001-" in message
    # Every attempt of chunks 1 and 2 reached the proxy and was refused; nothing else was written.
    attempts = RETRIES["attempts"] + 1
    refused = proxy.requests("/write", outcome="503")
    assert len(refused) == BREAKER * attempts
    assert refused[0].at > proxy.requests("/write", outcome="forwarded")[-1].at
    delay, jitter = RETRIES["delay_seconds"], RETRIES["jitter"]
    for chunk in range(BREAKER):
        times = [r.at for r in refused[chunk * attempts : (chunk + 1) * attempts]]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        for retry, gap in enumerate(gaps):
            nominal = delay * 2**retry
            # at least the backoff delay; the slack above it is the step's own work on a busy machine
            assert nominal * (1 - jitter) - 0.01 <= gap <= nominal * (1 + jitter) + 3.0, (chunk, gaps)
        assert gaps[1] >= 2 * delay * (1 - jitter) - 0.01 > delay * (1 + jitter)  # the gaps grow

    proxy.heal()
    rerun_is_exact(servers, influx_database, path, job_id, records)


def test_influxdb_going_away_fails_clearly_and_a_rerun_after_it_is_back_is_exact(
    servers, pg_connect, influx_database, energy, proxy
):
    from flows.migrate import migrate

    path, records = energy
    job_id = "influx-down-" + secrets.token_hex(3)
    # InfluxDB dies while chunk 1's first write arrives: that write is cut off, the rest refused
    proxy.down_when(lambda: bool(loaded_chunks(pg_connect, job_id)), path="/write")

    state = migrate(source_name="energy", job_id=job_id, migrations_file=str(path), return_state=True)

    message = assert_failed_after_chunk_0(state, servers, pg_connect, influx_database, job_id, records)
    assert (
        f"cannot reach InfluxDB at {proxy.url} while writing chunk generation_data/00001-" in message
        and message.rstrip().endswith("connection refused")
    )
    assert "object at 0x" not in message
    assert len(proxy.requests("/write", outcome="dropped")) == 1

    proxy.up()
    rerun_is_exact(servers, influx_database, path, job_id, records)
