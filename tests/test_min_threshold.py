"""A site may refuse single-key secure runs, or runs below its threshold (--min-threshold)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from phe import paillier
from typer.testing import CliRunner

from cli.main import app
from client.policy import TaskRefused, policy_from_options
from client.sovereign import admit
from protos import federation_pb2
from tests.hostile_round import Round, SiteUnderTest


@pytest.fixture(scope="module")
def round_() -> Round:
    public, _ = paillier.generate_paillier_keypair(n_length=512)
    return Round(public, "ABC")


def keygen(round_: Round, threshold: int) -> federation_pb2.Task:
    task = round_.task()
    task.kind = federation_pb2.TASK_KIND_KEYGEN
    task.threshold = threshold
    task.config_json = json.dumps({"model": "m"})  # as pinned by SiteUnderTest
    return task


@pytest.mark.parametrize(("threshold", "words"), [(0, "is single-key"), (2, "is 2-of-n")])
def test_a_run_below_the_sites_threshold_is_refused(tmp_path, round_, threshold, words):
    site = SiteUnderTest(tmp_path, "A", round_)
    site.config.policy = replace(site.config.policy, min_threshold=3)
    with pytest.raises(TaskRefused, match=words) as refused:
        admit(site, keygen(round_, threshold))
    assert refused.value.code == "policy" and "--min-threshold" in str(refused.value)


def test_a_run_at_the_sites_threshold_is_taken(tmp_path, round_):
    site = SiteUnderTest(tmp_path, "A", round_)
    site.config.policy = replace(site.config.policy, min_threshold=2)
    admit(site, keygen(round_, 2))
    site.config.policy = replace(site.config.policy, min_threshold=0)
    admit(site, keygen(round_, 0))  # the default takes single-key runs


@pytest.mark.parametrize("bad", [1, -1])
def test_a_threshold_of_one_is_not_a_policy(bad):
    with pytest.raises(ValueError, match="--min-threshold"):
        policy_from_options(min_threshold=bad)


def test_client_policy_reads_the_flag_and_the_environment(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["client", "policy", "--min-threshold", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["min_threshold"] == 3
    out = runner.invoke(app, ["client", "policy", "--json"], env={"COHORT_MIN_THRESHOLD": "2"})
    assert json.loads(out.output)["min_threshold"] == 2
    out = runner.invoke(app, ["client", "policy", "--min-threshold", "1"])
    assert out.exit_code == 2 and "--min-threshold" in out.output
