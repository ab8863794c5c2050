"""Persistence on SQLite and PostgreSQL: migrations, the audit chain, blobs, restart."""

from __future__ import annotations

import json

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from coordinator import auditlog
from coordinator.blobs import BlobNotFound, BlobStore
from coordinator.db import MIGRATIONS, Database, upgrade
from coordinator.schema import AuditEvent, Base, Run, RunState

HEAD = "0005"


@pytest.fixture
def database(database_url):
    db = Database(database_url)
    db.migrate()
    yield db
    db.close()


def schema_diff(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def version_of(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_migration_builds_the_schema_the_models_describe(database):
    assert schema_diff(database) == []
    assert "alembic_version" in inspect(database.engine).get_table_names()


def test_the_migrations_one_by_one_build_the_schema_a_fresh_database_gets(database_url):
    # A fresh database is built from the models in one step (db.migrate); the migrations
    # replayed one by one must build exactly that schema, or older databases would differ.
    db = Database(database_url)
    try:
        upgrade(db.engine)
        assert schema_diff(db) == []
        assert version_of(db) == HEAD
    finally:
        db.close()


def _columns(engine) -> dict[str, list[tuple[str, str, bool, str]]]:  # type: ignore[no-untyped-def]
    found = inspect(engine)
    return {
        table: [
            (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
            for c in found.get_columns(table)
        ]
        for table in sorted(found.get_table_names())
    }


def test_fresh_and_migrated_databases_have_the_same_columns_and_server_defaults(database_url):
    # compare_metadata does not compare server defaults: a column a migration added with one
    # (to fill existing rows) must have it in a fresh database too, or a later migration's
    # INSERT relying on it would work on old databases and fail on new ones.
    db = Database(database_url)
    try:
        upgrade(db.engine)
        migrated = _columns(db.engine)
        with db.engine.begin() as connection:
            Base.metadata.drop_all(connection)
            connection.exec_driver_sql("DROP TABLE alembic_version")
        db.migrate()
        assert _columns(db.engine) == migrated
    finally:
        db.close()


def test_a_fresh_database_is_stamped_at_head_and_later_migrations_apply(database_url):
    db = Database(database_url)
    try:
        db.migrate()
        assert version_of(db) == HEAD
        db.migrate()  # stamped: nothing to replay
        assert schema_diff(db) == []
    finally:
        db.close()


def test_an_older_database_is_upgraded_by_its_migrations(database_url):
    db = Database(database_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        db.migrate()
        assert version_of(db) == HEAD
        assert schema_diff(db) == []
    finally:
        db.close()


def test_migrating_twice_is_a_no_op(database):
    database.migrate()

    with database.transaction() as session:
        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD


def test_run_round_trips(database):
    with database.transaction() as session:
        session.add(
            Run(
                id="r1",
                model="tabular_mlp",
                rounds=3,
                min_clients=2,
                round_deadline=60.0,
                config={"encoding": {"bits": 8}},
            )
        )

    with database.transaction() as session:
        run = session.get(Run, "r1")
        assert run is not None
        assert run.state == RunState.PENDING
        assert run.config == {"encoding": {"bits": 8}}


def append_rows(database, count: int = 5) -> None:
    with database.transaction() as session:
        for i in range(count):
            auditlog.append(session, "test.event", run_id="r", actor="me", details={"i": i})


def verdict(database) -> auditlog.ChainVerdict:
    with database.transaction() as session:
        return auditlog.verify_chain(auditlog.all_rows(session))


def test_untouched_chain_verifies(database):
    append_rows(database)

    result = verdict(database)

    assert result.ok
    assert result.rows == 5


def test_edited_row_is_named(database):
    append_rows(database)
    with database.transaction() as session:
        session.execute(
            text("UPDATE audit_events SET details = :d WHERE seq = 3"), {"d": json.dumps({"i": 99})}
        )

    result = verdict(database)

    assert not result.ok
    assert result.first_bad_seq == 3
    assert "content" in (result.reason or "")


def test_deleted_row_is_named(database):
    append_rows(database)
    with database.transaction() as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 2"))

    result = verdict(database)

    assert not result.ok
    assert result.first_bad_seq == 3


def test_reordered_rows_are_named(database):
    append_rows(database)
    with database.transaction() as session:
        # Swap rows 2 and 4 whole (keeping seq), through a placeholder for the unique hash.
        rows = {r.seq: r for r in session.scalars(select(AuditEvent))}
        fields = ("time", "kind", "actor", "details", "prev_hash", "hash")
        two = {f: getattr(rows[2], f) for f in fields}
        four = {f: getattr(rows[4], f) for f in fields}
        rows[4].hash = "placeholder"
        session.flush()
        for f in fields:
            setattr(rows[2], f, four[f])
        session.flush()
        for f in fields:
            setattr(rows[4], f, two[f])

    result = verdict(database)

    assert not result.ok
    assert result.first_bad_seq == 2


def test_truncated_tail_keeps_a_valid_prefix_but_changes_the_head(database):
    append_rows(database)
    head = verdict(database).head_hash
    with database.transaction() as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 5"))

    result = verdict(database)

    assert result.ok and result.rows == 4
    assert result.head_hash != head  # why reports print the head: compare it out of band


def test_blob_store_is_content_addressed(tmp_path):
    store = BlobStore(tmp_path)

    digest = store.put(b"hello")

    assert store.get(digest) == b"hello"
    assert store.put(b"hello") == digest
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    with pytest.raises(BlobNotFound):
        store.get("../../etc/passwd")
