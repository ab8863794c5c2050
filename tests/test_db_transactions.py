"""Database.transaction(): reads end without a COMMIT, writes commit before the block returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event, select

from coordinator.db import Database
from coordinator.schema import Institution


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


def _commits(db: Database) -> list[int]:
    count = [0]
    event.listen(db.engine, "commit", lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_a_read_commits_nothing_and_its_objects_stay_usable(db: Database) -> None:
    with db.transaction() as session:
        session.add(Institution(name="hospital-a"))
    commits = _commits(db)

    with db.transaction() as session:
        row = session.scalars(select(Institution)).one()

    assert commits[0] == 0
    assert row.name == "hospital-a"  # detached, not expired


def test_a_write_is_committed_and_visible_to_another_connection(db: Database) -> None:
    commits = _commits(db)

    with db.transaction() as session:
        session.add(Institution(name="bank-b"))
    other = Database(str(db.engine.url.render_as_string(hide_password=False)))
    try:
        with other.transaction() as session:
            names = session.scalars(select(Institution.name)).all()
    finally:
        other.close()

    assert commits[0] == 1
    assert names == ["bank-b"]


def test_a_failed_block_stores_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        session.add(Institution(name="never"))
        session.flush()
        raise RuntimeError("boom")

    with db.transaction() as session:
        assert session.scalars(select(Institution)).all() == []
