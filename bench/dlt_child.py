"""dlt 1.31 `sql_table(backend="pyarrow")` from PostgreSQL into PostgreSQL, in a process of its own.

    python -m bench.dlt_child PG_URL SCHEMA TABLE DATASET PIPELINES_DIR

Prints `BENCH_RESULT {"seconds": ...}`: the wall time of `pipeline.run` (extract, normalize, load).
"""

from __future__ import annotations

import json
import sys
import time


def main(url: str, schema: str, table: str, dataset: str, pipelines_dir: str) -> None:
    import dlt
    from dlt.sources.sql_database import sql_table

    source = sql_table(credentials=url, schema=schema, table=table, backend="pyarrow")
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{dataset}",
        destination=dlt.destinations.postgres(credentials=url),
        dataset_name=dataset,
        pipelines_dir=pipelines_dir,
    )
    started = time.perf_counter()
    pipeline.run(source)
    print("BENCH_RESULT " + json.dumps({"seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
