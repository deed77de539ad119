"""Load the named migration, build the source, staging and target blocks it names, and check each one."""

from __future__ import annotations

from prefect import task
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket
from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

from blocks.errors import ConfigError, ConnectionCheckError
from blocks.postgres import PostgresTarget
from blocks.snowflake import SnowflakeSource
from blocks.staging import LocalStaging, S3Staging
from tasks.config import (
    MigrationSpec,
    RunWindow,
    load_migration,
    migrations_path,
    run_window,
    secret_from_env,
)
from tasks.policy import STEP_RETRIES


def _load_block(block_type, name: str, setting: str):
    try:
        return block_type.load(name)
    except Exception as exc:
        raise ConfigError(f"{setting}: cannot load {block_type.__name__} block {name!r}: {exc}") from None


def build_source(spec: MigrationSpec) -> SnowflakeSource:
    s = spec.source
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


def build_target(spec: MigrationSpec) -> PostgresTarget:
    t = spec.target
    if t.block:
        return _load_block(PostgresTarget, t.block, "target.block")
    return PostgresTarget(
        host=t.host,
        port=t.port,
        dbname=t.dbname,
        user=t.user,
        password=secret_from_env(t.password_env, "target.password_env"),
        sslmode=t.sslmode,
        connect_timeout=t.connect_timeout,
    )


def build_staging(spec: MigrationSpec) -> LocalStaging | S3Staging:
    s = spec.staging
    if s.type == "local":
        return LocalStaging(path=s.path)
    if s.bucket_block:
        bucket = _load_block(S3Bucket, s.bucket_block, "staging.bucket_block")
    else:
        credentials = AwsCredentials(
            aws_access_key_id=secret_from_env(s.access_key_id_env, "staging.access_key_id_env"),
            aws_secret_access_key=secret_from_env(s.secret_access_key_env, "staging.secret_access_key_env"),
            region_name=s.region,
            aws_client_parameters=AwsClientParameters(endpoint_url=s.endpoint_url),
        )
        bucket = S3Bucket(bucket_name=s.bucket, bucket_folder=s.prefix, credentials=credentials)
    return S3Staging(bucket=bucket)


@task(name="check-connections", **STEP_RETRIES)
def check_connections(spec: MigrationSpec) -> None:
    """Log in to source, staging and target; on failure name the one that failed and why."""
    failures = []
    for role, build in (("source", build_source), ("staging", build_staging), ("target", build_target)):
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
    source_name: str, migrations_file: str | None, start_time, end_time, batch_size
) -> tuple[MigrationSpec, RunWindow]:
    """The named migration and the run's window, checked; any problem raises ConfigError."""
    window = run_window(start_time, end_time, batch_size)
    return load_migration(source_name, migrations_path(migrations_file)), window
