"""Database engine, sessions and schema migration (alembic) for the coordinator."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_DATA_DIR = Path("cohort-data")


def default_database_url(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """``COHORT_DATABASE_URL`` if set, else the embedded SQLite file under ``data_dir``."""
    return os.environ.get("COHORT_DATABASE_URL") or f"sqlite:///{data_dir / 'cohort.db'}"


def make_engine(url: str) -> Engine:
    """An engine fit for a threaded gRPC server on SQLite or PostgreSQL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        _track_writes(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _track_writes(engine)
    return engine


# Statements that change nothing; anything else (INSERT, UPDATE, DELETE, SAVEPOINT, DDL)
# marks its connection's transaction as one that must COMMIT.
_READ_ONLY = ("SELECT", "PRAGMA", "SHOW", "WITH")
WROTE = "cohort_wrote"


def _track_writes(engine: Engine) -> None:
    """Flag a connection whose current transaction sent any statement that may write."""

    @event.listens_for(engine, "before_cursor_execute")
    def _mark(conn: Connection, _cursor: Any, statement: str, *_args: object) -> None:
        if not statement.lstrip()[:6].upper().startswith(_READ_ONLY):
            conn.info[WROTE] = True


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine) -> None:
    """Run every alembic migration the database has not had, one after another."""
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision (a no-op when it is there already).

    An empty database gets the newest schema in one step, from the models
    (coordinator/schema.py), stamped with alembic's head: the same schema the migrations
    build one by one (tests/test_store.py compares both with the models), without
    replaying them. On SQLite that replay copies tables (batch mode) and took 0.5 s of a
    coordinator's start on a loaded machine (issue 14, bench/round.py). A database with
    any table is upgraded by the migrations, as before.
    """
    if inspect(engine).get_table_names():
        upgrade(engine)
        return
    from coordinator.schema import Base

    config = _alembic_config(engine)
    with engine.begin() as connection:
        Base.metadata.create_all(connection)
        config.attributes["connection"] = connection
        command.stamp(config, "head")


CONNECTIONS = "cohort_connections"


def _began(session: Session, _trans: SessionTransaction, conn: Connection) -> None:
    """Remember the connections a transaction uses, with their write flags cleared."""
    conn.info.pop(WROTE, None)
    session.info.setdefault(CONNECTIONS, []).append(conn)


class Database:
    """Engine plus session factory; ``transaction()`` is the unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_begin", _began)

    def migrate(self) -> None:
        """Bring the schema to alembic's head (a no-op when it is there)."""
        migrate(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on any exception.

        A transaction that only read ends without a COMMIT: the connection goes back to
        the pool, which rolls it back, and the loaded objects stay usable (detached, not
        expired), as after a commit with ``expire_on_commit=False``. Most coordinator calls
        (token checks, long polls that find nothing, scheduler ticks with nothing to do)
        only read, and a COMMIT each is a round trip on PostgreSQL and a WAL check on
        SQLite for nothing (issue 14). A block that wrote anything commits before it
        returns, so an acknowledged update is durable exactly as before.
        """
        session = self.sessions()
        connections: list[Connection] = session.info.setdefault(CONNECTIONS, [])
        with session:
            session.begin()
            try:
                yield session
                session.flush()
            except BaseException:
                session.rollback()
                raise
            if any(conn.info.get(WROTE) for conn in connections):
                session.commit()
            # else: leaving ``with session`` closes it; the read is rolled back unchanged.

    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()


class DatabaseInUse(RuntimeError):
    """Another coordinator process already serves this database."""


@contextmanager
def sole_writer(url: str) -> Iterator[None]:
    """Hold the database for one coordinator process while the block runs.

    The coordinator is the audit log's one writer and keeps credentials and the log head in
    memory (coordinator.hub): a second process on the same database would fail appends and
    see another's revocations only after the credential cache's age. PostgreSQL: a
    session-level advisory lock on a connection held open; SQLite: an exclusive ``flock``
    on ``<file>.lock``. Both end with the process, however it ends.

    Raises
    ------
    DatabaseInUse
        When another process holds it.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            yield
            return
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{parsed.database}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise DatabaseInUse(f"another coordinator serves {parsed.database}") from exc
            yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _WRITER_KEY})
            if not got.scalar():
                raise DatabaseInUse("another coordinator serves this database")
            yield
    finally:
        engine.dispose()


_WRITER_KEY = 0x636F686F7274  # "cohort"
