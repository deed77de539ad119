"""Errors, each saying whether trying again can help.

- `PermanentError`: retrying will not fix it (bad config, bad data, a guard refusing, a
  login refused). `MigrationError` and its subclasses are the ones this project raises on
  purpose, with a message that names the problem.
- `TransientError`: the same call may well succeed later (a dropped connection, a timeout,
  a server busy or restarting).

`is_transient` decides for any exception, so retries are not guesses: our own errors say
what they are, errors of the network and of the servers' drivers are transient, and anything
else (a bug, a library refusing an argument) is permanent.

Messages never carry secret values: they name the setting or environment variable instead.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Trying again will not help."""


class TransientError(Exception):
    """Trying again later may help."""


class MigrationError(PermanentError):
    """A permanent, user-facing failure. The message names the problem."""


class ConfigError(MigrationError):
    """migrations.yaml (or a flow parameter) is invalid."""


class ConnectionCheckError(MigrationError):
    """A source, staging area or target cannot be reached or refuses our credentials."""


class SourceSchemaError(MigrationError):
    """A table or column named in the config does not exist, or has a type we cannot map."""


class ValidationFailed(MigrationError):
    """A staged file or a loaded chunk does not match what the source holds."""


class TargetGuardError(MigrationError):
    """The target refuses a load: truncation guard, overlapping job, missing key..."""


class DataConversionError(MigrationError):
    """A value cannot be represented exactly in the target type."""


class MigrationFailed(MigrationError, RuntimeError):
    """A job ended with failed chunks; the message names the job and the first error."""


def _transient_types() -> tuple[type[BaseException], ...]:
    """The exception types of the network and of the drivers that mean "try again"; each
    driver is consulted only if a migration already imported it."""
    import sys

    found: list[type[BaseException]] = [TransientError, ConnectionError, TimeoutError, OSError]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found += [
            psycopg.OperationalError,
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
        ]
    for module, names in (
        ("urllib3.exceptions", ("HTTPError",)),
        ("requests", ("ConnectionError", "Timeout")),
        ("botocore.exceptions", ("BotoCoreError",)),
        ("snowflake.connector.errors", ("OperationalError", "InterfaceError")),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            found += [getattr(loaded, name) for name in names if hasattr(loaded, name)]
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth retrying: never a `PermanentError`; a `TransientError` or an
    error of the network or a server's driver, including one that wraps such an error."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, PermanentError):
            return False
        if isinstance(exc, _transient_types()) or _server_busy(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


_BUSY_CODES = {
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequestsException",
}


def _server_busy(exc: BaseException) -> bool:
    """An HTTP API's answer that means "later": status 429 or 5xx, or a throttling code
    (botocore's `ClientError`, influxdb-client's `ApiException`). A 4xx such as AccessDenied is
    permanent."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status == 429 or status >= 500 or response["Error"].get("Code") in _BUSY_CODES
    status = getattr(exc, "status", None)  # influxdb_client ApiException
    return (
        type(exc).__name__ == "ApiException" and isinstance(status, int) and (status == 429 or status >= 500)
    )
