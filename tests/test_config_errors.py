"""A `migrations.yaml` that cannot be read as YAML fails with a `ConfigError` naming the file, the
line and the column, and never quoting the file's text."""

from __future__ import annotations

import os

import pytest

from blocks.errors import ConfigError
from tasks.config import load_migration, load_migrations

VALID = """\
migrations:
  m:
    source: {type: postgres, host: 127.0.0.1, password_env: SRC_PW}
    target: {type: postgres, host: 127.0.0.1, password_env: DST_PW}
    tables:
      - {name: t, chunk_column: id, chunk_size: 10}
"""


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        # A tab where YAML wants spaces.
        (
            VALID.replace("    target:", "\ttarget:"),
            4,
            1,
            "found character '\\t' that cannot start any token",
        ),
        # A flow mapping left open.
        (VALID.replace("chunk_size: 10}", "chunk_size: 10"), 7, 1, "expected ',' or '}'"),
        # A key indented as if it belonged to the list item.
        (VALID + "      extra: 1\n", 7, 7, "expected <block end>"),
        # "key: value: value" on one line.
        (VALID.replace("m:\n", "m: x: y\n"), 2, 7, "mapping values are not allowed here"),
    ],
)
def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, text, line, column, problem):
    path = tmp_path / "migrations.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_migrations(path)
    message = str(raised.value)
    assert message.startswith(f"{path} is not valid YAML at line {line}, column {column}: "), message
    assert problem in message
    # PyYAML's own text names "<unicode string>" and repeats the source lines with a caret.
    assert "<unicode string>" not in message and "^" not in message and "\n" not in message


def test_the_error_reaches_a_flow_parameter_path_and_migration_lookup(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(VALID.replace("tables:", "tables: [", 1))
    with pytest.raises(ConfigError, match=rf"^{path} is not valid YAML at line \d+, column \d+: "):
        load_migration("m", path)


def test_the_message_never_quotes_the_file(tmp_path):
    """A secret pasted into the file stays out of the message (and so out of flow run logs)."""
    secret = "hunter2-" + os.urandom(4).hex()
    path = tmp_path / "migrations.yaml"
    path.write_text(VALID.replace("password_env: DST_PW}", f'password: "{secret}\\q"}}'))
    with pytest.raises(ConfigError) as raised:
        load_migrations(path)
    message = str(raised.value)
    assert message.startswith(f"{path} is not valid YAML at line 4, column ")
    assert "found unknown escape character 'q'" in message
    assert secret not in message


def test_a_key_given_twice_is_refused_with_both_places(tmp_path):
    """PyYAML would keep the second `m:` silently, running a migration the reader did not see."""
    path = tmp_path / "migrations.yaml"
    path.write_text(VALID + VALID.split("\n", 1)[1])
    with pytest.raises(ConfigError) as raised:
        load_migrations(path)
    assert str(raised.value).startswith(
        f"{path} is not valid YAML at line 7, column 3: key 'm' appears twice (first at line 2, column 3)"
    )


def test_a_merge_key_may_still_be_overridden(tmp_path):
    path = tmp_path / "migrations.yaml"
    path.write_text(
        "migrations:\n"
        "  m:\n"
        "    source: &pg {type: postgres, host: 127.0.0.1, port: 5432, password_env: PW}\n"
        "    target: {<<: *pg, port: 6543}\n"
        "    tables: [{name: t, chunk_column: id, chunk_size: 10}]\n"
    )
    spec = load_migration("m", path)
    assert (spec.source.port, spec.target.port) == (5432, 6543)


def test_unreadable_files_name_the_path(tmp_path):
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes(VALID.replace("m:", "m\xe9:").encode("latin-1"))
    with pytest.raises(
        ConfigError, match=rf"^{not_utf8} is not UTF-8 text at line 2 \(byte 15\): invalid continuation byte$"
    ):
        load_migrations(not_utf8)
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"^cannot read {folder}: Is a directory$"):
        load_migrations(folder)
    with pytest.raises(ConfigError, match="does not exist"):
        load_migrations(tmp_path / "missing.yaml")


def test_the_repository_file_still_loads():
    from tasks.config import DEFAULT_MIGRATIONS_FILE

    assert {"analytics", "conflict", "energy"} <= set(load_migrations(DEFAULT_MIGRATIONS_FILE).migrations)


# --- what a block would refuse, the config refuses first ----------------------------------------


@pytest.mark.parametrize(
    ("source", "key", "problem"),
    [
        # SnowflakeCredentials refuses a login without a password (or key, token, SSO).
        (
            "{type: snowflake, account: a, user: u, database: d, schema: s}",
            "migrations.m.source.snowflake",
            "inline Snowflake settings need password_env (or set block)",
        ),
        # UNLOAD writes to S3; the block refuses any other location.
        (
            "{type: timestream, database: db, export_mode: unload, unload_location: bucket/prefix}",
            "migrations.m.source.timestream.unload_location",
            "must be an S3 URI, s3://bucket/prefix, got 'bucket/prefix'",
        ),
    ],
)
def test_a_source_the_block_would_refuse_fails_validation_naming_the_key(tmp_path, source, key, problem):
    path = tmp_path / "migrations.yaml"
    path.write_text(VALID.replace("{type: postgres, host: 127.0.0.1, password_env: SRC_PW}", source))
    with pytest.raises(ConfigError) as raised:
        load_migrations(path)
    assert f"{key}: Value error, {problem}" in str(raised.value), str(raised.value)
