"""Scratch PostgreSQL databases for tests and benchmarks: reachability, create, drop.

One place for what tests/conftest.py, the fuzz tests and bench/load.py each did on their
own: a fresh, uniquely named database per test or run, dropped (WITH FORCE, so a leftover
connection cannot keep it) afterwards. Imported as ``pg_scratch`` by the tests (their
directory is on the path) and as ``tests.pg_scratch`` by the benchmarks.
"""

from __future__ import annotations

import uuid


def plain(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (psycopg does not take the driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def postgres_reason(admin_url: str, timeout: int = 3) -> str | None:
    """None when PostgreSQL answers at ``admin_url``; else one line saying why not."""
    try:
        import psycopg

        with psycopg.connect(plain(admin_url), connect_timeout=timeout):
            return None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL not reachable at {admin_url}: {first}"


def fresh_database(admin_url: str, prefix: str = "cohort_test") -> tuple[str, str]:
    """Create an empty database next to ``admin_url``'s; its SQLAlchemy URL and its name."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` even if connections to it are still open."""
    import psycopg

    with psycopg.connect(plain(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
