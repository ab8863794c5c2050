"""protos/serde.py: the one mapping of schemes, run states, configs and metrics to the protos."""

from __future__ import annotations

import json

import pytest
from phe import paillier

from client.policy import TaskRefused
from client.sovereign import admit, scheme_of
from protos import common_pb2, federation_pb2, serde
from protos.serde import SchemeName
from tests.hostile_round import Round, SiteUnderTest


@pytest.mark.parametrize("name", list(SchemeName))
def test_every_scheme_name_goes_to_the_proto_and_back(name):
    assert serde.scheme_from_proto(serde.scheme_to_proto(name)) is name


def test_an_unset_scheme_is_no_encryption_and_an_unknown_one_is_refused():
    assert serde.scheme_from_proto(common_pb2.SECURE_SCHEME_UNSPECIFIED) is SchemeName.NONE
    with pytest.raises(ValueError, match="unknown secure scheme 7"):
        serde.scheme_from_proto(7)
    with pytest.raises(ValueError, match="unknown secure scheme 'rot13'"):
        serde.scheme_to_proto("rot13")


@pytest.mark.parametrize("state", ["pending", "running", "completed", "failed", "stopped"])
def test_run_states_go_to_the_proto_and_back(state):
    assert serde.run_state_name(serde.run_state_to_proto(state)) == state


@pytest.mark.parametrize(
    ("text", "words"), [("[1, 2]", "must be a JSON object"), ("{", "is not JSON")]
)
def test_a_config_that_is_not_a_json_object_names_the_field(text, words):
    assert serde.config_from_json("") == {}
    with pytest.raises(ValueError, match=f"config_json {words}"):
        serde.config_from_json(text)


def test_a_hostile_coordinator_naming_an_unknown_scheme_is_refused_not_read_as_plaintext(
    tmp_path,
):
    public, _ = paillier.generate_paillier_keypair(n_length=512)
    round_ = Round(public, "ABC")
    site = SiteUnderTest(tmp_path, "A", round_)
    task = round_.task()
    task.kind = federation_pb2.TASK_KIND_KEYGEN  # builds no model: the scheme is what is read
    task.secure = 7  # type: ignore[assignment]
    task.config_json = json.dumps({"model": "m"})
    with pytest.raises(TaskRefused, match="unknown secure scheme 7") as refused:
        admit(site, task)
    assert refused.value.code == "policy"
    task.secure = common_pb2.SECURE_SCHEME_PAILLIER
    assert scheme_of(task) is SchemeName.PAILLIER
