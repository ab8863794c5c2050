"""A site downloads an aggregate's contributions side by side, and checks them as before."""

from __future__ import annotations

import hashlib
import threading

import pytest

from client.policy import TaskRefused
from client.verify import Entry, fetch_all, verify_aggregate

N_SQUARE = 10_007**2
WIDTH = 4


def ciphertexts(*values: int) -> bytes:
    return b"".join(v.to_bytes(WIDTH, "big") for v in values)


def entry(site: str, payload: bytes) -> Entry:
    return Entry(site, site, hashlib.sha256(payload).hexdigest(), 1, len(payload), b"")


UPDATES = {"a": ciphertexts(2, 3), "b": ciphertexts(5, 7), "c": ciphertexts(11, 13)}
AGGREGATE = ciphertexts(2 * 5 * 11, 3 * 7 * 13)


def test_contributions_are_fetched_at_the_same_time_and_kept_in_order():
    entries = [entry(s, p) for s, p in UPDATES.items()]
    by_sha = {e.payload_sha256: UPDATES[e.site] for e in entries}
    # Each download waits until all three have started: one after another never gets there.
    all_started = threading.Barrier(len(entries), timeout=10)

    def fetch(sha: str) -> bytes:
        all_started.wait()
        return by_sha[sha]

    assert fetch_all(entries, fetch) == list(UPDATES.values())
    assert verify_aggregate(
        entries, AGGREGATE, lambda sha: by_sha[sha], width=WIDTH, n_square=N_SQUARE
    ) == list(UPDATES.values())


def test_an_update_swapped_by_the_coordinator_still_names_its_site():
    entries = [entry(s, p) for s, p in UPDATES.items()]
    served = {e.payload_sha256: UPDATES[e.site] for e in entries}
    served[entries[1].payload_sha256] = ciphertexts(1, 1)

    with pytest.raises(TaskRefused, match="b's update is not the one it signed"):
        verify_aggregate(entries, AGGREGATE, served.__getitem__, width=WIDTH, n_square=N_SQUARE)


def test_a_failed_download_fails_the_check_after_the_others_end():
    entries = [entry(s, p) for s, p in UPDATES.items()]
    by_sha = {e.payload_sha256: UPDATES[e.site] for e in entries}
    ended: list[str] = []

    def fetch(sha: str) -> bytes:
        if sha == entries[0].payload_sha256:
            raise ConnectionError("the coordinator went away")
        ended.append(sha)
        return by_sha[sha]

    with pytest.raises(ConnectionError):
        verify_aggregate(entries, AGGREGATE, fetch, width=WIDTH, n_square=N_SQUARE)
    assert sorted(ended) == sorted(e.payload_sha256 for e in entries[1:])
