"""Demo data for the `analytics` and `conflict` migrations, created in a Snowflake stand-in.

Every Snowflake type the migration maps appears here, with NULLs, awkward strings and
extreme numbers, so the demo and the tests exercise the whole type table.
"""

from __future__ import annotations

DATABASE = "ANALYTICS"
SCHEMA = "PUBLIC"

EVENTS_DDL = """
CREATE OR REPLACE TABLE EVENTS (
    EVENT_ID     NUMBER(38,0) NOT NULL,
    USER_ID      INTEGER,
    AMOUNT       NUMBER(18,4),
    RATIO        NUMBER(38,37),
    SCORE        FLOAT,
    LABEL        VARCHAR,
    IS_ACTIVE    BOOLEAN,
    EVENT_DATE   DATE,
    EVENT_CLOCK  TIME,
    EVENT_TIME   TIMESTAMP_NTZ,
    CREATED_AT   TIMESTAMP_TZ,
    SEEN_AT      TIMESTAMP_LTZ,
    PAYLOAD      VARIANT,
    ATTRS        OBJECT,
    TAGS         ARRAY,
    DIGEST       BINARY
)"""

EVENTS_FILL = """
INSERT INTO EVENTS
SELECT
    n + 1,
    IFF(MOD(n, 13) = 0, NULL, MOD(n * 7919, 100000)),
    IFF(MOD(n, 11) = 0, NULL, (MOD(n * 104729, 20000000) - 10000000) / 10000),
    IFF(MOD(n, 17) = 0, NULL, MOD(n, 9) / 10 + 0.0123456789012345678901234567890123456),
    IFF(MOD(n, 19) = 0, NULL, n / 7.0 - 1000),
    CASE MOD(n, 9)
        WHEN 0 THEN NULL
        WHEN 1 THEN ''
        WHEN 2 THEN 'comma, "quote", back\\\\slash'
        WHEN 3 THEN 'line one' || CHR(10) || 'line two'
        WHEN 4 THEN 'ünïcödé ✓ 日本語'
        ELSE 'label-' || TO_VARCHAR(n)
    END,
    IFF(MOD(n, 23) = 0, NULL, MOD(n, 2) = 0),
    IFF(MOD(n, 29) = 0, NULL, DATEADD(day, MOD(n, 3650), '2015-01-01'::DATE)),
    IFF(MOD(n, 31) = 0, NULL, TIMEADD(second, MOD(n, 86400), '00:00:00'::TIME)),
    DATEADD(second, n * 3, '2024-01-01 00:00:00'::TIMESTAMP_NTZ),
    IFF(MOD(n, 37) = 0, NULL, DATEADD(millisecond, n * 1001, '2023-06-01 12:00:00+00:00'::TIMESTAMP_TZ)),
    IFF(MOD(n, 41) = 0, NULL, DATEADD(minute, n, '2022-03-01 08:30:00+00:00'::TIMESTAMP_TZ)),
    IFF(MOD(n, 43) = 0, NULL, PARSE_JSON('{{"n": ' || TO_VARCHAR(n) || ', "s": "x\\\\"y"}}')),
    IFF(MOD(n, 47) = 0, NULL, OBJECT_CONSTRUCT('k', MOD(n, 5), 'name', 'o' || TO_VARCHAR(n))),
    IFF(MOD(n, 53) = 0, NULL, ARRAY_CONSTRUCT(n, MOD(n, 3))),
    IFF(MOD(n, 59) = 0, NULL, TO_BINARY(LPAD(TO_VARCHAR(MOD(n * 31, 65536)), 6, '0'), 'HEX'))
FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""

PAGE_VIEWS_DDL = """
CREATE OR REPLACE TABLE PAGE_VIEWS (
    VIEW_ID    NUMBER(38,0) NOT NULL,
    VIEWED_AT  TIMESTAMP_NTZ NOT NULL,
    URL        VARCHAR NOT NULL,
    DURATION_MS INTEGER
)"""

PAGE_VIEWS_FILL = """
INSERT INTO PAGE_VIEWS
SELECT n + 1, DATEADD(second, n * 17, '2024-03-01 00:00:00'::TIMESTAMP_NTZ),
       '/page/' || TO_VARCHAR(MOD(n, 50)), IFF(MOD(n, 7) = 0, NULL, MOD(n * 37, 60000))
FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""

CUSTOMERS_DDL = """
CREATE OR REPLACE TABLE CUSTOMERS (
    CUSTOMER_ID NUMBER(38,0) NOT NULL,
    NAME        VARCHAR,
    BALANCE     NUMBER(12,2),
    UPDATED_AT  TIMESTAMP_NTZ
)"""

CUSTOMERS_FILL = """
INSERT INTO CUSTOMERS
SELECT n + 1, 'customer ' || TO_VARCHAR(n + 1), (MOD(n * 7, 100000) - 50000) / 100,
       DATEADD(hour, n, '2024-01-01 00:00:00'::TIMESTAMP_NTZ)
FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""


def seed(cursor, events: int = 120_000, page_views: int = 30_000, customers: int = 5_000) -> None:
    """(Re)create the demo tables in ANALYTICS.PUBLIC with the given row counts."""
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
    cursor.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
    for ddl, fill, rows in (
        (EVENTS_DDL, EVENTS_FILL, events),
        (PAGE_VIEWS_DDL, PAGE_VIEWS_FILL, page_views),
        (CUSTOMERS_DDL, CUSTOMERS_FILL, customers),
    ):
        cursor.execute(ddl)
        if rows:
            cursor.execute(fill.format(rows=int(rows)))
