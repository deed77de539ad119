"""Load the named migration, build the source, staging and target blocks it names, and check each one.

The blocks of each system are imported when a migration first needs them: a PostgreSQL to
PostgreSQL job never loads the Snowflake, AWS or InfluxDB clients (about 100 MB of memory and
seconds of start-up between them).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from prefect import task

from blocks.errors import ConfigError, ConnectionCheckError
from blocks.postgres.source import PostgresSource
from blocks.postgres.target import PostgresTarget
from blocks.staging.local import LocalStaging
from tasks.config import (
    AwsAccess,
    InfluxSettings,
    MigrationSpec,
    ParquetSettings,
    PostgresSettings,
    RunWindow,
    TimestreamSettings,
    load_migration,
    migrations_path,
    run_window,
    secret_from_env,
)
from tasks.policy import STEP_RETRIES

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

    from blocks.influxdb.target import InfluxDBTarget
    from blocks.parquet.source import ParquetTables
    from blocks.snowflake.source import SnowflakeSource
    from blocks.staging.s3 import S3Staging
    from blocks.timestream.source import TimestreamSource


def _load_block(block_type, name: str, setting: str):
    try:
        return block_type.load(name)
    except Exception as exc:
        raise ConfigError(f"{setting}: cannot load {block_type.__name__} block {name!r}: {exc}") from None


def aws_credentials(settings: AwsAccess, where: str) -> AwsCredentials:
    """prefect-aws credentials from a saved block or from inline settings (keys from env vars)."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    if settings.credentials_block:
        return _load_block(AwsCredentials, settings.credentials_block, f"{where}.credentials_block")
    return AwsCredentials(
        aws_access_key_id=secret_from_env(settings.access_key_id_env, f"{where}.access_key_id_env"),
        aws_secret_access_key=secret_from_env(
            settings.secret_access_key_env, f"{where}.secret_access_key_env"
        ),
        region_name=settings.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.endpoint_url),
    )


def build_source(spec: MigrationSpec) -> SnowflakeSource | TimestreamSource | ParquetTables | PostgresSource:
    s = spec.source
    if isinstance(s, TimestreamSettings):
        return _timestream_source(s)
    if isinstance(s, ParquetSettings):
        from blocks.parquet.source import ParquetTables

        tables = {t.name: (t.path, t.manifest) for t in spec.tables}
        return ParquetTables(location=s.location, credentials=aws_credentials(s, "source"), tables=tables)
    if isinstance(s, PostgresSettings):
        return _postgres_source(s)
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    from blocks.snowflake.source import SnowflakeSource

    if s.block:
        connector = _load_block(SnowflakeConnector, s.block, "source.block")
    else:
        credentials = SnowflakeCredentials(
            account=s.account,
            user=s.user,
            password=secret_from_env(s.password_env, "source.password_env"),
            role=s.role,
        )
        connector = SnowflakeConnector(
            credentials=credentials,
            database=s.database,
            schema=s.schema_name,
            warehouse=s.warehouse or "COMPUTE_WH",
        )
    return SnowflakeSource(
        connector=connector, host=s.host, port=s.port, protocol=s.protocol, login_timeout=s.login_timeout
    )


def _postgres_source(s: PostgresSettings) -> PostgresSource:
    if s.block:
        return _load_block(PostgresSource, s.block, "source.block")
    return PostgresSource(
        host=s.host,
        port=s.port,
        dbname=s.dbname,
        user=s.user,
        password=secret_from_env(s.password_env, "source.password_env"),
        sslmode=s.sslmode,
        connect_timeout=s.connect_timeout,
        schema_name=s.schema_name,
    )


def _timestream_source(s: TimestreamSettings) -> TimestreamSource:
    from blocks.timestream.source import TimestreamSource

    if s.block:
        return _load_block(TimestreamSource, s.block, "source.block")
    return TimestreamSource(
        credentials=aws_credentials(s, "source"),
        database=s.database,
        page_rows=s.page_rows,
        export_mode=s.export_mode,
        unload_location=s.unload_location,
    )


def build_target(spec: MigrationSpec) -> PostgresTarget | InfluxDBTarget:
    if isinstance(spec.target, InfluxSettings):
        return _influx_target(spec.target)
    return _postgres(spec.target, "target")


def build_ledger(spec: MigrationSpec) -> PostgresTarget:
    """The PostgreSQL database that holds the job ledger (the target itself, or `ledger:`)."""
    return _postgres(spec.ledger_settings, "ledger" if spec.ledger else "target")


def _influx_target(t: InfluxSettings) -> InfluxDBTarget:
    from blocks.influxdb.target import InfluxDBTarget

    if t.block:
        return _load_block(InfluxDBTarget, t.block, "target.block")
    target = InfluxDBTarget(
        url=t.url,
        api=t.api,
        token=secret_from_env(t.token_env, "target.token_env"),
        org=t.org,
        bucket=t.bucket,
        database=t.database,
        retention_policy=t.retention_policy,
        username=t.username,
        password=secret_from_env(t.password_env, "target.password_env"),
        batch_lines=t.batch_lines,
        writers=t.writers,
        gzip=t.gzip,
        timeout_seconds=t.timeout_seconds,
    )
    secret_env = t.token_env if t.api == "v2" else t.password_env
    return target.secret_from(f"environment variable {secret_env}") if secret_env else target


def _postgres(t: PostgresSettings, where: str) -> PostgresTarget:
    if t.block:
        return _load_block(PostgresTarget, t.block, f"{where}.block")
    return PostgresTarget(
        host=t.host,
        port=t.port,
        dbname=t.dbname,
        user=t.user,
        password=secret_from_env(t.password_env, f"{where}.password_env"),
        sslmode=t.sslmode,
        connect_timeout=t.connect_timeout,
    )


def build_staging(spec: MigrationSpec) -> LocalStaging | S3Staging:
    s = spec.staging
    if s.type == "local":
        return LocalStaging(path=s.path)
    from prefect_aws import S3Bucket

    from blocks.staging.s3 import S3Staging

    if s.bucket_block:
        bucket = _load_block(S3Bucket, s.bucket_block, "staging.bucket_block")
    else:
        credentials = aws_credentials(s, "staging")
        bucket = S3Bucket(bucket_name=s.bucket, bucket_folder=s.prefix, credentials=credentials)
    return S3Staging(bucket=bucket)


@task(name="check-connections", **STEP_RETRIES)
def check_connections(spec: MigrationSpec) -> None:
    """Log in to source, staging and target; on failure name the one that failed and why."""
    failures = []
    checks = [("source", build_source), ("staging", build_staging), ("target", build_target)]
    if spec.ledger is not None:
        checks.append(("ledger", build_ledger))
    for role, build in checks:
        try:
            build(spec).check()
        except (ConnectionCheckError, ConfigError) as exc:
            failures.append(f"{role}: {exc}")
    if failures:
        raise ConnectionCheckError(
            "connection check failed, nothing was touched:\n  " + "\n  ".join(failures)
        )


@task(name="validate-config", **STEP_RETRIES)
def validate_config(
    source_name: str,
    migrations_file: str | None,
    start_time,
    end_time,
    batch_size,
    window: str | None = None,
    scheduled: datetime | None = None,
) -> tuple[MigrationSpec, RunWindow]:
    """The named migration and the run's window, checked; any problem raises ConfigError."""
    window = run_window(start_time, end_time, batch_size, window, scheduled)
    return load_migration(source_name, migrations_path(migrations_file)), window
