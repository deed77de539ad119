"""PostgreSQL as a migration target (and home of the job ledger).

`PostgresTarget` holds its login as `credentials` (a `PostgresCredentials` block) apart from
the I/O: prepare a table (`blocks.postgres.tables`), load one chunk by COPY
(`blocks.postgres.copy_in`) in one transaction together with its ledger row, and roll a job
back. The ledger itself, as the tasks call it, is `blocks.postgres.ledger_store.PostgresLedger`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pyarrow as pa
from prefect.blocks.core import Block
from psycopg import sql
from pydantic import BaseModel

from blocks.chunk_rows import ChunkRows
from blocks.columns import Column
from blocks.errors import ConnectionCheckError, TargetGuardError, ValidationFailed
from blocks.job_status import RELOADABLE, SUPERSEDED
from blocks.postgres import PostgresTraits, ledger_claims
from blocks.postgres import ledger as pg_ledger
from blocks.postgres.copy_in import copy_batches, upsert_batches
from blocks.postgres.credentials import PostgresLogin
from blocks.postgres.ledger import refuse_final_chunk
from blocks.postgres.ledger_schema import ensure_ledger, ledger_exists, lock, lock_job_loads
from blocks.postgres.ledger_store import read_only, transaction
from blocks.postgres.privileges import refuse_missing, target_needs
from blocks.postgres.table_preview import column_mappings, preview_prepare
from blocks.postgres.tables import (
    TargetTable,
    check_columns,
    check_table_privileges,
    check_unique_key,
    create_table_sql,
    ident,
    schema_exists,
    table_exists,
    truncation_guard,
)
from blocks.postgres.verify import canonical_staged, read_rows, verify_chunk
from blocks.preview import ColumnMapping, TablePreview
from blocks.seam import JobStart, LoadMode

# JobStart, TargetTable and refuse_final_chunk are imported from here by older callers.
__all__ = [
    "ChunkLoad",
    "JobStart",
    "PostgresTarget",
    "PreparedTable",
    "TableRollback",
    "TargetTable",
    "refuse_final_chunk",
]


# A target table by the qualified name the ledger records: (schema, table).
_LOADED_TABLE_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = %(table)s::text
"""


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
    verified: str = "counts"  # "content": its rows were read back and compared before commit


class PostgresTarget(PostgresTraits, Block, PostgresLogin):
    """A PostgreSQL database that migrations load into."""

    _block_type_name = "Migration PostgreSQL Target"
    _block_type_slug = "migration-postgres-target"

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection in one transaction: committed on success, rolled back on any error.

        Connections are reused within the process (`blocks.postgres.pool`); a fresh one is opened
        when none is idle."""
        with transaction(self.credentials) as conn:
            yield conn

    def check(self, container: str | None = None) -> None:
        """Log in once; any failure, even a server that is only down for now, raises
        `ConnectionCheckError`: before a run, waiting gains nothing.

        With `container` (the schema the migration's tables land in), also check, reading
        only, that the role may create and load tables there (`blocks.postgres.privileges`):
        a missing privilege raises `ConnectionCheckError` naming the role, the schema or
        database, the privilege and the GRANT that fixes it. The ledger is checked apart
        (`PostgresLedger.check`)."""
        try:
            with read_only(self.credentials) as conn:
                if container is not None:
                    refuse_missing(conn, self.describe_target(), target_needs(conn, container))
        except ConnectionError as exc:
            raise ConnectionCheckError(str(exc)) from None

    def loaded_ranges(self, target: str, exclude_job: str) -> list[dict[str, Any]]:
        """Chunk ranges other jobs (not rolled back) loaded into `target`; [] before any ledger exists."""
        with self.connect() as conn:
            if not ledger_exists(conn):
                return []
            return ledger_claims.live_chunks_for_target(conn, exclude_job, target)

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
        migration did not write, unless `allow_foreign_rows` is set. An existing table the
        role may not load in `mode` is refused (`TargetGuardError` naming the privilege and
        the GRANT) before anything is changed.
        """
        with self.connect() as conn:
            lock(conn, f"prepare/{table.qualified}")
            if pg_ledger.get_table_status(conn, job_id, source_table):
                return PreparedTable(created=False, truncated=False, resumed=True)
            if not schema_exists(conn, table.schema_name):
                # Only then: CREATE SCHEMA IF NOT EXISTS asks for CREATE on the database even
                # when the schema exists.
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema_name))
                )
            created = not table_exists(conn, table)
            if created:
                conn.execute(create_table_sql(table))
            else:
                check_table_privileges(conn, table, mode)  # first: the columns a role sees depend on it
                check_columns(conn, table)
            if mode is LoadMode.UPSERT:
                check_unique_key(conn, table)
            truncated = False
            rows_truncated = None
            if mode is LoadMode.REPLACE and not created:
                rows_truncated = truncation_guard(
                    conn, job_id, migration, table, allow_foreign_rows, resumable_within
                )
                conn.execute(sql.SQL("TRUNCATE {}").format(ident(table)))
                truncated = True
                # Jobs whose rows the truncation removed no longer hold them, and never load them again.
                ledger_claims.mark_removed(
                    conn,
                    ledger_claims.live_chunks_for_target(conn, job_id, table.qualified),
                    job_id,
                    f"job {job_id} (replace) truncated {table.qualified}",
                    SUPERSEDED,
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

    def count_range(self, conn: psycopg.Connection, table: TargetTable, lower: Any, upper: Any) -> int:
        where, params = self._range_clause(table, lower, upper)
        query = sql.SQL("SELECT count(*) FROM {}").format(ident(table)) + where
        return conn.execute(query, params).fetchone()[0]

    def loaded_mismatch(self, chunks: list[dict[str, Any]]) -> str | None:
        """None when the target table of `chunks` (the ledger's rows of its loaded chunks) still
        holds a row one of their loads wrote: its `xmin` is a load's transaction id (the
        chunks' `details.xid`). A truncated table, or one dropped and created again, holds none.
        Cheap where the job's rows are: the scan stops at the first such row. Partial deletes
        are not seen. Else what differs, as a clause."""
        if not chunks:
            return None
        name = chunks[0]["target_table"]
        xids = [str((c["details"] or {}).get("xid")) for c in chunks if "xid" in (c["details"] or {})]
        if len(xids) < len(chunks):
            return f"the ledger recorded no transaction id for some chunks of {name}"
        with self.connect() as conn:
            found = conn.execute(_LOADED_TABLE_SQL, {"table": name}).fetchone()
            if found is None:
                return f"target table {name} is gone"
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE xmin = ANY(%s::text[]::xid[]))")
            if not conn.execute(query.format(sql.Identifier(*found)), (xids,)).fetchone()[0]:
                return (
                    f"target table {name} holds none of the rows the job's loads wrote "
                    "(truncated, or created again)"
                )
        return None

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
        verify_against: ChunkRows | None = None,
    ) -> ChunkLoad:
        """Load one chunk exactly once: rows and ledger row commit together, or not at all.

        `verify_against`: the chunk's staged rows (`batches` come from them); the rows this
        transaction wrote are read back and compared with them value by value before commit (`blocks.postgres.verify`), so a value
        the target changed or an encoder got wrong is never committed. Without it, counts only.

        If the ledger already shows this job's chunk as loaded (a crash after commit, before
        Prefect persisted the result), nothing is written and the recorded counts are returned.
        """
        with self.connect() as conn:
            lock_job_loads(conn, job_id)
            lock(conn, f"chunk/{job_id}/{source_table}/{chunk_id}")
            prior = pg_ledger.get_chunk(conn, job_id, source_table, chunk_id)
            if prior is None:
                raise ValidationFailed(f"chunk {chunk_id} of {source_table} is not in job {job_id}'s plan")
            refuse_final_chunk(job_id, prior)
            if prior["status"] == RELOADABLE and "xid" in (prior["details"] or {}):
                # Another job's forced rollback took part of this chunk's rows: the rest go too,
                # so the chunk loads whole again.
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE xmin = %s::text::xid").format(ident(table)),
                    (str(prior["details"]["xid"]),),
                )
            if prior["status"] == "loaded":
                return ChunkLoad(
                    rows_loaded=prior["rows_loaded"],
                    rows_before=prior["rows_before"],
                    rows_after=prior["rows_after"],
                    already_loaded=True,
                    verified=(prior["details"] or {}).get("verified", "counts"),
                )
            before = self.count_range(conn, table, lower, upper)
            overwrote: list[dict[str, Any]] = []
            if mode is LoadMode.UPSERT:
                copied, overwrote = upsert_batches(conn, table, batches, job_id, source_table, chunk_id)
            else:
                copied = copy_batches(conn, ident(table), table, batches)
            if copied != staged_rows:
                raise ValidationFailed(
                    f"chunk {chunk_id} of {source_table}: COPY sent {copied} rows, staged file holds {staged_rows}"
                )
            after = self.count_range(conn, table, lower, upper)
            xid = pg_ledger.current_xid(conn)
            if verify_against is not None:
                where = f"{source_table} chunk {chunk_id} [{lower}, {upper}) into {table.qualified}"
                # The chunk as staged (in memory: no copy); not the batches sent, which may be copies.
                staged = verify_against.read()
                verify_chunk(conn, table, staged, xid, where, self._range_clause(table, lower, upper))
            details = {"verified": "content" if verify_against is not None else "counts"}
            pg_ledger.mark_chunk_loaded(
                conn,
                job_id,
                source_table,
                chunk_id,
                copied,
                before,
                after,
                staged_uri,
                xid,
                {**details, "overwrote": overwrote} if overwrote else details,
            )
            return ChunkLoad(
                rows_loaded=copied,
                rows_before=before,
                rows_after=after,
                already_loaded=False,
                verified=details["verified"],
            )

    def read_range(self, table: TargetTable, schema: pa.Schema, lower: Any, upper: Any) -> pa.Table:
        """The rows of `table` in a chunk's range, in the canonical form content verification
        compares (`blocks.postgres.verify.read_rows`), read in one transaction that writes nothing."""
        where, params = self._range_clause(table, lower, upper)
        with read_only(self.credentials) as conn:
            return read_rows(conn, table, schema, where, params)

    def canonical(self, table: TargetTable, rows: pa.Table) -> pa.Table:
        """`rows` (a chunk in its staged form, e.g. read from the source) in the canonical form
        `read_range` gives, so the two compare value by value: JSON as jsonb's canonical text,
        by a round trip through a temporary table that goes with the transaction. Writes
        nothing else."""
        with self.connect() as conn:
            return canonical_staged(conn, table, rows)

    def rollback_job(self, job_id: str) -> list[TableRollback]:
        """Remove exactly the rows the job's chunks wrote, in one transaction with the ledger.

        Each chunk's load transaction recorded its id, which PostgreSQL keeps in the `xmin` of
        every row it wrote, so rows that were there before the job (or written since by anyone
        else) are never touched. A table the job created is dropped once no other rows remain
        in it. Waits for the job's loads in flight; afterwards its chunks never load again.
        """
        with self.connect() as conn:
            ensure_ledger(conn)
            lock_job_loads(conn, job_id, exclusive=True)
            chunks = pg_ledger.job_chunks(conn, job_id, ("loaded", RELOADABLE))
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
                RELOADABLE,
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

    # A dry run: what a run would do, read without writing ----------------------------------

    def preview_table(
        self,
        job_id: str,
        source_table: str,
        migration: str,
        table: TargetTable,
        mode: LoadMode,
        allow_foreign_rows: bool,
        resumable_within: timedelta,
    ) -> TablePreview:
        """What `prepare_table` would do (the DDL it would run, each guard's decision), read in
        a READ ONLY transaction; creates no table, schema or ledger (`table_preview`)."""
        with read_only(self.credentials) as conn:
            return preview_prepare(
                conn, job_id, source_table, migration, table, mode, allow_foreign_rows, resumable_within
            )

    def type_mapping(
        self, table: TargetTable, source_columns: tuple[Column, ...], staged: pa.Schema, points: Any = None
    ) -> list[ColumnMapping]:
        """Each column's source, staged and target type (the existing table's, else
        `type_overrides` or the default), flagged `lossy` where the target type cannot hold
        every source value exactly; read in a READ ONLY transaction."""
        with read_only(self.credentials) as conn:
            return column_mappings(conn, table, source_columns, staged)
