"""Decrypting a threshold run's aggregate at a site: spread partials, check them, combine t.

Each value of an aggregate needs ``t`` partial decryptions (Shoup 2000; Damgård & Jurik
2001, :mod:`crypto.threshold`). The vector is cut into N blocks and each share holder
decrypts ``t`` of them, so a round costs each site ``t/N`` of the full work; partials
travel signed and sealed under the run's group key (:mod:`crypto.threshold_custody`), each
with a batched proof of correct decryption, and a wrong one is named, never combined.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from client import threshold_echo
from client.peers import UntrustedPeer
from client.policy import TaskRefused
from crypto import identity
from crypto import threshold as tp
from crypto import threshold_custody as custody
from protos import federation_pb2

if TYPE_CHECKING:
    from client.site import Site
    from client.threshold import ThresholdKey

log = logging.getLogger(__name__)
SPREAD_WAIT_SECONDS = 2.0
"""Least time a site waits for the others' blocks before it decrypts the whole vector."""
POLL_SECONDS = 2.0
"""Longest single wait for partials at the coordinator (it answers as soon as one arrives)."""
_running_lock = threading.Lock()
_running: set[str] = set()  # sites with early partials being computed


@dataclass(frozen=True)
class EarlyPartial:
    """A site's block partials of an aggregate, started before the aggregate is checked.

    A site checks an aggregate (signed manifest, every contribution's plaintext proof, the
    recomputed product) before it releases anything of it. Once the signed manifest checks
    (client/sovereign.py ``on_signed``), the costlier product and proof checks still take a
    few tenths of a second on one core. A partial alone reveals nothing (it takes ``t`` of
    them to decrypt), so computing it meanwhile on the worker pool is safe: it is released
    only after every check passes and a quorum of holders echoed the same aggregate, as
    always, and dropped when a check fails. :func:`decrypt` uses it only for the same run,
    round, share, aggregate name and ciphertexts, and computes afresh if it failed or is
    late. One at a time per site, on a daemon thread: a coordinator replaying signed
    manifests with other bytes cannot queue work, and a pending one never holds up exit.
    """

    run_id: str
    round_number: int
    index: int
    aggregate_sha256: str
    ciphertexts: tuple[int, ...]
    result: Future[tuple[tp.PartialDecryption, float]]


def start_early(
    agent: Site,
    task: federation_pb2.Task,
    key: ThresholdKey,
    round_number: int,
    aggregate_sha256: str,
    ciphertexts: list[int],
) -> EarlyPartial | None:
    """Start this site's block partials (part 0) of an aggregate; None if one is running."""
    me = agent.identity.site_name
    with _running_lock:
        if me in _running:
            return None
        _running.add(me)
    workers = agent.config.encrypt_workers
    result: Future[tuple[tp.PartialDecryption, float]] = Future()

    def compute() -> None:
        try:
            result.set_result(
                _own_partials(
                    key, task.run_id, round_number, aggregate_sha256, ciphertexts, 0, workers
                )
            )
        except BaseException as exc:
            result.set_exception(exc)
        finally:
            with _running_lock:
                _running.discard(me)

    threading.Thread(target=compute, name=f"early-partials-{me}", daemon=True).start()
    return EarlyPartial(
        task.run_id, round_number, key.share.index, aggregate_sha256, tuple(ciphertexts), result
    )


def _own_partials(
    key: ThresholdKey,
    run: str,
    round_number: int,
    aggregate_sha256: str,
    ciphertexts: list[int],
    part: int,
    workers: int | None,
) -> tuple[tp.PartialDecryption, float]:
    """A site's partials of its blocks (part 0) or the whole vector (1), and their seconds."""
    started = time.monotonic()
    positions = positions_of(key.share.index, part, key.verification_keys, len(ciphertexts))
    own = compute_partial(
        key,
        [ciphertexts[k] for k in positions],
        _context(run, round_number, _label(aggregate_sha256, part)),
        workers,
    )
    return own, time.monotonic() - started


def _early_result(
    early: EarlyPartial | None,
    run: str,
    round_number: int,
    key: ThresholdKey,
    aggregate_sha256: str,
    ciphertexts: list[int],
    deadline: float,
) -> tuple[tp.PartialDecryption, float] | None:
    """The early partials if they are for exactly this decryption and came in time."""
    if early is None or (
        early.run_id,
        early.round_number,
        early.index,
        early.aggregate_sha256,
        early.ciphertexts,
    ) != (run, round_number, key.share.index, aggregate_sha256, tuple(ciphertexts)):
        return None
    try:
        return early.result.result(timeout=max(deadline - time.time(), 0.0))
    except Exception:  # failed (a broken pool) or late: compute afresh
        log.warning("early partials unusable; computing them now", exc_info=True)
        return None


def decrypt(
    agent: Site,
    task: federation_pb2.Task,
    key: ThresholdKey,
    round_number: int,
    aggregate_sha256: str,
    ciphertexts: list[int],
    early: EarlyPartial | None = None,
) -> list[int]:
    """The plaintext sums of one round's aggregate, from ``t`` verified partials per value.

    The work is spread: the vector is cut into N blocks and the site with index ``i``
    decrypts blocks ``i, i−1, …, i−t+1`` (:func:`blocks_of`), so each block gets exactly
    ``t`` partials and each site does ``t/N`` of the vector. When some block still lacks
    ``t`` good partials :data:`SPREAD_WAIT_SECONDS` (or twice this site's own time) after
    this site published (a site gone, a partial refused), the site publishes partials of
    the whole vector too. A site that finds every block covered computes nothing.
    Before this site publishes any partial, it echoes the aggregate it was shown and waits
    for a quorum of holders' signed echoes of the same one (:mod:`client.threshold_echo`):
    a coordinator showing holders different aggregates gets no partial of either.
    Partials are long-polled from the coordinator; each must open under the group key,
    carry its holder's pinned signature and pass the proof of correct decryption. Every
    partial that fails is reported, naming its site (ReportPartial), and left out.

    Raises
    ------
    TaskRefused
        ``verify`` when some block lacks ``t`` good partials at the task's deadline,
        naming every site whose partial failed and why; when holders echoed different
        aggregates, or too few echoed by the deadline (:func:`client.threshold_echo.await_quorum`).
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
            except Unpinned as exc:  # this site's choice, not the holder's fault: no complaint
                bad[site] = str(exc)
                log.warning(
                    "run %s round %d: partial from %s not used: %s", run, round_number, site, exc
                )
                continue
            except ValueError as exc:
                bad[site] = str(exc)
                threshold_echo.report(agent, run, round_number, site, str(exc))
                continue
            have.setdefault(partial.index, {}).update(zip(positions, partial.values, strict=True))
        return len(reply.partials)

    def mine(part: int) -> float:
        positions = positions_of(key.share.index, part, keys_, count)
        ready = (  # started while the aggregate was checked
            _early_result(early, run, round_number, key, aggregate_sha256, ciphertexts, deadline)
            if part == 0
            else None
        )
        own, took = ready or _own_partials(
            key,
            run,
            round_number,
            aggregate_sha256,
            ciphertexts,
            part,
            agent.config.encrypt_workers,
        )
        # Computed while the other holders echo; released only once a quorum of them echoed
        # this aggregate (client.threshold_echo), checked once per round.
        if not echoed:
            threshold_echo.await_quorum(agent, task, key, statement, deadline)
            echoed.append(True)
        publish(agent, run, round_number, aggregate_sha256, own, key, part=part)
        have.setdefault(own.index, {}).update(zip(positions, own.values, strict=True))
        judged.add((me, part))
        return took

    statement = threshold_echo.echo(agent, task, round_number, aggregate_sha256)
    echoed: list[bool] = []
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
    """The partials of ``ciphertexts`` this site computes, and their batched proof."""
    return tp.make_partial_decryption(
        key.share, key.verification_keys, ciphertexts, context, workers=workers
    )


def publish(
    agent: Site,
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
    agent: Site,
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
    # The name and part are the relay's, neither sealed nor signed: no site is blamed for them.
    if holder is None:
        raise Unattributable(f"the relay or the site: {site[:128]!r} holds no share of this key")
    if part not in (0, 1):
        raise Unattributable(
            f"the relay or the site: part {part} is neither its blocks nor the whole vector"
        )
    try:
        public = threshold_echo.holder_identity(agent, task, site, holder.fingerprint)
    except UntrustedPeer as exc:
        raise Unpinned(str(exc)) from exc
    except ValueError as exc:  # the key the relay gave for the holder is not the dealt one
        raise Unattributable(f"the relay or the site: {exc}") from exc
    label = _label(aggregate_sha256, part)
    try:
        signature, data = custody.open_partial(
            key.group_key,
            bytes(envelope.sealed),
            run_id=task.run_id,
            round_number=round_number,
            site=site,
            aggregate_sha256=label,
        )
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
    except ValueError as exc:
        # Before the site's own signature checks, the coordinator that relayed the bytes
        # could equally be at fault: say so rather than frame the site.
        raise Unattributable(f"the relay or the site: {exc}") from exc
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


class Unattributable(ValueError):
    """A relayed partial failed before its sender's signature checked: relay or sender."""


class Unpinned(ValueError):
    """A partial from a holder this site does not pin (``cohort client peers``): not used."""
