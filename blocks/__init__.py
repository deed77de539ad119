"""Prefect blocks: connection settings plus the few I/O methods the tasks need."""
