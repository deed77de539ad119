"""The job ledger's schema `migration_status` in a PostgreSQL database, and its locks.

`migration_runs` has one row per job; `migration_chunk_status` one row per planned chunk;
`migration_table_status` records what a job did to each target table before loading
(created it, truncated it); `migration_plan_columns` the source columns each table was
planned with; `migration_reports` the report of each completed job (JSON, no secrets), which a
rerun of the job returns; `migration_marks` the high-water marks of catch-up runs
(`ledger_marks`). A ledger an older version wrote gains a table the next time a job
starts (`ensure_ledger`); until then its jobs have no recorded report. The rows themselves
are read and written by `blocks.postgres.ledger`.
"""

from __future__ import annotations

import re

import psycopg

from blocks.postgres.ledger_lock import ensure_run_lock
from blocks.postgres.ledger_marks import MARKS_DDL

LEDGER_SCHEMA = "migration_status"

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS migration_status.migration_runs (
    job_id          text PRIMARY KEY,
    migration       text NOT NULL,
    job_name        text,
    status          text NOT NULL,
    fingerprint     text NOT NULL,
    parameters      jsonb NOT NULL DEFAULT '{}'::jsonb,
    flow_run_id     text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    chunks_total    integer NOT NULL DEFAULT 0,
    chunks_done     integer NOT NULL DEFAULT 0,
    rows_total      bigint NOT NULL DEFAULT 0,
    error           text
);
CREATE TABLE IF NOT EXISTS migration_status.migration_chunk_status (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    chunk_id        text NOT NULL,
    target_table    text NOT NULL,
    chunk_column    text NOT NULL,
    lower_bound     text,
    upper_bound     text,
    status          text NOT NULL,
    rows_loaded     bigint,
    rows_before     bigint,
    rows_after      bigint,
    staged_uri      text,
    loaded_at       timestamptz,
    PRIMARY KEY (job_id, table_name, chunk_id)
);
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS details jsonb;
CREATE TABLE IF NOT EXISTS migration_status.migration_table_status (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    target_table    text NOT NULL,
    load_mode       text NOT NULL,
    created_table   boolean NOT NULL DEFAULT false,
    truncated       boolean NOT NULL DEFAULT false,
    prepared_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, table_name)
);
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS target_ident jsonb;
CREATE TABLE IF NOT EXISTS migration_status.migration_plan_columns (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    columns         jsonb NOT NULL,
    PRIMARY KEY (job_id, table_name)
);
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS rows_truncated bigint;
CREATE TABLE IF NOT EXISTS migration_status.migration_reports (
    job_id          text PRIMARY KEY,
    report          jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
"""


# What `ensure_ledger` makes sure of, read from its own DDL: the tables it creates, and the
# columns it adds to tables an older version created.
_DDL = LEDGER_DDL + MARKS_DDL
LEDGER_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS migration_status\.(\w+)", _DDL))
ADDED_COLUMNS = tuple(re.findall(r"ALTER TABLE migration_status\.(\w+) ADD COLUMN IF NOT EXISTS (\w+)", _DDL))

# The ledger schema's tables and their columns, from the catalog: reading it needs no privilege.
_LEDGER_COLUMNS_SQL = """
SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
"""


def ledger_exists(conn: psycopg.Connection) -> bool:
    """Whether any migration has written a ledger into this database yet. Reads the catalog
    only, so it answers (instead of failing) for a role without USAGE on the schema."""
    found = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'migration_runs'",
        (LEDGER_SCHEMA,),
    ).fetchone()
    return found is not None


def ledger_upgrades(conn: psycopg.Connection) -> list[str]:
    """What `ensure_ledger` would still create or add, in order: "schema migration_status",
    "table migration_status.<t>", "column migration_status.<t>.<c>"; [] for a ledger this
    version wrote. Reads the catalog only."""
    schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (LEDGER_SCHEMA,)).fetchone()
    present = set(conn.execute(_LEDGER_COLUMNS_SQL, (LEDGER_SCHEMA,)).fetchall())
    tables = {t for t, _ in present}
    todo = [] if schema else [f"schema {LEDGER_SCHEMA}"]
    todo += [f"table {LEDGER_SCHEMA}.{t}" for t in LEDGER_TABLES if t not in tables]
    todo += [f"column {LEDGER_SCHEMA}.{t}.{c}" for t, c in ADDED_COLUMNS if (t, c) not in present]
    return todo


def ensure_ledger(conn: psycopg.Connection) -> None:
    """Create the ledger, or bring one an older version wrote up to date; on a current ledger
    it runs no DDL at all, so a role that may only read and write the ledger's rows (not own
    its tables, nor create schemas in the database) can run jobs."""
    if not ledger_upgrades(conn):
        return
    # Two jobs starting at once would race on CREATE ... IF NOT EXISTS; serialise them.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('migration_status.ddl', 0))")
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (LEDGER_SCHEMA,)).fetchone() is None:
        # Only when missing: CREATE SCHEMA IF NOT EXISTS asks for CREATE on the database even
        # when the schema exists.
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
    conn.execute(LEDGER_DDL)
    conn.execute(MARKS_DDL)


def lock(conn: psycopg.Connection, key: str) -> None:
    """Hold a transaction-scoped advisory lock on `key` until commit or rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def lock_job_loads(conn: psycopg.Connection, job_id: str, exclusive: bool = False) -> None:
    """Loads of a job hold this lock shared; a rollback holds it exclusively, so it waits for
    loads in flight and no load of the job runs while it works.

    A load first checks that this process's run still holds the job (`ensure_run_lock`):
    after a server restart it takes the run lock again, and a run that lost the job to another
    run loads nothing more."""
    if not exclusive:
        ensure_run_lock(conn, job_id)
    kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {kind}(hashtextextended(%s, 0))", (f"job-loads/{job_id}",))
