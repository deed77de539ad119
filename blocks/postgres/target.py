"""PostgreSQL as a migration target (and home of the job ledger).

`PostgresTarget` keeps the connection settings (the password as a `SecretStr`) apart from
the I/O: create a table from a source schema, guard and truncate it, and load one chunk in
one transaction together with its ledger row, by COPY.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
import pyarrow as pa
from prefect.blocks.core import Block
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field, SecretStr

from blocks.columns import Column, LogicalType
from blocks.errors import ConnectionCheckError, DataConversionError, TargetGuardError, ValidationFailed
from blocks.postgres import PostgresTraits, ledger_claims
from blocks.postgres import ledger as pg_ledger
from blocks.postgres import pool as pg_pool
from blocks.postgres.csv_copy import batch_to_copy_csv
from blocks.postgres.pg_binary import COPY_HEADER, COPY_TRAILER, BinaryCopyEncoder, target_typnames
from blocks.seam import LoadMode


class JobStart(StrEnum):
    """How a run took up its job: a new one, an unfinished one resumed, or a completed one."""

    NEW = "new"
    RESUMED = "resumed"
    COMPLETED = "completed"


def refuse_final_chunk(job_id: str, chunk: dict[str, Any]) -> None:
    """Raise `TargetGuardError` for a chunk that must never load again: its job was rolled back,
    or another job's `replace` truncated its rows away (superseded)."""
    if chunk["status"] == "rolled_back":
        raise TargetGuardError(f"job {job_id} was rolled back; its chunks are not loaded again")
    if chunk["status"] == pg_ledger.SUPERSEDED:
        by = (chunk.get("details") or {}).get("removed_by")
        raise TargetGuardError(
            f"chunk {chunk['chunk_id']} of job {job_id} was superseded by job {by} (its replace truncated "
            "the table); it is not loaded again"
        )


_PG_TYPE = {
    LogicalType.INTEGER: "bigint",
    LogicalType.FLOAT: "double precision",
    LogicalType.STRING: "text",
    LogicalType.BOOLEAN: "boolean",
    LogicalType.DATE: "date",
    LogicalType.TIME: "time",
    LogicalType.TIMESTAMP: "timestamp",
    LogicalType.TIMESTAMP_TZ: "timestamptz",
    LogicalType.JSON: "jsonb",
    LogicalType.BINARY: "bytea",
}


def pg_type(column: Column) -> str:
    """The PostgreSQL type a source column is created with (see the README's type table)."""
    if column.logical is LogicalType.DECIMAL:
        return f"numeric({column.precision},{column.scale})"
    return _PG_TYPE[column.logical]


class TargetTable(BaseModel, frozen=True):
    """Where one source table lands, in target names."""

    schema_name: str
    name: str
    columns: tuple[Column, ...]
    chunk_column: str
    primary_key: tuple[str, ...] = ()
    type_overrides: dict[str, str] = Field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"

    def ident(self) -> sql.Composed:
        return sql.Identifier(self.schema_name, self.name)


class TableRollback(BaseModel):
    """What a rollback did to one target table."""

    table: str
    rows_deleted: int
    dropped: bool
    rows_kept: int  # rows the job did not write, left in place


class PreparedTable(BaseModel):
    created: bool
    truncated: bool
    resumed: bool


class ChunkLoad(BaseModel):
    """What one chunk's load transaction did."""

    rows_loaded: int
    rows_before: int
    rows_after: int
    already_loaded: bool


class PostgresTarget(PostgresTraits, Block):
    """A PostgreSQL database that migrations load into."""

    _block_type_name = "Migration PostgreSQL Target"
    _block_type_slug = "migration-postgres-target"

    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password: SecretStr | None = None
    sslmode: str = "prefer"
    connect_timeout: int = 10

    def describe_target(self) -> str:
        return pg_pool.describe(self)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection in one transaction: committed on success, rolled back on any error.

        Connections are reused within the process (`blocks.postgres.pool`); a fresh one is opened
        when none is idle."""
        opener = functools.partial(pg_pool.open_connection, self, "prefect-migrate")
        with pg_pool.pooled(pg_pool.pool_key("target", self), opener) as conn:
            try:
                yield conn
                conn.commit()
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

    def check(self) -> None:
        """Log in once; any failure, even a server that is only down for now, raises
        `ConnectionCheckError`: before a run, waiting gains nothing."""
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except ConnectionError as exc:
            raise ConnectionCheckError(str(exc)) from None

    def start_job(
        self,
        *,
        job_id: str | None,
        migration: str,
        job_name: str | None,
        fingerprint: str,
        parameters: dict[str, Any],
        flow_run_id: str | None,
        no_resume: bool,
        resumable_within: timedelta,
    ) -> tuple[str, JobStart]:
        """Create the job's ledger row, or pick up the job to resume. Returns (job_id, how).

        With a job_id that exists, that job runs again (a different fingerprint, meaning other
        tables, modes or window, raises `TargetGuardError`, and so does a rolled-back or
        superseded job). Without one, unless `no_resume`: the newest unfinished job of this
        migration with the same fingerprint, started within `resumable_within`, resumes; else
        the newest completed one with the same fingerprint is reported as done.
        """
        with self.connect() as conn:
            pg_ledger.ensure_ledger(conn)
            pg_ledger.lock(conn, f"job/{migration}")
            run = None
            if job_id:
                run = pg_ledger.get_run(conn, job_id)
                if run and run["migration"] != migration:
                    raise TargetGuardError(
                        f"job {job_id} belongs to migration {run['migration']!r}, not {migration!r}"
                    )
                if run and run["fingerprint"] != fingerprint:
                    raise TargetGuardError(
                        f"job {job_id} was started with other tables, modes or target settings in its "
                        "migrations file; restore them to run it again, or start a new job"
                    )
            elif not no_resume:
                since = datetime.now(UTC) - resumable_within
                run = pg_ledger.newest_run(conn, migration, fingerprint, pg_ledger.UNFINISHED, since)
                run = run or pg_ledger.newest_run(conn, migration, fingerprint, ("completed",))
            if run:
                if run["status"] == "rolled_back":
                    raise TargetGuardError(f"job {run['job_id']} was rolled back; start a new job")
                if run["status"] == pg_ledger.SUPERSEDED:
                    raise TargetGuardError(
                        f"job {run['job_id']} was superseded ({run['error']}); start a new job"
                    )
                if run["status"] == "completed":
                    return run["job_id"], JobStart.COMPLETED
                pg_ledger.set_run_status(conn, run["job_id"], "running")
                return run["job_id"], JobStart.RESUMED
            new_id = job_id or f"{migration}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
            pg_ledger.insert_run(conn, new_id, migration, job_name, fingerprint, parameters, flow_run_id)
            return new_id, JobStart.NEW

    def discard_job(self, job_id: str) -> bool:
        """Forget a job that never loaded a chunk (a refused attempt); False if it loaded any."""
        with self.connect() as conn:
            return pg_ledger.discard_run(conn, job_id)

    def chunk_states(self, job_id: str) -> dict[tuple[str, str], str]:
        """(table, chunk_id) -> ledger status of each of the job's chunks, in one query."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT table_name, chunk_id, status FROM migration_status.migration_chunk_status WHERE job_id = %s",
                (job_id,),
            ).fetchall()
        return {(t, c): s for t, c, s in rows}

    def record_plan(
        self, job_id: str, rows: list[tuple], columns: dict[str, list[dict]] | None = None
    ) -> None:
        """Record planned chunks, and the source columns each table was planned with."""
        with self.connect() as conn:
            pg_ledger.plan_chunks(conn, job_id, rows)
            if columns:
                pg_ledger.record_plan_columns(conn, job_id, columns)

    def planned_columns(self, job_id: str) -> dict[str, list[dict]]:
        """table -> source columns (`Column.model_dump`) the job planned it with."""
        with self.connect() as conn:
            return pg_ledger.plan_columns(conn, job_id)

    def planned_chunks(self, job_id: str) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM migration_status.migration_chunk_status WHERE job_id = %s ORDER BY table_name, chunk_id",
                (job_id,),
            )
            return cur.fetchall()

    def set_job_status(self, job_id: str, status: str, error: str | None = None) -> None:
        with self.connect() as conn:
            pg_ledger.set_run_status(conn, job_id, status, error)

    def loaded_ranges(self, target: str, exclude_job: str) -> list[dict[str, Any]]:
        """Chunk ranges other jobs (not rolled back) loaded into `target`; [] before any ledger exists."""
        with self.connect() as conn:
            if not pg_ledger.ledger_exists(conn):
                return []
            return ledger_claims.live_chunks_for_target(conn, exclude_job, target)

    def point_claims(
        self,
        job_id: str,
        target: str,
        measurements: list[str] | None,
        ranges: list[tuple[int | None, int | None]],
    ) -> list[dict[str, Any]]:
        """Other live jobs' loaded chunks overlapping these InfluxDB measurement time ranges
        (`blocks.postgres.ledger_claims.point_claims`)."""
        with self.connect() as conn:
            return ledger_claims.point_claims(conn, job_id, target, measurements, ranges)

    def chunk_status(self, job_id: str, table: str, chunk_id: str) -> dict[str, Any] | None:
        """The chunk's ledger row (status, rows_loaded, details...), or None if it is not planned."""
        with self.connect() as conn:
            return pg_ledger.get_chunk(conn, job_id, table, chunk_id)

    def mark_chunk_written(
        self, job_id: str, table: str, chunk_id: str, rows: int, staged_uri: str, details: dict[str, Any]
    ) -> None:
        """Mark a chunk loaded after its write to another store (InfluxDB) was verified."""
        with self.connect() as conn:
            pg_ledger.lock_job_loads(conn, job_id)
            pg_ledger.lock(conn, f"chunk/{job_id}/{table}/{chunk_id}")
            prior = pg_ledger.get_chunk(conn, job_id, table, chunk_id)
            if prior:
                refuse_final_chunk(job_id, prior)
            pg_ledger.mark_chunk_written(conn, job_id, table, chunk_id, rows, staged_uri, details)

    def loaded_chunks(self, job_id: str, with_removed: bool = False) -> list[dict[str, Any]]:
        """The job's chunks marked loaded (and, `with_removed`, those another job's forced
        rollback took data from), with their ledger details."""
        with self.connect() as conn:
            return pg_ledger.job_chunks(
                conn, job_id, ("loaded", pg_ledger.RELOADABLE) if with_removed else "loaded"
            )

    def mark_rolled_back(self, job_id: str) -> None:
        """Record the job and its loaded chunks as rolled back (after their data was removed)."""
        with self.connect() as conn:
            pg_ledger.lock_job_loads(conn, job_id, exclusive=True)
            pg_ledger.mark_job_rolled_back(conn, job_id)

    def rollback_job(self, job_id: str) -> list[TableRollback]:
        """Remove exactly the rows the job's chunks wrote, in one transaction with the ledger.

        Each chunk's load transaction recorded its id, which PostgreSQL keeps in the `xmin` of
        every row it wrote, so rows that were there before the job (or written since by anyone
        else) are never touched. A table the job created is dropped once no other rows remain
        in it. Waits for the job's loads in flight; afterwards its chunks never load again.
        """
        with self.connect() as conn:
            pg_ledger.ensure_ledger(conn)
            pg_ledger.lock_job_loads(conn, job_id, exclusive=True)
            chunks = pg_ledger.job_chunks(conn, job_id, ("loaded", pg_ledger.RELOADABLE))
            missing = [c["chunk_id"] for c in chunks if "xid" not in (c["details"] or {})]
            if missing:
                raise TargetGuardError(
                    f"job {job_id}: chunks {missing[:5]} were loaded without a recorded transaction id, "
                    "so their rows cannot be told apart from others; roll back by hand"
                )
            # Rows the job's upserts took over from other jobs go with it: those jobs no longer
            # hold their chunks whole (`check_rollback` refused this unless forced).
            claimed = ledger_claims.overwritten_claims(conn, job_id)
            results = []
            for prepared in pg_ledger.job_tables(conn, job_id):
                xids = [str(c["details"]["xid"]) for c in chunks if c["table_name"] == prepared["table_name"]]
                results.append(self._remove_rows(conn, prepared, xids))
            ledger_claims.mark_removed(
                conn,
                claimed,
                job_id,
                f"the forced rollback of job {job_id} deleted rows of this job that it had upserted over",
                pg_ledger.RELOADABLE,
            )
            pg_ledger.mark_job_rolled_back(conn, job_id)
            return results

    def _remove_rows(
        self, conn: psycopg.Connection, prepared: dict[str, Any], xids: list[str]
    ) -> TableRollback:
        ident = sql.Identifier(*prepared["target_ident"])
        name = prepared["target_table"]
        if conn.execute("SELECT to_regclass(%s)", (ident.as_string(conn),)).fetchone()[0] is None:
            return TableRollback(table=name, rows_deleted=0, dropped=False, rows_kept=0)
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE xmin = ANY(%s::text[]::xid[])").format(ident), (xids,)
        ).rowcount
        kept = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0]
        dropped = bool(prepared["created_table"]) and kept == 0
        if dropped:
            conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        return TableRollback(table=name, rows_deleted=deleted, dropped=dropped, rows_kept=kept)

    def job_runs(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """job id -> its ledger row, for those of `job_ids` the ledger holds (one query)."""
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            if not pg_ledger.ledger_exists(conn):
                return {}
            cur.execute("SELECT * FROM migration_status.migration_runs WHERE job_id = ANY(%s)", (job_ids,))
            return {row["job_id"]: row for row in cur.fetchall()}

    def job_run(self, job_id: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            return pg_ledger.get_run(conn, job_id)

    def table_exists(self, conn: psycopg.Connection, table: TargetTable) -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (table.ident().as_string(conn),)).fetchone()
        return row[0] is not None

    def existing_columns(self, conn: psycopg.Connection, table: TargetTable) -> dict[str, str]:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (table.schema_name, table.name),
        ).fetchall()
        return dict(rows)

    def create_table_sql(self, table: TargetTable) -> sql.Composed:
        cols = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(table.type_overrides.get(c.name) or pg_type(c)),
                sql.SQL("" if c.nullable else " NOT NULL"),
            )
            for c in table.columns
        ]
        if table.primary_key:
            cols.append(
                sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, table.primary_key)))
            )
        return sql.SQL("CREATE TABLE {} ({})").format(table.ident(), sql.SQL(", ").join(cols))

    def prepare_table(
        self,
        job_id: str,
        source_table: str,
        migration: str,
        table: TargetTable,
        mode: LoadMode,
        allow_foreign_rows: bool,
        resumable_within: timedelta,
    ) -> PreparedTable:
        """Create the target table if missing; for `replace`, truncate it once per job, behind the guard.

        Idempotent per job: a resumed job finds its ledger row and changes nothing.
        The truncation guard refuses (`TargetGuardError`) while another unfinished, still
        resumable job has prepared this table, and when the table holds rows that this
        migration did not write, unless `allow_foreign_rows` is set.
        """
        with self.connect() as conn:
            pg_ledger.lock(conn, f"prepare/{table.qualified}")
            if pg_ledger.get_table_status(conn, job_id, source_table):
                return PreparedTable(created=False, truncated=False, resumed=True)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema_name)))
            created = not self.table_exists(conn, table)
            if created:
                conn.execute(self.create_table_sql(table))
            else:
                self._check_columns(conn, table)
            if mode is LoadMode.UPSERT:
                self._check_unique_key(conn, table)
            truncated = False
            rows_truncated = None
            if mode is LoadMode.REPLACE and not created:
                self._truncation_guard(conn, job_id, migration, table, allow_foreign_rows, resumable_within)
                count = sql.SQL("SELECT count(*) FROM {}").format(table.ident())
                rows_truncated = conn.execute(count).fetchone()[0]
                conn.execute(sql.SQL("TRUNCATE {}").format(table.ident()))
                truncated = True
                # Jobs whose rows the truncation removed no longer hold them, and never load them again.
                ledger_claims.mark_removed(
                    conn,
                    ledger_claims.live_chunks_for_target(conn, job_id, table.qualified),
                    job_id,
                    f"job {job_id} (replace) truncated {table.qualified}",
                    pg_ledger.SUPERSEDED,
                )
            pg_ledger.record_table_prepared(
                conn,
                job_id,
                source_table,
                table.qualified,
                mode,
                created,
                truncated,
                (table.schema_name, table.name),
                rows_truncated,
            )
            return PreparedTable(created=created, truncated=truncated, resumed=False)

    def _check_columns(self, conn: psycopg.Connection, table: TargetTable) -> None:
        existing = self.existing_columns(conn, table)
        missing = [c.name for c in table.columns if c.name not in existing]
        if missing:
            raise TargetGuardError(f"target table {table.qualified} exists but lacks column(s) {missing}")

    def _check_unique_key(self, conn: psycopg.Connection, table: TargetTable) -> None:
        if not table.primary_key:
            raise TargetGuardError(f"upsert into {table.qualified} needs primary_key in the config")
        rows = conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisunique GROUP BY i.indexrelid",
            (table.ident().as_string(conn),),
        ).fetchall()
        if sorted(table.primary_key) not in [r[0] for r in rows]:
            raise TargetGuardError(
                f"upsert into {table.qualified} needs a unique index or primary key on {list(table.primary_key)}"
            )

    def _truncation_guard(
        self,
        conn: psycopg.Connection,
        job_id: str,
        migration: str,
        table: TargetTable,
        allow_foreign_rows: bool,
        resumable_within: timedelta,
    ) -> None:
        others = pg_ledger.other_jobs_for_target(conn, job_id, table.qualified)
        since = datetime.now(UTC) - resumable_within
        blocking = [o for o in others if o["status"] in pg_ledger.UNFINISHED and o["started_at"] >= since]
        if blocking:
            raise TargetGuardError(
                f"refusing to truncate {table.qualified}: job {blocking[0]['job_id']} "
                f"({blocking[0]['status']}) is unfinished and can still resume; finish or roll it back first"
            )
        if allow_foreign_rows:
            return
        ours: list[str] = []
        for other in others:  # newest first, back to the last truncation by this migration
            if other["migration"] != migration or other["status"] == "rolled_back":
                continue
            ours.append(other["job_id"])
            if other["truncated"]:
                break
        chunks = pg_ledger.loaded_chunks_for_target(conn, ours, table.qualified) if ours else []
        written = sum(c["rows_after"] - c["rows_before"] for c in chunks)
        present = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident())).fetchone()[0]
        if present > written:
            raise TargetGuardError(
                f"refusing to truncate {table.qualified}: it holds {present} rows but migration "
                f"{migration!r} wrote only {written} of them; set allow_truncate_foreign_rows: true "
                "on the table to replace them anyway"
            )

    def count_range(self, conn: psycopg.Connection, table: TargetTable, lower: Any, upper: Any) -> int:
        where, params = self._range_clause(table, lower, upper)
        query = sql.SQL("SELECT count(*) FROM {}").format(table.ident()) + where
        return conn.execute(query, params).fetchone()[0]

    @staticmethod
    def _range_clause(table: TargetTable, lower: Any, upper: Any) -> tuple[sql.Composable, list[Any]]:
        parts, params = [], []
        col = sql.Identifier(table.chunk_column)
        if lower is not None:
            parts.append(sql.SQL("{} >= %s").format(col))
            params.append(lower)
        if upper is not None:
            parts.append(sql.SQL("{} < %s").format(col))
            params.append(upper)
        if not parts:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts), params

    def load_chunk(
        self,
        *,
        job_id: str,
        source_table: str,
        chunk_id: str,
        table: TargetTable,
        mode: LoadMode,
        batches: Iterable[pa.RecordBatch],
        staged_rows: int,
        staged_uri: str,
        lower: Any,
        upper: Any,
    ) -> ChunkLoad:
        """Load one chunk exactly once: rows and ledger row commit together, or not at all.

        If the ledger already shows this job's chunk as loaded (a crash after commit, before
        Prefect persisted the result), nothing is written and the recorded counts are returned.
        """
        with self.connect() as conn:
            pg_ledger.lock_job_loads(conn, job_id)
            pg_ledger.lock(conn, f"chunk/{job_id}/{source_table}/{chunk_id}")
            prior = pg_ledger.get_chunk(conn, job_id, source_table, chunk_id)
            if prior is None:
                raise ValidationFailed(f"chunk {chunk_id} of {source_table} is not in job {job_id}'s plan")
            refuse_final_chunk(job_id, prior)
            if prior["status"] == pg_ledger.RELOADABLE and "xid" in (prior["details"] or {}):
                # Another job's forced rollback took part of this chunk's rows: the rest go too,
                # so the chunk loads whole again.
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE xmin = %s::text::xid").format(table.ident()),
                    (str(prior["details"]["xid"]),),
                )
            if prior["status"] == "loaded":
                return ChunkLoad(
                    rows_loaded=prior["rows_loaded"],
                    rows_before=prior["rows_before"],
                    rows_after=prior["rows_after"],
                    already_loaded=True,
                )
            before = self.count_range(conn, table, lower, upper)
            overwrote: list[dict[str, Any]] = []
            if mode is LoadMode.UPSERT:
                copied, overwrote = self._upsert(conn, table, batches, job_id, source_table, chunk_id)
            else:
                copied = self._copy(conn, table.ident(), table, batches)
            if copied != staged_rows:
                raise ValidationFailed(
                    f"chunk {chunk_id} of {source_table}: COPY sent {copied} rows, staged file holds {staged_rows}"
                )
            after = self.count_range(conn, table, lower, upper)
            pg_ledger.mark_chunk_loaded(
                conn,
                job_id,
                source_table,
                chunk_id,
                copied,
                before,
                after,
                staged_uri,
                pg_ledger.current_xid(conn),
                {"overwrote": overwrote} if overwrote else None,
            )
            return ChunkLoad(rows_loaded=copied, rows_before=before, rows_after=after, already_loaded=False)

    def _copy(
        self,
        conn: psycopg.Connection,
        ident: sql.Composable,
        table: TargetTable,
        batches: Iterable[pa.RecordBatch],
    ) -> int:
        """COPY the batches in; binary when every column's (Arrow, PostgreSQL) type pair has an
        exact binary form (`blocks.postgres.pg_binary`), CSV otherwise (say, an existing table whose
        column is float4 for a float64 source)."""
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return 0
        names = [c.name for c in table.columns]
        encoder = BinaryCopyEncoder.for_columns(
            first.schema.types, target_typnames(conn, table.ident().as_string(conn), names), names
        )
        encode = encoder.encode if encoder else batch_to_copy_csv
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL("binary" if encoder else "csv")
        )
        rows = 0
        with conn.cursor() as cur:
            try:
                with cur.copy(statement) as copy:
                    if encoder:
                        copy.write(COPY_HEADER)
                    for batch in itertools.chain([first], batches):
                        copy.write(encode(batch))
                        rows += batch.num_rows
                    if encoder:
                        copy.write(COPY_TRAILER)
            except psycopg.errors.DataError as exc:
                raise DataConversionError(f"{table.qualified} rejected a value: {exc}".strip()) from None
            except psycopg.errors.IntegrityError as exc:
                raise TargetGuardError(
                    f"{table.qualified} refused the chunk: {exc}".strip()
                    + "\nThe target already holds rows with these keys that no other migration job's ledger "
                    "range covers (written by hand or by another tool?): use load_mode upsert or replace, "
                    "or delete those rows first"
                ) from None
        return rows

    def _upsert(
        self,
        conn: psycopg.Connection,
        table: TargetTable,
        batches: Iterable[pa.RecordBatch],
        job_id: str,
        source_table: str,
        chunk_id: str,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Insert the chunk's rows, updating rows with the same key. Returns the rows sent, and
        the other jobs' chunks whose rows it overwrote (with how many), for the ledger.

        Raises `DataConversionError` when the chunk holds a key twice, or a key an earlier
        chunk of the same job loaded: the source holds it more than once, and only the last
        row would be kept."""
        staging = sql.Identifier(f"_migrate_stage_{table.name}"[:63])
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                staging, table.ident()
            )
        )
        rows = self._copy(conn, staging, table, batches)
        names = [c.name for c in table.columns]
        updates = [n for n in names if n not in table.primary_key]
        conflict = sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
        # Chunks of one job load one after another here, so each sees the keys the others loaded.
        pg_ledger.lock(conn, f"upsert/{job_id}/{table.qualified}")
        overwritten = dict(
            conn.execute(
                sql.SQL("SELECT t.xmin::text, count(*) FROM {} t JOIN {} s USING ({}) GROUP BY 1").format(
                    table.ident(), staging, conflict
                )
            ).fetchall()
        )
        owners = ledger_claims.chunks_of_xids(conn, list(overwritten))
        clash = sum(n for xid, n in overwritten.items() if xid in owners and owners[xid]["job_id"] == job_id)
        if clash:
            raise DataConversionError(
                f"upsert into {table.qualified}: {clash} row(s) of chunk {chunk_id} have the same "
                f"{list(table.primary_key)} as rows chunk(s) of job {job_id} loaded before; the source "
                "holds those keys in more than one row, and an upsert would keep only the last of each. "
                "Remove the duplicates from the source, or choose a primary_key that is unique there"
            )
        overwrote = [
            {
                "job_id": o["job_id"],
                "table_name": o["table_name"],
                "chunk_id": o["chunk_id"],
                "rows": overwritten[x],
            }
            for x, o in owners.items()
            if o["job_status"] != "rolled_back" and updates  # DO NOTHING leaves their rows as they were
        ]
        action = (
            sql.SQL("DO UPDATE SET ")
            + sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updates)
            if updates
            else sql.SQL("DO NOTHING")
        )
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        statement = (
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) ").format(
                table.ident(), cols, cols, staging, conflict
            )
            + action
        )
        try:
            conn.execute(statement)
        except psycopg.errors.CardinalityViolation:
            raise DataConversionError(
                f"upsert into {table.qualified}: the chunk holds the same {list(table.primary_key)} more than once"
            ) from None
        return rows, overwrote
