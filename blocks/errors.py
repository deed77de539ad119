"""Errors a migration raises on purpose.

`MigrationError` and its subclasses are permanent: retrying will not fix them, so the
tasks' retry condition lets them fail at once. Anything else (a dropped connection, a
timeout) is treated as transient and retried with backoff.

Messages never carry secret values: they name the setting or environment variable instead.
"""


class MigrationError(Exception):
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
