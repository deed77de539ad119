"""Reading `migrations.yaml` (the model is `blocks.spec`) and the flow's run window, checked at flow start.

Secrets never live in the file: inline settings name the environment variable that holds
each one (`password_env: SNOWFLAKE_PASSWORD`), or a saved Prefect block holds them.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from blocks.errors import ConfigError
from blocks.settings import secret_from_env
from blocks.spec import MigrationsFile, MigrationSpec

__all__ = ["MigrationSpec", "RunWindow", "load_migration", "run_window", "secret_from_env"]

DEFAULT_MIGRATIONS_FILE = Path(__file__).resolve().parent.parent / "migrations.yaml"


class RunWindow(BaseModel):
    """The flow's run parameters, checked."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    batch_size: int | None = None


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return f"{source} is invalid:\n  " + "\n  ".join(lines)


def migrations_path(override: str | None = None) -> Path:
    return Path(override or os.environ.get("MIGRATIONS_FILE") or DEFAULT_MIGRATIONS_FILE)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value, where: str = ""):
    """Replace `${NAME}` / `${NAME:-default}` in string values; a value that expands to "" becomes None.

    Meant for hosts, ports and names that differ between environments. Secrets stay out of
    the file altogether: use the `*_env` settings for them.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{where}: environment variable {name} is not set and has no default")
        return default

    expanded = _ENV_REF.sub(substitute, value)
    return None if expanded == "" else expanded


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping holds the same key twice (PyYAML would keep the last one silently)."""


class _MigrationsLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping; keys a merge (`<<`)
    brings in may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the constructor below says so
                if first is not key_node.start_mark:
                    raise _DuplicateKey(
                        f"in the mapping that starts at line {node.start_mark.line + 1}",
                        None,
                        f"key {key!r} appears twice (first at line {first.line + 1}, column {first.column + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """`path`, line and column (1-based), and what the parser expected, without the file's text."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigError(f"{path} is not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or "invalid YAML"
    if exc.context:
        context = exc.context
        if exc.context_mark and exc.context_mark is not mark and "line" not in context:
            context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        problem += f" ({context})"
    return ConfigError(f"{path} is not valid YAML{where}: {problem}")


def read_yaml(path: Path):
    """The YAML document in `path`, or None when it is empty.

    Raises `ConfigError` naming the path when the file cannot be read, is not UTF-8, or is not
    valid YAML (then also the line and column, 1-based), and when a mapping holds a key twice.
    Messages never quote the file's text, which might hold a pasted secret.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path} is not UTF-8 text at line {line} (byte {exc.start}): {exc.reason}"
        ) from None
    try:
        return yaml.load(text, Loader=_MigrationsLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


def load_migrations(path: Path) -> MigrationsFile:
    """Parse and check the whole file; any problem raises `ConfigError` naming the file, and
    the key (or, for YAML syntax, the line and column)."""
    if not path.exists():
        raise ConfigError(f"migrations file {path} does not exist (set MIGRATIONS_FILE or migrations_file)")
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path} is empty: it needs a top-level 'migrations:' mapping")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with a 'migrations:' key, not a {type(raw).__name__}")
    try:
        parsed = MigrationsFile.model_validate(expand_env(raw))
    except ValidationError as exc:
        raise ConfigError(_format_errors(str(path), exc)) from None
    for name, spec in parsed.migrations.items():
        spec.name = name
    return parsed


def load_migration(source_name: str, path: Path) -> MigrationSpec:
    migrations = load_migrations(path).migrations
    if source_name not in migrations:
        raise ConfigError(
            f"unknown source_name {source_name!r}: {path} defines {', '.join(sorted(migrations))}"
        )
    return migrations[source_name]


def parse_time(name: str, value: str | datetime | None) -> datetime | None:
    """ISO 8601 to an aware UTC datetime (naive input is taken as UTC); bad input raises ConfigError."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{name} {value!r} is not an ISO 8601 time (e.g. 2024-01-31T00:00:00Z)"
            ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


WINDOWS = {"previous_day": timedelta(days=1), "previous_hour": timedelta(hours=1)}


def relative_window(window: str, scheduled: datetime) -> tuple[datetime, datetime]:
    """The whole day (or hour) before `scheduled`, in UTC: `previous_day` at 02:00 gives
    yesterday 00:00 up to today 00:00."""
    if window not in WINDOWS:
        raise ConfigError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    scheduled = scheduled.astimezone(UTC)
    if window == "previous_day":
        end = scheduled.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        end = scheduled.replace(minute=0, second=0, microsecond=0)
    return end - WINDOWS[window], end


def run_window(
    start_time, end_time, batch_size, window: str | None = None, scheduled: datetime | None = None
) -> RunWindow:
    """The run's checked window; `window` (a name in WINDOWS) fills start and end from the
    run's scheduled time, and explicit start_time/end_time win over it."""
    start = parse_time("start_time", start_time)
    end = parse_time("end_time", end_time)
    if window:
        default_start, default_end = relative_window(window, scheduled or datetime.now(UTC))
        start, end = start or default_start, end or default_end
    if start and end and end <= start:
        raise ConfigError(f"end_time {end.isoformat()} is not after start_time {start.isoformat()}")
    if batch_size is not None and int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be a positive number of rows, got {batch_size}")
    return RunWindow(start_time=start, end_time=end, batch_size=batch_size)
