"""Smoke test of bench/load.py: a few sites, two rounds, nothing lost (real gRPC, loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return done.returncode, done.stdout, json.loads(lines[-1])


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_five_sites_two_rounds_lose_nothing(request: pytest.FixtureRequest, backend: str) -> None:
    extra = []
    if backend == "postgresql":
        extra = ["--postgres-url", request.getfixturevalue("postgres_server")]

    code, out, summary = run_bench(
        "--clients", "5", "--rounds", "2", "--db", backend, "--payload-floats", "64",
        "--poll-seconds", "1", "--timeout", "90", *extra,
    )  # fmt: skip

    figures = summary["backends"][backend]
    assert code == 0, out
    assert summary["ok"] and summary["lost_updates"] == 0
    assert figures["run_state"] == "completed"
    assert figures["rounds_closed"] == 2
    assert figures["updates_sent"] == figures["updates_accepted"] == 10
    assert figures["updates_counted"] == figures["coordinator_update_accepted_rows"] == 10
    assert figures["round_latency_s"]["n"] == 2
    assert "latency, seconds" in out
    (row,) = summary["per_site_count"]
    assert row["clients"] == 5 and row["backend"] == backend and row["lost_updates"] == 0
    assert row["coordinator_cpu_ms_per_update"] > 0 and row["commits_per_update"] > 0
    assert row["peak_os_threads"] >= figures["coordinator_peak_threads"]


def test_unreachable_postgresql_is_skipped_with_the_reason() -> None:
    code, out, summary = run_bench(
        "--clients", "2", "--db", "postgresql",
        "--postgres-url", "postgresql+psycopg://postgres@127.0.0.1:1/postgres",
    )  # fmt: skip

    assert code == 0
    assert summary["skipped"] == ["postgresql"]
    assert "not reachable" in summary["backends"]["postgresql"]["skipped"]
    assert "skipped" in out
