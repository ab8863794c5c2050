"""`cohort simulate`: partitions, flag checks, small runs on a local Ray against a coordinator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.main import app
from cli.simulate import SimulateSettings, run_simulation
from client.simulation import partition_rows

runner = CliRunner()


def test_dirichlet_partitions_cover_every_row_once_with_skewed_labels() -> None:
    labels = np.random.default_rng(0).integers(0, 2, 2000)
    parts = partition_rows(labels, 40, "dirichlet", alpha=0.3, seed=1)
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(2000))
    assert min(len(p) for p in parts) == 50
    shares = np.array([labels[p].mean() for p in parts])
    assert shares.std() > 0.2  # label skew, not an IID split
    again = partition_rows(labels, 40, "dirichlet", alpha=0.3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_label_partitions_hold_at_most_the_labels_asked_for() -> None:
    labels = np.random.default_rng(0).integers(0, 5, 1000)
    parts = partition_rows(labels, 20, "label", labels_per_site=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert sum(len(p) for p in parts) == 1000


def test_more_sites_than_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="only 10 rows"):
        partition_rows(np.zeros(10, int), 11, "iid")
    with pytest.raises(ValueError, match="unknown partitioning"):
        partition_rows(np.zeros(10, int), 2, "round-robin")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sites", "1"], "--sites must be at least 2"),
        (["--partition", "shards"], "--partition must be one of"),
        (["--alpha", "0"], "--alpha must be a positive number"),
        (["--alpha", "nan"], "--alpha must be a positive number"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--key-bits", "512"], "--key-bits must be"),
        (["--dataset", "/no/such.csv"], "no file at /no/such.csv"),
        (["--lr", "-1"], "--lr must be a positive number"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *flags])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_a_split_the_data_cannot_make_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["simulate", "--dataset", "iris", "--sites", "500", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "500 sites but only 120 rows" in result.output


@pytest.mark.slow
def test_ten_sites_two_rounds_on_ray_give_a_model(tmp_path: Path) -> None:
    settings = SimulateSettings(sites=10, rounds=2, data_dir=tmp_path, seed=3)
    result = run_simulation(settings, Console(quiet=True))
    assert result.state == "completed"
    assert [r["updates"] for r in result.rounds] == [10, 10]
    assert 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.roc_auc)
    assert result.events["trained"] == 20 and result.events["joined"] == 10
    # Every site is a real node of the coordinator's database, with its own identity.
    assert len(list((tmp_path).glob("simulate-*/sites/site-*"))) == 10


@pytest.mark.slow
def test_secure_simulation_decrypts_at_a_site_and_writes_the_report(tmp_path: Path) -> None:
    settings = SimulateSettings(
        sites=3,
        rounds=1,
        dataset="breast_cancer",
        secure=True,
        key_bits=1024,
        data_dir=tmp_path,
        report=True,
    )
    result = run_simulation(settings, Console(quiet=True))
    assert result.state == "completed"
    assert result.events.get("keygen") == 1 and result.events.get("audited") == 3
    assert result.accuracy > 0.5
    assert result.report_path is not None and Path(result.report_path).read_bytes()
