"""`cohort demo` end to end: real gRPC, three hospitals, secure aggregation, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import majority_accuracy
from sklearn.datasets import load_breast_cancer


@pytest.mark.slow
def test_demo_beats_the_majority_baseline_by_a_wide_margin(tmp_path):
    labels = load_breast_cancer().target

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "demo",
            "--rounds",
            "3",
            "--key-bits",
            "1024",
            "--json",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["state"] == "completed" and figures["secure"] is True
    assert figures["federated_accuracy"] > majority_accuracy(labels) + 0.2
    assert figures["federated_accuracy"] >= figures["centralised_accuracy"] - 0.05
    assert set(figures["local_only_accuracy"]) == {"hospital-a", "hospital-b", "hospital-c"}
    report = Path(figures["report_path"])
    assert report.exists() and "<html" in report.read_text().lower()
    assert np.isfinite(figures["federated_roc_auc"])
    # The closing commands, each whole on its own line (no path broken by wrapping).
    lines = [line.strip() for line in result.stderr.splitlines()]
    db = f"sqlite:///{report.parent.resolve() / 'cohort.db'}"
    assert f"cohort audit verify {figures['run_id']} --db {db}" in lines
    assert any(
        line.startswith(f"cohort audit report {figures['run_id']} --db {db} --format pdf")
        for line in lines
    )
