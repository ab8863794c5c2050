"""Threshold custody at a site: deal a t-of-n key, open this site's share, decrypt with t partials.

The custodian deals (Shoup / Damgård–Jurik with a trusted dealer, :mod:`crypto.threshold`),
seals each share with the run's group key to its holder's pinned X25519 key, signs the
public parameters (:class:`crypto.threshold_custody.ThresholdStatement`) and erases the key.
Each site opens only its own share, after checking the statement against its pins and the
share against its verification key. To decrypt a round's aggregate a site publishes its
partials with a batched proof of correct decryption, sealed under the group key and signed
by its identity; it combines the first ``t`` partials that open, carry their holder's
signature and pass the proof, and names every site whose partial does not.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import crypto
from client import keys
from client.keys import Recipient
from client.policy import TaskRefused
from crypto import identity
from crypto import threshold as tp
from crypto import threshold_custody as custody
from protos import federation_pb2

if TYPE_CHECKING:
    from client.agent import SiteAgent

log = logging.getLogger(__name__)
SPREAD_WAIT_SECONDS = 2.0
"""Least time a site waits for the others' blocks before it decrypts the whole vector."""
POLL_SECONDS = 2.0
"""Longest single wait for partials at the coordinator (it answers as soon as one arrives)."""


@dataclass(frozen=True)
class ThresholdKey:
    """What a share holder keeps for a run: public parameters, its share, the group key."""

    verification_keys: tp.VerificationKeys
    share: tp.KeyShare
    group_key: bytes
    statement: custody.ThresholdStatement

    @property
    def public_key(self) -> Any:
        return self.verification_keys.public_key


def deal(
    agent: SiteAgent, task: federation_pb2.Task, recipients: list[Recipient], refused: list[str]
) -> federation_pb2.KeyBundle:
    """Custodian: make a t-of-N key for the task's run, seal the shares, sign, erase.

    Erasure: this function keeps no reference to ``p``, ``q``, ``d``, the Shamir
    polynomial or any share once it returns (the custodian reopens its own share from the
    coordinator like every other holder) and runs the garbage collector. CPython gives no
    way to overwrite an ``int``'s memory, so the numbers may survive in freed heap pages
    until reused (or in swap and core dumps); the signed erasure statement says exactly
    that (:data:`crypto.threshold_custody.ERASURE`).

    Raises
    ------
    TaskRefused
        ``policy`` when fewer than ``t`` trusted sites can hold a share, or the site's
        policy refuses the key size or the number of recipients.
    """
    threshold, parties = int(task.threshold), len(recipients)
    if parties < threshold:
        raise TaskRefused(
            "policy",
            f"run {task.run_id} needs {threshold} share holders; only {parties} trusted "
            f"sites can hold one ({'; '.join(refused) or 'too few sites'})",
        )
    keys.check_enough(task.run_id, recipients, agent.config.policy, refused)
    bits = int(task.encoding.key_bits) or 2048
    if bits < agent.config.policy.min_key_bits:
        raise TaskRefused(
            "policy",
            f"the run asks for a {bits}-bit key; this site deals keys of at least "
            f"{agent.config.policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
        )
    holders = sorted(recipients, key=lambda r: r.site)
    public_key, shares, verification_keys = tp.deal(
        threshold, parties, bits, primes=_primes(agent, bits), insecure_test_size=bits < 2048
    )
    fingerprint = crypto.key_fingerprint(public_key)
    group_key = AESGCM.generate_key(bit_length=256)
    bundle = federation_pb2.KeyBundle(
        task_id=task.task_id,
        run_id=task.run_id,
        public_key=crypto.public_key_to_bytes(public_key),
        key_fingerprint=fingerprint,
        key_bits=public_key.n.bit_length(),
    )
    for recipient, share in zip(holders, shares, strict=True):
        sealed = crypto.seal(
            recipient.x25519_public,
            custody.share_bundle(share, group_key),
            custody.share_context(task.run_id, fingerprint, recipient.site),
        )
        bundle.sealed.add(node_id=recipient.node_id, sealed_private_key=sealed)
    # The erasure: no share, prime or exponent is referenced past this line.
    del shares, share, group_key
    gc.collect()
    vk_bytes = tp.verification_keys_to_bytes(verification_keys)
    statement = custody.ThresholdStatement(
        run_id=task.run_id,
        key_fingerprint=fingerprint,
        custodian=agent.identity.site_name,
        custodian_fingerprint=agent.identity.fingerprint,
        threshold=threshold,
        parties=parties,
        holders=tuple(
            custody.Holder(i, r.site, r.fingerprint) for i, r in enumerate(holders, start=1)
        ),
        verification_keys_sha256=custody.keys_sha256(vk_bytes),
        erasure=custody.ERASURE,
    ).to_bytes()
    bundle.threshold_dealing.verification_keys = vk_bytes
    bundle.threshold_dealing.statement = statement
    bundle.threshold_dealing.signature = agent.identity.sign(statement)
    bundle.statement.CopyFrom(
        keys.deal(
            task.run_id,
            fingerprint,
            agent.identity,
            recipients,
            agent.config.policy,
            refused,
            threshold=threshold,
        )
    )
    return bundle


def _primes(agent: SiteAgent, bits: int) -> list[int] | None:
    """Two safe primes from the site's idle-time pool when it has one of the right size."""
    pool = getattr(agent, "prime_pool", None)
    if pool is None or pool.bits != bits // 2:
        return None
    return pool.take(2)


def open_key(agent: SiteAgent, task: federation_pb2.Task) -> ThresholdKey:
    """Open this site's share of the run's key, once everything about it checks.

    Raises
    ------
    TaskRefused
        ``verify`` when the key statement or the threshold statement is not what a
        pinned, trusted custodian signed for this run and this site, the verification keys
        are not the ones it signed, the sealed share does not open (a coordinator that
        dropped or swapped the seal), or the share does not match its verification key;
        ``policy`` when the key is smaller than the site accepts.
    """
    run = task.run_id
    public_key = crypto.public_key_from_bytes(bytes(task.encoding.public_key))
    if public_key.n.bit_length() < agent.config.policy.min_key_bits - 1:
        raise TaskRefused(
            "policy",
            f"the run's key has {public_key.n.bit_length()} bits; this site accepts keys of "
            f"at least {agent.config.policy.min_key_bits} bits (COHORT_MIN_KEY_BITS)",
        )
    fingerprint = crypto.key_fingerprint(public_key)
    if fingerprint != task.encoding.key_fingerprint:
        raise TaskRefused("verify", "the run's public key does not match its fingerprint")
    dealing = keys.check_statement(
        task, fingerprint, agent.identity, agent.peers, agent.config.policy
    )
    if dealing.threshold != task.threshold:
        raise TaskRefused(
            "verify",
            f"run {run}'s key was dealt {dealing.threshold}-of-n; the task says {task.threshold}",
        )
    raw = bytes(task.threshold_dealing.statement)
    try:
        statement = custody.ThresholdStatement.from_bytes(raw)
        identity.verify(
            _custodian_key(agent, task, dealing), raw, bytes(task.threshold_dealing.signature)
        )
    except ValueError as exc:
        raise TaskRefused("verify", f"run {run}'s threshold statement: {exc}") from exc
    problems = _statement_problems(statement, dealing, fingerprint, agent.identity.fingerprint)
    vk_bytes = bytes(task.threshold_dealing.verification_keys)
    if custody.keys_sha256(vk_bytes) != statement.verification_keys_sha256:
        problems.append("its verification keys are not the ones relayed")
    if problems:
        raise TaskRefused("verify", f"run {run}'s threshold statement {'; '.join(problems)}")
    try:
        verification_keys = tp.verification_keys_from_bytes(vk_bytes)
    except ValueError as exc:
        raise TaskRefused("verify", f"run {run}'s verification keys: {exc}") from exc
    if verification_keys.n != public_key.n or (
        verification_keys.threshold,
        verification_keys.parties,
    ) != (statement.threshold, statement.parties):
        raise TaskRefused("verify", f"run {run}'s verification keys are for another key")
    if not task.sealed_private_key:
        raise TaskRefused("verify", f"no sealed key share for this site in run {run}")
    try:
        share, group_key = custody.open_share_bundle(
            crypto.open_sealed(
                agent.identity.x25519_private,
                bytes(task.sealed_private_key),
                custody.share_context(run, fingerprint, agent.identity.site_name),
            )
        )
    except ValueError as exc:
        raise TaskRefused(
            "verify", f"run {run}'s sealed key share does not open with this site's key: {exc}"
        ) from exc
    mine = statement.holder(agent.identity.site_name)
    assert mine is not None  # _statement_problems checked it
    if share.index != mine.index or not custody.share_matches(share, verification_keys):
        raise TaskRefused(
            "verify",
            f"run {run}'s key share does not match verification key {mine.index}: refusing it",
        )
    return ThresholdKey(verification_keys, share, group_key, statement)


def _custodian_key(
    agent: SiteAgent, task: federation_pb2.Task, dealing: identity.KeyDealing
) -> bytes:
    # keys.check_statement has pinned the custodian's key to this fingerprint.
    if dealing.custodian == agent.identity.site_name:
        return agent.identity.ed25519_public
    for participant in task.participants:
        if participant.site_name == dealing.custodian:
            return bytes(participant.ed25519_public_key)
    raise ValueError(f"custodian {dealing.custodian!r} is not among the run's sites")


def _statement_problems(
    statement: custody.ThresholdStatement,
    dealing: identity.KeyDealing,
    fingerprint: str,
    my_fingerprint: str,
) -> list[str]:
    problems = []
    if (statement.run_id, statement.key_fingerprint) != (dealing.run_id, fingerprint):
        problems.append("names another run or key")
    if (statement.custodian, statement.custodian_fingerprint) != (
        dealing.custodian,
        dealing.custodian_fingerprint,
    ):
        problems.append("names another custodian")
    if statement.threshold != dealing.threshold:
        problems.append(f"says t={statement.threshold}, the key statement t={dealing.threshold}")
    holders = {h.site: h.fingerprint for h in statement.holders}
    if holders != {r.site: r.fingerprint for r in dealing.recipients}:
        problems.append("names other share holders than the key statement")
    mine = [h for h in statement.holders if h.fingerprint == my_fingerprint]
    if len(mine) != 1 or statement.holder(mine[0].site) != mine[0]:
        problems.append("does not name this site once as a share holder")
    return problems


def decrypt(
    agent: SiteAgent,
    task: federation_pb2.Task,
    key: ThresholdKey,
    round_number: int,
    aggregate_sha256: str,
    ciphertexts: list[int],
) -> list[int]:
    """The plaintext sums of one round's aggregate, from ``t`` verified partials per value.

    The work is spread: the vector is cut into N blocks and the site with index ``i``
    decrypts blocks ``i, i−1, …, i−t+1`` (:func:`blocks_of`), so each block gets exactly
    ``t`` partials and each site does ``t/N`` of the vector. When some block still lacks
    ``t`` good partials :data:`SPREAD_WAIT_SECONDS` (or twice this site's own time) after
    this site published (a site gone, a partial refused), the site publishes partials of
    the whole vector too. A site that finds every block covered computes nothing.
    Partials are long-polled from the coordinator; each must open under the group key,
    carry its holder's pinned signature and pass the proof of correct decryption. Every
    partial that fails is reported, naming its site (ReportPartial), and left out.

    Raises
    ------
    TaskRefused
        ``verify`` when some block lacks ``t`` good partials at the task's deadline,
        naming every site whose partial failed and why.
    """
    run, me = task.run_id, agent.identity.site_name
    keys_ = key.verification_keys
    threshold, count = keys_.threshold, len(ciphertexts)
    slices = block_slices(count, keys_.parties)
    have: dict[int, dict[int, int]] = {}  # party → position → partial value
    judged: set[tuple[str, int]] = set()
    bad: dict[str, str] = {}
    deadline = task.deadline_unix or time.time() + 600

    def covered(block: int) -> list[int]:
        span = slices[block]
        return [p for p, got in have.items() if not span or (span[0] in got and span[-1] in got)]

    def complete() -> bool:
        return all(len(covered(block)) >= threshold for block in slices)

    def absorb(wait: float, at_least: int) -> int:
        reply = agent.stub.FetchPartials(
            federation_pb2.PartialFetchRequest(
                run_id=run, round=round_number, wait_seconds=wait, at_least=at_least
            ),
            metadata=agent._metadata(),
            timeout=wait + 60,
        )
        for envelope in reply.partials:
            site, part = envelope.site_name, int(envelope.part)
            if (site, part) in judged or complete():
                continue
            judged.add((site, part))
            try:
                partial, positions = _check_envelope(
                    agent, task, key, envelope, round_number, aggregate_sha256, ciphertexts
                )
            except ValueError as exc:
                bad[site] = str(exc)
                report(agent, run, round_number, site, str(exc))
                continue
            have.setdefault(partial.index, {}).update(zip(positions, partial.values, strict=True))
        return len(reply.partials)

    def mine(part: int) -> float:
        started = time.monotonic()
        positions = positions_of(key.share.index, part, keys_, count)
        label = _label(aggregate_sha256, part)
        own = compute_partial(
            key,
            [ciphertexts[k] for k in positions],
            _context(run, round_number, label),
            agent.config.encrypt_workers,
        )
        publish(agent, run, round_number, aggregate_sha256, own, key, part=part)
        have.setdefault(own.index, {}).update(zip(positions, own.values, strict=True))
        judged.add((me, part))
        return time.monotonic() - started

    seen = absorb(0.0, 0)
    wait_until = time.monotonic()
    if not complete() and (me, 0) not in judged:
        took = mine(0)
        seen += 1
        wait_until = time.monotonic() + max(SPREAD_WAIT_SECONDS, 2 * took)
    while not complete():
        if time.time() >= deadline or agent._closing.is_set():
            named = "; ".join(f"{s}: {r}" for s, r in sorted(bad.items())) or "none refused"
            lacking = [b for b in slices if len(covered(b)) < threshold]
            raise TaskRefused(
                "verify",
                f"round {round_number}: {len(lacking)} of {len(slices)} blocks lack the "
                f"{threshold} verified partials they need at the deadline (refused "
                f"partials: {named})",
            )
        if (me, 1) not in judged and time.monotonic() >= wait_until:
            mine(1)  # a block is still short: this site decrypts the whole vector too
            seen += 1
            continue
        # Long poll for one more partial than already seen (the coordinator wakes on each).
        wait = min(POLL_SECONDS, max(deadline - time.time(), 0.0))
        if (me, 1) not in judged:
            wait = min(wait, max(wait_until - time.monotonic(), 0.0))
        seen = absorb(wait, seen + 1)
    out = [0] * count
    for block, span in slices.items():
        if not span:
            continue
        chosen = covered(block)[:threshold]
        out[span.start : span.stop] = tp.combine(
            {p: [have[p][k] for k in span] for p in chosen},
            keys_,
            [ciphertexts[k] for k in span],
        )
    return out


def block_slices(count: int, parties: int) -> dict[int, range]:
    """Block ``j`` (1..N) of a vector of ``count``: contiguous, sizes differing by at most 1."""
    return {
        j: range((j - 1) * count // parties, j * count // parties) for j in range(1, parties + 1)
    }


def blocks_of(index: int, parties: int, threshold: int) -> list[int]:
    """Blocks party ``index`` decrypts in the spread work: ``i, i−1, …, i−t+1`` (mod N)."""
    return sorted({(index - 1 - k) % parties + 1 for k in range(threshold)})


def positions_of(index: int, part: int, keys_: tp.VerificationKeys, count: int) -> list[int]:
    """Positions a party's partial covers: its blocks (part 0) or the whole vector (1)."""
    if part == 1:
        return list(range(count))
    slices = block_slices(count, keys_.parties)
    return [k for b in blocks_of(index, keys_.parties, keys_.threshold) for k in slices[b]]


def _label(aggregate_sha256: str, part: int) -> str:
    # What the envelope, the signature and the proof are bound to besides run and round.
    return f"{aggregate_sha256}/{'blocks' if part == 0 else 'all'}"


def _context(run: str, round_number: int, label: str) -> bytes:
    return f"cohort/threshold/{run}/{round_number}/{label}".encode()


def compute_partial(
    key: ThresholdKey, ciphertexts: list[int], context: bytes, workers: int | None
) -> tp.PartialDecryption:
    """This site's partials of ``ciphertexts`` and their batched proof."""
    return tp.make_partial_decryption(
        key.share, key.verification_keys, ciphertexts, context, workers=workers
    )


def publish(
    agent: SiteAgent,
    run: str,
    round_number: int,
    aggregate_sha256: str,
    partial: tp.PartialDecryption,
    key: ThresholdKey,
    *,
    part: int = 0,
) -> None:
    """Sign, seal under the group key and submit; a partial already published stands."""
    me = agent.identity.site_name
    label = _label(aggregate_sha256, part)
    data = tp.partial_decryption_to_bytes(partial, key.verification_keys)
    signature = agent.identity.sign(
        custody.partial_statement(
            run_id=run, round_number=round_number, site=me, aggregate_sha256=label, partial=data
        )
    )
    sealed = custody.seal_partial(
        key.group_key,
        run_id=run,
        round_number=round_number,
        site=me,
        aggregate_sha256=label,
        partial=data,
        signature=signature,
    )
    try:
        agent.stub.SubmitPartials(
            federation_pb2.PartialSubmission(
                run_id=run, round=round_number, sealed=sealed, part=part
            ),
            metadata=agent._metadata(),
            timeout=60,
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # e.g. exporting after the run
            raise


def _check_envelope(
    agent: SiteAgent,
    task: federation_pb2.Task,
    key: ThresholdKey,
    envelope: federation_pb2.PartialEnvelope,
    round_number: int,
    aggregate_sha256: str,
    ciphertexts: list[int],
) -> tuple[tp.PartialDecryption, list[int]]:
    """One relayed partial, opened and checked, with the positions it covers.

    Raises
    ------
    ValueError
        Saying why: not a share holder, does not open, unsigned, another index, or the
        proof of correct decryption fails.
    """
    site, part = envelope.site_name, int(envelope.part)
    holder = key.statement.holder(site)
    if holder is None:
        raise ValueError(f"{site[:128]!r} holds no share of this key")
    if part not in (0, 1):
        raise ValueError(f"part {part} is neither its blocks nor the whole vector")
    label = _label(aggregate_sha256, part)
    signature, data = custody.open_partial(
        key.group_key,
        bytes(envelope.sealed),
        run_id=task.run_id,
        round_number=round_number,
        site=site,
        aggregate_sha256=label,
    )
    public = next(
        (bytes(p.ed25519_public_key) for p in task.participants if p.site_name == site), b""
    )
    if not public or identity.fingerprint(public) != holder.fingerprint:
        raise ValueError("its identity is not the one the custodian dealt to")
    identity.verify(
        public,
        custody.partial_statement(
            run_id=task.run_id,
            round_number=round_number,
            site=site,
            aggregate_sha256=label,
            partial=data,
        ),
        signature,
    )
    partial = tp.partial_decryption_from_bytes(data, key.verification_keys)
    if partial.index != holder.index:
        raise ValueError(f"it carries party {partial.index}'s index, not {holder.index}")
    positions = positions_of(holder.index, part, key.verification_keys, len(ciphertexts))
    try:
        tp.verify_partials(
            key.verification_keys,
            [ciphertexts[k] for k in positions],
            [partial],
            _context(task.run_id, round_number, label),
        )
    except tp.InvalidPartialError as exc:
        raise ValueError(f"its proof of correct decryption fails ({exc})") from exc
    return partial, positions


def report(agent: SiteAgent, run: str, round_number: int, site: str, reason: str) -> None:
    """Name a site whose partial failed, for the run's audit log (best effort)."""
    log.warning("run %s round %d: partial from %s refused: %s", run, round_number, site, reason)
    agent.listener(
        "partial_refused", {"run_id": run, "round": round_number, "site": site, "reason": reason}
    )
    try:
        agent.stub.ReportPartial(
            federation_pb2.PartialComplaint(
                run_id=run, round=round_number, accused_site=site[:128], reason=reason[:500]
            ),
            metadata=agent._metadata(),
            timeout=30,
        )
    except grpc.RpcError as exc:
        log.warning("could not report %s's partial: %s", site, exc)
