"""Site-level DP's encrypted update scheme at a site: encode with noise, decode the noisy sum.

The layout (whole-update clipping, 16-bit quantisation, this site's share of distributed
discrete Gaussian noise, offset slots) is crypto/dp_layout.py's: Kairouz, Liu & Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation" (ICML 2021). This module puts it on the wire of a Paillier run:

- :func:`encode_update` clips, quantises and noises the update here, then packs,
  encrypts and proves it (crypto/plaintext_proof.py). The proof is a proof of knowledge of
  each ciphertext's opening (plaintext and randomness), not a range proof: it covers the
  DP layout's plaintexts exactly as it covers the codec's, and neither layout's slot
  ranges are proven to the coordinator. A site that sends out-of-range slots is caught
  only when the decoded sum passes the largest honest value (``decode_sum``'s check).
- Every site's weight is 1: site-level DP bounds what the sum reveals about one site,
  so sites are averaged, not weighted by example counts (a weight would reveal the
  count and scale the sensitivity). The run's ``weight_cap`` does not apply.
- :func:`check_contributions` runs before any decryption (and before a threshold run's
  partial decryption is published): a sum of fewer sites than the quorum the noise is
  calibrated for carries too little noise and is never decrypted here.
- :func:`decode_aggregate` decodes the decrypted noisy sum and divides by the number of
  contributing sites.

The layout is derived once per run from the plan, the run's rounds, the model's size and
the key's, and pinned in the site's ledger with the run's first charge
(client/dp_site.py): later tasks cannot change the noise by changing the rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import crypto
from client.dp import PrivacyPlan
from client.policy import TaskRefused
from crypto.dp_layout import SITE_BITS, SiteNoise, calibrate
from protos import federation_pb2


def layout_for(plan: PrivacyPlan, rounds: int, dimension: int, key_bits: int) -> SiteNoise:
    """The run's layout from its plan, as every site and the coordinator derive it.

    Raises
    ------
    TaskRefused
        ``policy`` when no layout fits (too little noise headroom for the key, a plan
        without ε or quorum).
    """
    if plan.mode != "site" or not plan.epsilon or plan.noise_multiplier or plan.quorum < 1:
        raise TaskRefused("policy", f"not a site-level DP plan with an epsilon: {plan}")
    if rounds < 1 or dimension < 1:
        raise TaskRefused("error", "site-level DP needs rounds and a non-empty model")
    try:
        return calibrate(
            plan.epsilon,
            plan.delta,
            rounds,
            clip=plan.max_grad_norm,
            bits=SITE_BITS,
            dimension=dimension,
            quorum=plan.quorum,
            max_sites=plan.max_sites,
            key_bits=key_bits,
        )
    except ValueError as exc:
        raise TaskRefused("policy", f"site-level DP has no layout for this run: {exc}") from exc


def run_layout(
    guard: Any, task: federation_pb2.Task, config: dict[str, Any], dimension: int, key_bits: int
) -> SiteNoise | None:
    """The layout to decode ``task``'s aggregates with; None for a run without site-level DP.

    ``guard`` is the agent's client/dp_site.py PrivacyGuard. The layout this site pinned
    in its ledger when it first trained in the run wins over
    whatever the task says now; a site that never trained derives it from the task.

    Raises
    ------
    TaskRefused
        ``pin`` when the pinned layout is for another model size or key.
    """
    pinned = guard.pinned_layout(task.run_id)
    if pinned is not None:
        if (pinned.dimension, pinned.key_bits) != (dimension, key_bits):
            raise TaskRefused(
                "pin",
                f"run {task.run_id}: the site-level DP layout this site pinned is for "
                f"{pinned.dimension} values and {pinned.key_bits}-bit keys, not "
                f"{dimension} and {key_bits}",
            )
        return pinned
    plan = PrivacyPlan.from_proto(task.privacy) if task.HasField("privacy") else None
    if plan is None or plan.mode != "site":
        return None
    try:
        rounds = int(config.get("rounds", 0))
    except (TypeError, ValueError) as exc:
        raise TaskRefused("error", f"the run's rounds do not read: {exc}") from exc
    return layout_for(plan, rounds, dimension, key_bits)


def check_unit_weights(aggregate: federation_pb2.AggregateRef) -> int:
    """The number of sites in an aggregate of a DP run, refused unless each weighs 1.

    A DP run averages sites (they withhold their counts); a breached coordinator that
    accepted a colluding site's heavier weight would let it outweigh the others' noised
    updates, so every site checks it too, not only the coordinator's intake.

    Raises
    ------
    TaskRefused
        ``verify``, naming the round.
    """
    sites = len(aggregate.contributions)
    if (
        any(int(c.weight) != 1 for c in aggregate.contributions)
        or int(aggregate.total_weight) != sites
    ):
        raise TaskRefused(
            "verify",
            f"the aggregate of round {aggregate.round} weights its sites; a differentially "
            "private run gives every site weight 1",
        )
    return sites


def check_contributions(aggregate: federation_pb2.AggregateRef, layout: SiteNoise) -> int:
    """The number of sites in a (manifest-checked) aggregate, refused below the quorum.

    Raises
    ------
    TaskRefused
        ``verify``: fewer sites than the noise is calibrated for, more than the slots
        hold, or a weight other than 1 (this run averages sites).
    """
    sites = check_unit_weights(aggregate)
    if not layout.quorum <= sites <= layout.max_sites:
        raise TaskRefused(
            "verify",
            f"the aggregate of round {aggregate.round} adds {sites} sites; the run's noise is "
            f"calibrated for at least {layout.quorum} (at most {layout.max_sites} fit): "
            "this site does not decrypt it",
        )
    return sites


def encode_update(
    delta: np.ndarray,
    layout: SiteNoise,
    public_key: Any,
    *,
    run_id: str,
    round_number: int,
    site: str,
    pool: crypto.RandomnessPool | None = None,
) -> tuple[bytes, bytes]:
    """The clipped, noised update, encrypted, with this site's proof of plaintext knowledge.

    The noise is drawn from a generator seeded by the operating system's entropy, never
    from the agent's (possibly seeded) generator. Returns the wire payload and the proof.

    Raises
    ------
    TaskRefused
        ``error`` when the update does not fit the layout (its size, or a noise draw past
        the tail bound: the update is then not sent, never truncated).
    """
    from crypto import plaintext_proof

    if delta.size != layout.dimension:
        raise TaskRefused(
            "error", f"an update of {delta.size} values does not fit a layout of {layout.dimension}"
        )
    try:
        plaintexts = layout.encode(delta, np.random.default_rng())
    except OverflowError as exc:
        raise TaskRefused("error", str(exc)) from exc
    return plaintext_proof.encrypt_proven(
        public_key,
        plaintexts,
        pool=pool,
        run_id=run_id,
        round_number=round_number,
        site=site,
    )


def decode_aggregate(
    layout: SiteNoise,
    aggregate: federation_pb2.AggregateRef,
    payload: bytes,
    private_key: Any,
    sums: list[int] | None,
) -> np.ndarray:
    """The mean update over the contributing sites, with the noise of every one of them.

    ``sums``: a threshold run's plaintext sums (from verified partials); otherwise the
    payload is decrypted here with ``private_key``.

    Raises
    ------
    TaskRefused
        From :func:`check_contributions`.
    ValueError, OverflowError
        A sum that does not decode in the layout (a site sent something else).
    """
    sites = check_contributions(aggregate, layout)
    if sums is None:
        width = crypto.ciphertext_width(private_key.public_key)
        sums = crypto.decrypt_packed(private_key, crypto.ciphertexts_from_bytes(payload, width))
    if len(sums) != layout.num_plaintexts:
        raise ValueError(f"{len(sums)} sums; the layout has {layout.num_plaintexts}")
    return layout.decode_sum(list(sums), sites) / sites
