"""The retry policy of chunk steps (`run_step`) and the circuit breaker of `run_chunks`, without
servers: attempts, backoff delays (time.sleep patched), and what the final error says."""

from __future__ import annotations

import logging
import pickle
from concurrent.futures import Future
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from blocks.errors import DataConversionError, MigrationError
from blocks.spec import RetryPolicy
from tasks import policy
from tasks.policy import RetriesExhausted, run_step


class FlakyStep:
    """A step failing with `error` on its first `failures` calls, then returning "done"."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The delays run_step waits, instead of waiting them."""
    waited: list[float] = []
    monkeypatch.setattr(policy.time, "sleep", waited.append)
    return waited


@pytest.mark.parametrize(("spread", "factor"), [(-1.0, 0.8), (0.0, 1.0), (1.0, 1.2)])
def test_transient_failures_are_retried_after_doubling_delays(monkeypatch, sleeps, spread, factor):
    # random.uniform(-jitter, jitter) at its low end, middle and high end
    monkeypatch.setattr(policy.random, "uniform", lambda low, high: spread * high)
    step = FlakyStep(3, ConnectionResetError(104, "Connection reset by peer"))
    retries = RetryPolicy(attempts=3, delay_seconds=0.5, jitter=0.2)

    assert run_step(step, retries, "load t/00001") == "done"
    assert step.calls == 4
    assert sleeps == pytest.approx([0.5 * factor, 1.0 * factor, 2.0 * factor])


def test_delays_stay_within_the_jitter(sleeps):
    retries = RetryPolicy(attempts=6, delay_seconds=1.0, jitter=0.5)
    for _ in range(20):
        sleeps.clear()
        run_step(FlakyStep(6, TimeoutError("timed out")), retries, "export t/00000")
        assert len(sleeps) == 6
        for attempt, waited in enumerate(sleeps):
            assert 0.5 * 2**attempt <= waited <= 1.5 * 2**attempt


def test_giving_up_names_the_step_the_attempts_and_the_last_error(sleeps):
    first, last = OSError("first problem"), OSError("cannot reach it: connection refused")
    errors = iter([first, first, last])

    def step():
        raise next(errors)

    with pytest.raises(RetriesExhausted) as raised:
        run_step(step, RetryPolicy(attempts=2, delay_seconds=0.1, jitter=0), "load readings/00002-ab")
    assert str(raised.value) == (
        "load readings/00002-ab: gave up after 3 attempts: cannot reach it: connection refused"
    )
    assert sleeps == pytest.approx([0.1, 0.2])
    # still transient: not a MigrationError, so a rerun tries the chunk again; the cause is kept
    assert isinstance(raised.value, RuntimeError) and not isinstance(raised.value, MigrationError)
    assert raised.value.__cause__ is last
    # Dask sends a failed chunk's error back pickled
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)


def test_no_retries_means_one_attempt(sleeps):
    step = FlakyStep(1, OSError("down"))
    with pytest.raises(RetriesExhausted, match=r"^validate t/00003: gave up after 1 attempt: down$"):
        run_step(step, RetryPolicy(attempts=0), "validate t/00003")
    assert step.calls == 1 and sleeps == []


def test_a_migration_error_is_raised_at_once_and_unchanged(sleeps):
    error = DataConversionError("chunk t/00001: value 2**64 does not fit")
    step = FlakyStep(5, error)
    with pytest.raises(DataConversionError) as raised:
        run_step(step, RetryPolicy(attempts=5, delay_seconds=1), "load t/00001")
    assert raised.value is error and step.calls == 1 and sleeps == []


# --- the circuit breaker of run_chunks ----------------------------------------------------------


class _Chunk:
    def __init__(self, index: int):
        self.index, self.chunk_id = index, f"{index:05d}"


class _Plan:
    """What run_chunks needs of a TablePlan: its table's name, its chunks, and a copy without them."""

    def __init__(self, chunks: list[_Chunk]):
        self.chunks = chunks
        self.spec = SimpleNamespace(name="t")

    def model_copy(self, update: dict) -> _Plan:
        return _Plan(update["chunks"])


class _Report:
    def __init__(self, index: int):
        self.table, self.chunk_id, self.rows = "t", f"{index:05d}", 1


class _NoProgress:
    def __init__(self, *args):
        pass

    def chunk_done(self, *args):
        pass

    def close(self):
        pass


def run_chunks_with(monkeypatch, outcomes: list[bool], limit: int) -> tuple[str | None, list[int], list]:
    """run_chunks (concurrency 1) over chunks 0..n-1 that finish (True) or fail (False), each at
    once; returns the run's error, the chunks started, and the reports."""
    import flows.migrate as migrate_module
    from tasks.config import MigrationSpec

    started: list[int] = []

    def submit(task, parameters: dict) -> Future:
        index = parameters["chunk"].index
        started.append(index)
        future: Future = Future()
        if outcomes[index]:
            future.set_result(_Report(index))
        else:
            future.set_exception(OSError(f"chunk {index} failed"))
        return future

    @contextmanager
    def runner(_address):
        yield submit

    monkeypatch.setattr(migrate_module, "chunk_runner", runner)
    monkeypatch.setattr(migrate_module, "as_completed", iter)
    monkeypatch.setattr(migrate_module, "ProgressTracker", _NoProgress)
    monkeypatch.setattr(migrate_module, "get_run_logger", lambda: logging.getLogger("test"))
    spec = MigrationSpec.model_validate(
        {
            "source": {"type": "parquet", "location": "/nowhere"},
            "target": {"type": "postgres"},
            "tables": [{"name": "t", "chunk_column": "id"}],
            "concurrency": 1,
            "max_consecutive_chunk_failures": limit,
        }
    )
    reports: list = []
    error = migrate_module.run_chunks(
        spec, "job", [_Plan([_Chunk(i) for i in range(len(outcomes))])], True, reports
    )
    return error, started, reports


def test_breaker_of_one_stops_new_chunks_at_the_first_failure(monkeypatch):
    error, started, reports = run_chunks_with(monkeypatch, [True, False, True, True], limit=1)
    assert error == "chunk 1 failed"  # the chunk's own error, as before the breaker existed
    assert started == [0, 1] and len(reports) == 1


def test_breaker_opens_after_n_failures_in_a_row_and_a_success_resets_it(monkeypatch):
    outcomes = [True, False, False, True, False, False, False, True, True]
    error, started, reports = run_chunks_with(monkeypatch, outcomes, limit=3)
    assert error == (
        "circuit breaker open: 3 consecutive chunks failed (max_consecutive_chunk_failures: 3); "
        "2 chunks not started; first error: chunk 1 failed"
    )
    assert started == list(range(7)) and len(reports) == 2


def test_failures_below_the_limit_still_fail_the_run(monkeypatch):
    error, started, reports = run_chunks_with(monkeypatch, [False, True, False, True], limit=2)
    assert error == "2 chunks failed; first error: chunk 0 failed"
    assert started == [0, 1, 2, 3] and len(reports) == 2
    assert run_chunks_with(monkeypatch, [True, True], limit=2)[0] is None


def test_the_breaker_setting_is_checked_and_does_not_change_which_job_resumes(tmp_path):
    import yaml

    from blocks.errors import ConfigError
    from tasks.config import RunWindow, load_migrations
    from tasks.jobs import fingerprint
    from tasks.policy import destination_digest

    spec = {
        "source": {"type": "parquet", "location": "/nowhere"},
        "target": {"type": "postgres"},
        "tables": [{"name": "t", "chunk_column": "id"}],
    }
    path = tmp_path / "m.yaml"
    specs = []
    for limit in (None, 1, 5):
        path.write_text(
            yaml.safe_dump(
                {
                    "migrations": {
                        "m": spec | ({} if limit is None else {"max_consecutive_chunk_failures": limit})
                    }
                }
            )
        )
        specs.append(load_migrations(path).migrations["m"])
    assert [s.max_consecutive_chunk_failures for s in specs] == [1, 1, 5]
    window = RunWindow()
    assert len({fingerprint(s, window) for s in specs}) == 1
    assert len({destination_digest(s) for s in specs}) == 1
    path.write_text(yaml.safe_dump({"migrations": {"m": spec | {"max_consecutive_chunk_failures": 0}}}))
    with pytest.raises(
        ConfigError, match="max_consecutive_chunk_failures: Input should be greater than or equal to 1"
    ):
        load_migrations(path)
