"""Hostile SubmitAudit summaries.

See tests/fuzzing.py for what every property asserts.
"""

from __future__ import annotations

import json

import grpc
import pytest
from fuzzing import (
    FUZZ,
    TIMEOUT,
    any_text,
    ids,
    json_values,
    refused,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import federation_pb2

# -- SubmitAudit --------------------------------------------------------------------------

VALID_SUMMARY = {
    "site": "site-a",
    "kind": "tabular",
    "feature_names": ["age", "bmi"],
    "class_names": ["benign", "malignant"],
    "mean_abs": [0.1, 0.2],
    "mean_signed": {"benign": [0.05, -0.1], "malignant": [-0.05, 0.1]},
    "row_count": 40,
    "base_value": [0.6, 0.4],
    "noise_scale": 0.0,
    "explainer": "kernel",
}


@st.composite
def mutated_summaries(draw) -> str:
    summary = dict(VALID_SUMMARY)
    for key in draw(st.sets(st.sampled_from(sorted(summary)), min_size=1, max_size=3)):
        if draw(st.booleans()):
            summary[key] = draw(json_values)
        else:
            del summary[key]
    if draw(st.booleans()):
        summary[draw(st.text(max_size=8))] = draw(json_values)
    return json.dumps(summary)


audit_texts = st.one_of(
    any_text,
    json_values.map(json.dumps),
    mutated_summaries(),
    st.just(json.dumps(VALID_SUMMARY)),
)


@settings(FUZZ, max_examples=50)
@given(data=st.data(), summary_json=audit_texts)
def test_random_audit_submissions_are_refused_and_store_nothing(plain, data, summary_json):
    task_id = data.draw(st.one_of(st.just(plain.task.task_id), ids), label="task_id")
    run_id = data.draw(st.one_of(st.just(plain.task.run_id), ids), label="run_id")
    before = plain.server.footprint()

    refused(
        lambda: plain.server.federation.SubmitAudit(
            federation_pb2.AuditSubmission(
                task_id=task_id, run_id=run_id, summary_json=summary_json
            ),
            metadata=plain.site.metadata,
            timeout=TIMEOUT,
        )
    )

    assert plain.server.footprint() == before
    plain.server.assert_serving(plain.site)


@pytest.mark.parametrize(
    "summary_json",
    [
        "[" * 100_000 + "]" * 100_000,
        json.dumps({**VALID_SUMMARY, "mean_abs": [10**400, 0.1]}),
        json.dumps({**VALID_SUMMARY, "noise_scale": 10**400}),
    ],
    ids=["nested-100000-deep", "mean-abs-past-float-range", "noise-scale-past-float-range"],
)
def test_audit_summary_that_overflows_or_nests_deeply_is_invalid_argument(plain, summary_json):
    code = refused(
        lambda: plain.server.federation.SubmitAudit(
            federation_pb2.AuditSubmission(
                task_id=plain.task.task_id, run_id=plain.task.run_id, summary_json=summary_json
            ),
            metadata=plain.site.metadata,
            timeout=TIMEOUT,
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
