"""InfluxDB as a migration target: Arrow batches in as line protocol, InfluxQL counts and deletes.

`InfluxDBTarget` keeps the connection settings (`InfluxConnection`, with the token or password
as `SecretStr`) apart from the I/O, which its mixins carry, one job each:

- `access.InfluxAccess`: the HTTP pool and credentials, InfluxQL requests, `check`, and the
  exception each answer maps to (401 "unauthorized", unknown bucket or database, transient
  5xx/408/429 and no answer at all);
- `writes.PointWriter`: `write_chunk`, batches encoded into requests of at most `batch_lines`
  lines and sent by the `writers` pool the process shares per database;
- `queries.PointQueries`: `count` and `delete` of a measurement's points in a time range;
- `chunks.ChunkPoints`: the `PointTarget` methods the tasks call for one staged chunk;
- `preview.PointPreview`: what a dry run says about a table's points, without writing.

Two APIs, one behaviour: ``api="v2"`` for InfluxDB 2.x, Cloud, Timestream for InfluxDB and
1.8+'s compatibility layer (influxdb-client's `WriteService` and `DeleteApi`); ``api="v1"`` for
InfluxDB 1.x (``POST /write`` with Basic auth, never ``u``/``p`` in the URL, where error
messages and access logs would show the password). No message ever holds the token or password.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, SecretStr

from blocks.influxdb import InfluxConnection, InfluxTraits
from blocks.influxdb.access import InfluxAccess, InfluxServerError
from blocks.influxdb.chunks import ChunkPoints
from blocks.influxdb.influxql import influxql_ident
from blocks.influxdb.preview import PointPreview
from blocks.influxdb.queries import PointQueries
from blocks.influxdb.writes import InfluxLoad, PointWriter

__all__ = ["InfluxDBTarget", "InfluxLoad", "InfluxServerError", "influxql_ident"]


class InfluxDBTarget(
    InfluxTraits, PointPreview, ChunkPoints, PointQueries, PointWriter, InfluxAccess, Block, InfluxConnection
):
    """An InfluxDB bucket (v2 API) or database (v1 API) that migrations write points into."""

    _block_type_name = "Migration InfluxDB Target"
    _block_type_slug = "migration-influxdb-target"

    token: SecretStr | None = Field(default=None, description="v2 API token")
    password: SecretStr | None = Field(default=None, description="v1 password")
    # Where the token or password came from, for login errors ("environment variable X").
    _secret_source: str | None = PrivateAttr(default=None)
