"""PostgreSQL blocks hold their login as a `PostgresCredentials` block; the flat login of
callers and saved block documents from before still works."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from blocks.postgres import PostgresConnection, PostgresSettings
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.ledger_store import PostgresLedger
from blocks.postgres.source import PostgresSource
from blocks.postgres.target import PostgresTarget
from blocks.seam import Ledger

ROOT = Path(__file__).resolve().parent.parent


def test_flat_login_kwargs_become_credentials():
    target = PostgresTarget(host="db", port=6543, dbname="d", user="u", password="pw", connect_timeout=3)
    assert target.credentials == PostgresCredentials(
        host="db", port=6543, dbname="d", user="u", password=SecretStr("pw"), connect_timeout=3
    )
    assert target.describe_target() == "PostgreSQL u@db:6543/d"
    source = PostgresSource(host="src", password=SecretStr("pw"), schema_name="s")
    assert source.credentials.host == "src" and source.credentials.secret() == "pw"
    assert source.schema_name == "s"
    # Nested keys win over flat ones; a built credentials block and flat keys together are refused.
    mixed = PostgresTarget(host="flat", credentials={"host": "nested", "user": "n"})
    assert (mixed.credentials.host, mixed.credentials.user) == ("nested", "n")
    with pytest.raises(ValidationError, match="not both"):
        PostgresTarget(host="flat", credentials=PostgresCredentials(host="block"))


def test_settings_and_credentials_share_one_connection_model(monkeypatch):
    shared = set(PostgresConnection.model_fields)
    assert shared <= set(PostgresSettings.model_fields) and shared <= set(PostgresCredentials.model_fields)
    monkeypatch.setenv("PG_TEST_SECRET", "s3cret")
    settings = PostgresSettings.model_validate(
        {"type": "postgres", "host": "db", "port": 6000, "dbname": "x", "password_env": "PG_TEST_SECRET"}
    )
    target = settings.build("target")
    assert target.credentials.secret() == "s3cret" and target.credentials.port == 6000
    ledger = settings.build_ledger("target")
    assert isinstance(ledger, PostgresLedger) and isinstance(ledger, Ledger)
    assert ledger.credentials == target.credentials
    assert settings.build("source").credentials == target.credentials


def test_reading_postgres_settings_does_not_import_psycopg():
    code = (
        "import sys; from blocks.postgres import PostgresSettings; "
        "PostgresSettings(type='postgres'); assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_saved_block_of_the_old_flat_shape_still_loads(servers, pg_database):
    """A migration-postgres-target document saved before `credentials` existed (flat login
    keys) loads as a PostgresTarget whose credentials log in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    from deployments.register_blocks import register

    register()
    name = f"old-pg-{secrets.token_hex(3)}"
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("migration-postgres-target")
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        client.create_block_document(
            BlockDocumentCreate(
                name=name,
                block_type_id=block_type.id,
                block_schema_id=schema.id,
                data={
                    "host": "127.0.0.1",
                    "port": servers["pg"].port,
                    "dbname": pg_database,
                    "user": "postgres",
                    "password": os.environ["PGPASSWORD"],
                    "sslmode": "prefer",
                    "connect_timeout": 7,
                },
            )
        )
    loaded = PostgresTarget.load(name)
    assert loaded.credentials.port == servers["pg"].port and loaded.credentials.connect_timeout == 7
    assert loaded.credentials.secret() == os.environ["PGPASSWORD"]
    loaded.check()
    # Saved again, it takes the new shape, and loads the same.
    loaded.save(name, overwrite=True)
    again = PostgresTarget.load(name).credentials
    assert login(again) == login(loaded.credentials)
    again_target = PostgresTarget(credentials=again)
    again_target.check()


def login(credentials: PostgresCredentials) -> tuple:
    return (*(getattr(credentials, f) for f in PostgresConnection.model_fields), credentials.secret())
