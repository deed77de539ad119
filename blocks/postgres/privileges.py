"""The privileges a PostgreSQL role needs for a run, checked before it starts.

Every check here reads the catalog and the `has_*_privilege` functions only: it writes
nothing and takes no lock, so `prefect-migrate test-connections` and `plan` may run it against
a production database. What a run needs:

- a target: on the schema its tables land in, USAGE and CREATE when the schema exists, else
  CREATE on the database (to create it); TEMP on the database (upserts and content
  verification go through temporary tables);
- a ledger (a target's own database, or a separate `ledger:`): the same on schema
  `migration_status`, plus SELECT, INSERT, UPDATE and DELETE on its tables; and, where a ledger
  an older version wrote still gains a column, ownership of that table.

A missing privilege raises `ConnectionCheckError` naming the role, the database or schema, the
privilege and why the run needs it, with the statement that grants it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from blocks.errors import ConnectionCheckError
from blocks.postgres.ledger_schema import LEDGER_SCHEMA, ledger_upgrades

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Ledger tables lacking one of TABLE_PRIVILEGES, and tables whose owner the role is not.
_TABLES_SQL = """
SELECT c.relname, coalesce(array_agg(p ORDER BY o) FILTER (WHERE NOT has_table_privilege(c.oid, p)), '{}'),
       pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
     unnest(%s::text[]) WITH ORDINALITY AS privs(p, o)
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
GROUP BY c.relname, c.relowner ORDER BY c.relname
"""


@dataclass(frozen=True)
class Missing:
    """One privilege the role lacks: `privilege` on `on` ("schema x", "database y"), needed
    `for_what`, and the statement that fixes it."""

    privilege: str
    on: str
    for_what: str
    fix: str

    def describe(self) -> str:
        return f"{self.privilege} on {self.on} (needed {self.for_what})"


def _quoted(conn: psycopg.Connection, *names: str) -> str:
    return sql.Identifier(*names).as_string(conn)


def _session(conn: psycopg.Connection) -> tuple[str, str]:
    """(role, database) of the session."""
    return conn.execute("SELECT current_user, current_database()").fetchone()


def schema_needs(conn: psycopg.Connection, schema: str, for_what: str) -> list[Missing]:
    """What the role lacks to create tables in `schema` (for `for_what`): USAGE and CREATE on
    it when it exists, else CREATE on the database, so the run can create it."""
    role, database = _session(conn)
    found = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if found is None:
        if conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:
            return []
        return [
            Missing(
                "CREATE",
                f"database {database}",
                f"to create schema {schema} for {for_what}",
                f"GRANT CREATE ON DATABASE {_quoted(conn, database)} TO {_quoted(conn, role)}",
            )
        ]
    usage, create = conn.execute(
        "SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE')",
        (found[0], found[0]),
    ).fetchone()
    lacking = [p for p, held in (("USAGE", usage), ("CREATE", create)) if not held]
    if not lacking:
        return []
    privileges = ", ".join(lacking)
    return [
        Missing(
            privileges,
            f"schema {schema} in database {database}",
            f"for {for_what}",
            f"GRANT {privileges} ON SCHEMA {_quoted(conn, schema)} TO {_quoted(conn, role)}",
        )
    ]


def target_needs(conn: psycopg.Connection, schema: str) -> list[Missing]:
    """What the role lacks to load a migration's tables into `schema` (see the module)."""
    missing = schema_needs(conn, schema, "the migration's tables")
    if not conn.execute("SELECT has_database_privilege(current_database(), 'TEMP')").fetchone()[0]:
        role, database = _session(conn)
        missing.append(
            Missing(
                "TEMP",
                f"database {database}",
                "for the temporary tables of upserts and content verification",
                f"GRANT TEMP ON DATABASE {_quoted(conn, database)} TO {_quoted(conn, role)}",
            )
        )
    return missing


def ledger_needs(conn: psycopg.Connection) -> list[Missing]:
    """What the role lacks to keep the job ledger in schema `migration_status` (see the module)."""
    missing = schema_needs(conn, LEDGER_SCHEMA, "the job ledger")
    if missing:
        return missing  # without USAGE on the schema, its tables cannot be judged yet
    role, _ = _session(conn)
    pending = {item.split(".")[1] for item in ledger_upgrades(conn) if item.startswith("column ")}
    rows = conn.execute(_TABLES_SQL, (list(TABLE_PRIVILEGES), LEDGER_SCHEMA)).fetchall()
    lacking = {p for _, privileges, _, _ in rows for p in privileges}
    if lacking:
        tables = ", ".join(f"{LEDGER_SCHEMA}.{t}" for t, privileges, _, _ in rows if privileges)
        listed = ", ".join(p for p in TABLE_PRIVILEGES if p in lacking)
        missing.append(
            Missing(
                listed,
                f"table(s) {tables}",
                "to record jobs and chunks in the job ledger",
                f"GRANT {', '.join(TABLE_PRIVILEGES)} ON ALL TABLES IN SCHEMA "
                f"{_quoted(conn, LEDGER_SCHEMA)} TO {_quoted(conn, role)}",
            )
        )
    for table, _, owns, owner in rows:
        if table in pending and not owns:
            missing.append(
                Missing(
                    "ownership",
                    f"table {LEDGER_SCHEMA}.{table} (owner: {owner})",
                    "to add the columns this version keeps to a ledger an older version wrote",
                    f"run one job as role {owner}, which adds them, or ALTER TABLE "
                    f"{_quoted(conn, LEDGER_SCHEMA, table)} OWNER TO {_quoted(conn, role)}",
                )
            )
    return missing


def refuse_missing(conn: psycopg.Connection, where: str, missing: list[Missing]) -> None:
    """Raise `ConnectionCheckError` listing `missing` (if any) for the server `where` names:
    the role, each privilege and what it is on, and the statements that grant them."""
    if not missing:
        return
    role, _ = _session(conn)
    fixes = "; ".join(dict.fromkeys(m.fix for m in missing))
    raise ConnectionCheckError(
        f"{where}: role {role} lacks "
        + "; and ".join(m.describe() for m in missing)
        + f". Fix, as a role that may grant it: {fixes}"
    )
