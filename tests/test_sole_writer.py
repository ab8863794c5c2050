"""One coordinator process per database: a second `cohort coordinator serve` is refused.

The coordinator keeps node credentials and the audit log's head in memory (issue 14); a
second process on the same database would fail appends and honour another's revocations
only after the credential cache's age (tests/test_coordinator_caches.py).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from coordinator.db import DatabaseInUse, sole_writer


def test_a_database_is_held_by_one_writer_at_a_time(database_url):
    with sole_writer(database_url), pytest.raises(DatabaseInUse), sole_writer(database_url):
        pass
    with sole_writer(database_url):  # released when the first holder ended
        pass


def test_a_second_coordinator_on_the_same_database_exits_2(database_url, tmp_path):
    with sole_writer(database_url):
        result = CliRunner().invoke(
            app,
            ["coordinator", "serve", "--insecure", "--port", "0", "--db", database_url,
             "--data-dir", str(tmp_path / "second")],
        )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "another coordinator serves" in result.output
    assert not (tmp_path / "second").exists()
