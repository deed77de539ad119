"""InfluxDB: a point target, over the v2 API (2.x, 3.x, Timestream for InfluxDB) or v1 (1.x).

`InfluxConnection` is the one connection model: the config (`InfluxSettings`, secrets named by
environment variable) and the block (`target.InfluxDBTarget`, secrets held) both build on it,
so the config refuses at validation whatever the block would refuse.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from blocks.seam import LoadMode
from blocks.settings import SystemSettings, load_saved_block, secret_from_env
from blocks.timeunits import EPOCH_UTC, NS_PER_UNIT

# The point times InfluxDB stores: signed 64-bit nanoseconds, less the two values it reserves.
MIN_TIME_NS = -9223372036854775806
MAX_TIME_NS = 9223372036854775806


class InfluxTraits:
    transactional_load: ClassVar[bool] = False
    load_modes: ClassVar[frozenset[LoadMode]] = frozenset({LoadMode.APPEND})
    # Points with the same series and time overwrite, so append is already idempotent.
    load_modes_note: ClassVar[str] = (
        "points with the same series and time overwrite, so append is already idempotent"
    )
    time_unit: ClassVar[str] = "ns"
    # The first and last time a point can have, to the microsecond inside the nanosecond range.
    time_range: ClassVar[tuple[datetime, datetime] | None] = (
        EPOCH_UTC + timedelta(microseconds=-(-MIN_TIME_NS // NS_PER_UNIT["us"])),
        EPOCH_UTC + timedelta(microseconds=MAX_TIME_NS // NS_PER_UNIT["us"]),
    )
    display_name: ClassVar[str] = "InfluxDB"
    keeps_row_provenance: ClassVar[bool] = False
    writes_points: ClassVar[bool] = True
    holds_ledger: ClassVar[bool] = False


class InfluxConnection(BaseModel):
    """Where and how points are written; the secrets are named by the subclass."""

    url: str | None = Field(default=None, description="Base URL, e.g. http://localhost:8086")
    api: Literal["v2", "v1"] = Field(
        default="v2", description="v2: 2.x, 3.x, Timestream for InfluxDB; v1: 1.x"
    )
    org: str | None = Field(default=None, description="Organization (1.8's compatibility layer ignores it)")
    bucket: str | None = Field(default=None, description='Bucket name, or "database/retention policy" on 1.8')
    database: str | None = Field(default=None, description="v1 database")
    retention_policy: str | None = None
    username: str | None = None
    batch_lines: int = Field(default=10_000, ge=1, description="Lines per write request, at most")
    writers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Write requests in flight to this database from one process, shared by its chunks",
    )
    gzip: bool = True
    timeout_seconds: float = Field(default=60.0, gt=0)

    # The setting that holds (or names) the v2 token, as this model spells it, and what to say
    # when url is missing.
    token_key: ClassVar[str] = "token"
    url_missing: ClassVar[str] = "needs url"

    def _needs_connection(self) -> bool:
        return True

    @model_validator(mode="after")
    def _settings_for_api(self):
        if not self._needs_connection():
            return self
        if not self.url:
            raise ValueError(self.url_missing)
        if self.api == "v2":
            missing = [name for name in (self.token_key, "org", "bucket") if not getattr(self, name)]
            if missing:
                raise ValueError(f'api "v2" needs {", ".join(missing)}')
        elif not self.database:
            raise ValueError('api "v1" needs database')
        return self


class InfluxSettings(InfluxTraits, SystemSettings, InfluxConnection):
    type: Literal["influxdb"]
    block: str | None = Field(default=None, description="Name of a saved migration-influxdb-target block")
    token_env: str | None = Field(default=None, description="Environment variable holding the v2 token")
    password_env: str | None = Field(default=None, description="Environment variable holding the v1 password")

    token_key: ClassVar[str] = "token_env"
    url_missing: ClassVar[str] = "needs url (or set block)"

    def _needs_connection(self) -> bool:
        return self.block is None

    @property
    def container(self) -> str:
        return (self.bucket if self.api == "v2" else self.database) or self.block or ""

    def scope(self, lowercase_identifiers: bool) -> dict:
        """Where a job's points land, as the job's fingerprint records it."""
        return {"influxdb": self.container}

    def plan_points(self, table, columns, default_measurement: str):
        """The table's point mapping (`mapping.PointsPlan`), defaults filled in and checked
        against the source columns; see `mapping.resolve_points` for what it refuses."""
        from blocks.influxdb.mapping import resolve_points

        return resolve_points(table, columns, default_measurement)

    def build(self, where: str):
        from blocks.influxdb.target import InfluxDBTarget

        if self.block:
            return load_saved_block(InfluxDBTarget, self.block, f"{where}.block")
        connection = self.model_dump(include=set(InfluxConnection.model_fields))
        target = InfluxDBTarget(
            **connection,
            token=secret_from_env(self.token_env, f"{where}.token_env"),
            password=secret_from_env(self.password_env, f"{where}.password_env"),
        )
        secret_env = self.token_env if self.api == "v2" else self.password_env
        return target.secret_from(f"environment variable {secret_env}") if secret_env else target
