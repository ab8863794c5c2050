"""Plaintext aggregation: Flower's strategies on the sites' deltas, and which mode runs which.

The encrypted sum of a secure run is :func:`crypto.aggregate.add_encrypted`, called by the
Paillier scheme's aggregate face (coordinator/schemes.py) when the scheduler closes a round;
a secure run's FedAvgM/FedAdam step happens at each site
(client/schemes/paillier_model.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from protos.wire import NDArrays

PLAINTEXT_STRATEGIES = ("fedavg", "median", "krum", "trimmed_mean")
SECURE_STRATEGIES = ("fedavg", "fedavgm", "fedadam")
STRATEGIES = tuple(dict.fromkeys(PLAINTEXT_STRATEGIES + SECURE_STRATEGIES))


def check_strategy(strategy: str, secure: bool) -> None:
    """Refuse a strategy the chosen mode cannot run, with the reason.

    Robust strategies (median, Krum, trimmed mean) compare individual updates, which
    only exist in plaintext: under Paillier the coordinator sees one encrypted sum.
    Server optimisers (FedAvgM, FedAdam) run on the key-holding sites in secure mode.
    """
    allowed = SECURE_STRATEGIES if secure else PLAINTEXT_STRATEGIES
    if strategy not in allowed:
        mode = "secure (paillier)" if secure else "plaintext"
        why = (
            " — it needs every site's update in plaintext, which the coordinator never sees "
            "in secure mode"
            if secure and strategy in PLAINTEXT_STRATEGIES
            else ""
        )
        raise ValueError(
            f"strategy {strategy!r} is not available for {mode} runs{why}; "
            f"choose one of {', '.join(allowed)}"
        )


def aggregate_deltas(
    strategy: str, results: Sequence[tuple[NDArrays, int]], *, trim: float = 0.2
) -> NDArrays:
    """Combine the sites' updates ``Δ = w_local − w_global`` with one of Flower's functions."""
    if not results:
        raise ValueError("no updates to aggregate")
    as_lists = [(list(deltas), n) for deltas, n in results]
    if strategy == "fedavg":
        out = aggregate(as_lists)
    elif strategy == "median":
        out = aggregate_median(as_lists)
    elif strategy == "krum":
        # Tolerate up to a third of the sites being malicious, as in Blanchard et al.
        num_malicious = max(0, (len(results) - 3) // 3)
        out = aggregate_krum(as_lists, num_malicious=num_malicious, to_keep=0)
    elif strategy == "trimmed_mean":
        out = aggregate_trimmed_avg(as_lists, proportiontocut=trim)
    else:
        raise ValueError(f"unknown plaintext strategy {strategy!r}")
    return [np.asarray(a, dtype=np.float32) for a in out]


def apply_deltas(weights: NDArrays, deltas: NDArrays, server_lr: float = 1.0) -> NDArrays:
    """``w + η·Δ`` tensor by tensor, kept in each weight's dtype."""
    if len(weights) != len(deltas):
        raise ValueError(f"{len(deltas)} deltas for {len(weights)} weights")
    return [
        (w.astype(np.float64) + server_lr * d.astype(np.float64)).astype(w.dtype)
        for w, d in zip(weights, deltas, strict=True)
    ]
