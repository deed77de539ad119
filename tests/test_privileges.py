"""A PostgreSQL role that lacks a privilege a run needs is refused by the connection checks
(`check_connections`, `prefect-migrate test-connections`, `plan`, the `migrate` flow) with the
role, the privilege, where it is missing and the GRANT that fixes it, before anything is
written; with the GRANT applied, the same role migrates, value by value. Against the
session's real PostgreSQL: each test has its own database and its own login role."""

from __future__ import annotations

import os
import re
import secrets

import pytest
import yaml

from blocks.errors import ConnectionCheckError, MigrationFailed
from blocks.postgres import pool as pg_pool
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.ledger_schema import ensure_ledger
from blocks.postgres.ledger_store import PostgresLedger
from flows.cli import main
from tasks.config import load_migration, migrations_path
from tasks.connections import check_connections
from tasks.dry_run import plan_migration
from tests.support import assert_same_rows, target_rows

NAME = "shop"
COLUMNS = ["id", "name", "amount", "sold_at"]
ITEMS = {"name": "items", "chunk_column": "id", "chunk_size": 20, "primary_key": ["id"]}


@pytest.fixture
def role(servers, pg_database, monkeypatch):
    """A login role of its own, with no privilege beyond PUBLIC's (CONNECT and TEMP on the
    database; nothing on its schemas); its password in $MIG_ROLE_PASSWORD. Yields its name."""
    name = "mig_" + secrets.token_hex(4)
    password = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv("MIG_ROLE_PASSWORD", password)
    with servers["pg"].connect() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    yield name
    pg_pool.close_all()
    with servers["pg"].connect(pg_database) as conn:
        conn.execute(f"DROP OWNED BY {name}")
    with servers["pg"].connect() as conn:
        conn.execute(f"DROP ROLE {name}")


@pytest.fixture
def items(pg_connect):
    """src.items: 50 rows the source reads (created by the superuser); returns them in id order."""
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute(
            "CREATE TABLE src.items (id bigint PRIMARY KEY, name text, amount numeric(10,2), "
            "sold_at timestamptz NOT NULL)"
        )
        conn.execute(
            "INSERT INTO src.items SELECT i, 'item ' || i, i * 1.25, "
            "timestamptz '2026-01-01 00:00+00' + i * interval '1 hour' FROM generate_series(1, 50) AS i"
        )
    return target_rows(pg_connect, "src.items", COLUMNS, "id")


def login(servers, pg_database, user: str | None) -> dict:
    """Settings of a PostgreSQL login: the superuser, or `user` with $MIG_ROLE_PASSWORD."""
    return {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": servers["pg"].port,
        "dbname": pg_database,
        "user": user or "postgres",
        "password_env": "MIG_ROLE_PASSWORD" if user else "PGPASSWORD",
    }


def write_migrations(
    tmp_path, servers, pg_database, *, target_user=None, source_user=None, tables=(ITEMS,)
) -> str:
    """migrations.yaml with migration `shop`: src.items to analytics.items, in one database."""
    spec = {
        "source": {**login(servers, pg_database, source_user), "schema": "src"},
        "target": {**login(servers, pg_database, target_user), "schema": "analytics"},
        "staging": {"type": "local", "path": str(tmp_path / "staging")},
        "retries": {"attempts": 1, "delay_seconds": 0.1, "jitter": 0.1},
        "tables": list(tables),
    }
    path = tmp_path / "migrations.yaml"
    path.write_text(yaml.safe_dump({"migrations": {NAME: spec}}, sort_keys=False))
    return str(path)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(file: str) -> str:
    """The message `check_connections` raises for migration `shop` of `file`."""
    with pytest.raises(ConnectionCheckError) as raised:
        check_connections.fn(load_migration(NAME, migrations_path(file)))
    return str(raised.value)


def written(pg_connect) -> tuple[list, list]:
    """(the schemas besides src and PostgreSQL's own, the tables outside src) of the database."""
    with pg_connect() as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('src', 'public', 'information_schema') "
            "AND nspname NOT LIKE 'pg\\_%' ORDER BY 1"
        ).fetchall()
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'src') ORDER BY 1, 2"
        ).fetchall()
    return [s for (s,) in schemas], tables


def assert_refused_everywhere(capsys, file: str, expected: list[str]) -> str:
    """check_connections, test-connections, plan_migration, `plan` and the `migrate` flow all
    refuse, each naming every piece of `expected`; returns check_connections' message."""
    from flows.migrate import migrate

    message = refused(file)
    for piece in expected:
        assert piece in message, message
    code, out, err = cli(capsys, "test-connections", NAME, "--migrations-file", file)
    assert (code, out) == (1, "") and all(piece in err for piece in expected), err
    with pytest.raises(ConnectionCheckError) as planned:
        plan_migration(NAME, migrations_file=file)
    assert str(planned.value) == message
    code, out, err = cli(capsys, "plan", NAME, "--migrations-file", file)
    assert (code, out) == (1, "") and all(piece in err for piece in expected), err
    with pytest.raises(ConnectionCheckError) as ran:
        migrate(source_name=NAME, migrations_file=file)
    assert str(ran.value) == message
    return message


def grant_from(message: str, servers, pg_database) -> None:
    """Run, as the superuser, the statements the message says fix it."""
    fixes = message.split("Fix, as a role that may grant it: ")[1:]
    assert fixes, message
    with servers["pg"].connect(pg_database) as conn:
        for fix in fixes:
            for statement in fix.splitlines()[0].split("; "):
                conn.execute(statement)


def migrate_and_compare(file: str, pg_connect, rows: list) -> None:
    from flows.migrate import migrate

    report = migrate(source_name=NAME, migrations_file=file)
    assert report.status == "completed" and report.rows == len(rows)
    assert_same_rows(rows, target_rows(pg_connect, "analytics.items", COLUMNS, "id"), COLUMNS)


def test_role_without_create_on_the_database(tmp_path, servers, pg_database, pg_connect, role, items, capsys):
    file = write_migrations(tmp_path, servers, pg_database, target_user=role)
    message = assert_refused_everywhere(
        capsys,
        file,
        [
            f"target: PostgreSQL {role}@127.0.0.1:{servers['pg'].port}/{pg_database}: role {role} "
            f"lacks CREATE on database {pg_database} (needed to create schema analytics",
            f"ledger: ledger in PostgreSQL {role}@",
            "needed to create schema migration_status for the job ledger",
            f'GRANT CREATE ON DATABASE "{pg_database}" TO "{role}"',
        ],
    )
    assert "source:" not in message and "MIG_ROLE_PASSWORD" not in message
    assert "InsufficientPrivilege" not in message
    assert written(pg_connect) == ([], [])  # no schema, no ledger, no table

    grant_from(message, servers, pg_database)
    check_connections.fn(load_migration(NAME, migrations_path(file)))
    migrate_and_compare(file, pg_connect, items)


def test_role_without_usage_on_an_existing_schema(
    tmp_path, servers, pg_database, pg_connect, role, items, capsys
):
    """The schemas exist (created by another role): the role needs privileges on them, not
    CREATE on the database. The ledger's privileges are granted, the target schema's not."""
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        with conn.transaction():
            ensure_ledger(conn)
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA migration_status TO {role}")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA migration_status TO {role}"
        )
    file = write_migrations(tmp_path, servers, pg_database, target_user=role)
    message = assert_refused_everywhere(
        capsys,
        file,
        [
            f"role {role} lacks USAGE, CREATE on schema analytics in database {pg_database}",
            f'GRANT USAGE, CREATE ON SCHEMA "analytics" TO "{role}"',
        ],
    )
    assert "ledger:" not in message and "DATABASE" not in message, message
    assert written(pg_connect) == (
        ["analytics", "migration_status"],
        [("migration_status", t) for t in LEDGER],
    )
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM migration_status.migration_runs").fetchone() == (0,)

    # With the schema's GRANT only (no CREATE on the database, not the ledger's owner) it runs.
    grant_from(message, servers, pg_database)
    migrate_and_compare(file, pg_connect, items)


LEDGER = sorted(
    [
        "migration_chunk_status",
        "migration_marks",
        "migration_plan_columns",
        "migration_reports",
        "migration_runs",
        "migration_table_status",
    ]
)


def test_ledger_tables_the_role_may_not_write_nor_upgrade(servers, pg_database, pg_connect, role):
    with pg_connect() as conn:
        with conn.transaction():
            ensure_ledger(conn)
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA migration_status TO {role}")
        conn.execute(f"GRANT SELECT ON migration_status.migration_runs TO {role}")
    credentials = PostgresCredentials(
        host="127.0.0.1",
        port=servers["pg"].port,
        dbname=pg_database,
        user=role,
        password=os.environ["MIG_ROLE_PASSWORD"],
    )
    ledger = PostgresLedger(credentials=credentials)
    with pytest.raises(ConnectionCheckError) as raised:
        ledger.check()
    message = str(raised.value)
    tables = ", ".join(f"migration_status.{t}" for t in LEDGER)
    assert f"role {role} lacks SELECT, INSERT, UPDATE, DELETE on table(s) {tables}" in message
    assert (
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "migration_status" TO "{role}"'
        in message
    )

    # A ledger an older version wrote (without a column this one adds), owned by another role.
    with pg_connect() as conn:
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA migration_status TO {role}"
        )
        conn.execute("ALTER TABLE migration_status.migration_table_status DROP COLUMN rows_truncated")
    with pytest.raises(ConnectionCheckError) as raised:
        ledger.check()
    message = str(raised.value)
    assert (
        f"role {role} lacks ownership on table migration_status.migration_table_status (owner: postgres)"
        in message
    )
    assert f'ALTER TABLE "migration_status"."migration_table_status" OWNER TO "{role}"' in message
    with pg_connect() as conn:  # the check wrote nothing: the column is still missing
        assert conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'migration_status' "
            "AND table_name = 'migration_table_status' AND column_name = 'rows_truncated'"
        ).fetchone() == (0,)
        with conn.transaction():
            ensure_ledger(conn)  # as its owner: upgraded
    ledger.check()


def test_a_separate_ledger_names_its_own_role(servers, pg_database, influx_database, role, items):
    from tasks.config import MigrationSpec

    influx = servers["influx"].extra
    spec = MigrationSpec.model_validate(
        {
            "source": {**login(servers, pg_database, None), "schema": "src"},
            "target": {
                "type": "influxdb",
                "url": influx["url"],
                "api": "v1",
                "database": influx_database,
                "username": influx["user"],
                "password_env": "INFLUX_PASSWORD",
            },
            "ledger": login(servers, pg_database, role),
            "staging": {"type": "local", "path": "/tmp"},
            "tables": [{"name": "items", "chunk_column": "sold_at", "chunk_interval": "1d"}],
        }
    )
    spec.name = NAME
    with pytest.raises(ConnectionCheckError) as raised:
        check_connections.fn(spec)
    (line,) = str(raised.value).splitlines()[1:]
    assert line.startswith(f"  ledger: ledger in PostgreSQL {role}@")
    assert (
        f"lacks CREATE on database {pg_database} (needed to create schema migration_status for the job ledger)"
        in line
    )
    assert f'GRANT CREATE ON DATABASE "{pg_database}" TO "{role}"' in line


def test_source_role_without_usage_or_select(tmp_path, servers, pg_database, pg_connect, role, items, capsys):
    file = write_migrations(tmp_path, servers, pg_database, source_user=role)
    # No USAGE on the source schema: the connection check says so.
    code, out, err = cli(capsys, "test-connections", NAME, "--migrations-file", file)
    assert (code, out) == (1, "")
    assert f"source: PostgreSQL {role}@" in err and f"role {role} lacks USAGE on schema src" in err
    assert f'GRANT USAGE ON SCHEMA "src" TO "{role}"' in err and "target:" not in err

    # USAGE, but no SELECT on the table: describing it (planning) names the table.
    with pg_connect() as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA src TO {role}")
    check_connections.fn(load_migration(NAME, migrations_path(file)))
    with pytest.raises(ConnectionCheckError) as raised:
        plan_migration(NAME, migrations_file=file)
    message = str(raised.value)
    assert f"role {role} lacks SELECT on table src.items (needed to read it)" in message
    assert f'GRANT SELECT ON "src"."items" TO "{role}"' in message
    code, out, err = cli(capsys, "plan", NAME, "--migrations-file", file)
    assert (code, out) == (1, "") and f"role {role} lacks SELECT on table src.items" in err

    # SELECT on some columns only: the others are named.
    with pg_connect() as conn:
        conn.execute(f"GRANT SELECT (id, name) ON src.items TO {role}")
    with pytest.raises(
        ConnectionCheckError, match=r"lacks SELECT on column\(s\) \['amount', 'sold_at'\] of table src.items"
    ):
        plan_migration(NAME, migrations_file=file)
    assert written(pg_connect) == ([], [])

    with pg_connect() as conn:
        conn.execute(f"GRANT SELECT ON src.items TO {role}")
    migrate_and_compare(file, pg_connect, items)


def test_an_existing_target_table_the_role_may_not_load(
    tmp_path, servers, pg_database, pg_connect, role, items, capsys
):
    """Schema privileges pass the connection check; the table's own are checked where the job
    prepares it (and where `plan` previews that), before it is truncated or written."""
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(
            "CREATE TABLE analytics.items (id bigint PRIMARY KEY, name text, amount numeric(10,2), "
            "sold_at timestamptz NOT NULL)"
        )
        conn.execute("INSERT INTO analytics.items VALUES (999, 'old', 1, now())")
        with conn.transaction():
            ensure_ledger(conn)
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA analytics, migration_status TO {role}")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA migration_status TO {role}"
        )
        conn.execute(f"GRANT SELECT, INSERT ON analytics.items TO {role}")
    file = write_migrations(
        tmp_path,
        servers,
        pg_database,
        target_user=role,
        tables=[{**ITEMS, "load_mode": "replace", "allow_truncate_foreign_rows": True}],
    )
    check_connections.fn(load_migration(NAME, migrations_path(file)))
    expected = (
        f"role {role} lacks TRUNCATE on target table analytics.items (needed to replace into it). "
        f'Fix, as a role that may grant it: GRANT TRUNCATE ON "analytics"."items" TO "{role}"'
    )
    found = plan_migration(NAME, migrations_file=file)
    assert any(expected in refusal for refusal in found.refusals), found.refusals
    code, out, err = cli(capsys, "plan", NAME, "--migrations-file", file)
    assert code == 1 and expected in out, out

    from flows.migrate import migrate

    with pytest.raises(MigrationFailed, match=re.escape(expected)):  # refused, not kept in the ledger
        migrate(source_name=NAME, migrations_file=file)
    with pg_connect() as conn:  # not truncated, nothing loaded
        assert conn.execute("SELECT id, name FROM analytics.items").fetchall() == [(999, "old")]

    grant_from(expected, servers, pg_database)
    migrate_and_compare(file, pg_connect, items)
