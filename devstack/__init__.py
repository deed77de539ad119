"""Local stand-ins for the demo and the tests: PostgreSQL, fakesnow, moto and a Prefect server.

Nothing here is used by a real migration; it starts throwaway servers on loopback ports.
"""
