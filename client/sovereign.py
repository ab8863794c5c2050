"""The site's gate on every task: its policy, its run pins, and checked aggregates.

Kept apart from the agent's transport loop: everything here decides from the site's own
configuration and state folder (policy, pinned peers, pinned runs), never from the task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from client.peers import UntrustedPeer
from client.pins import Observed, RunPin
from client.policy import TaskRefused, check_model
from client.site import Site
from client.verify import Entry, Signer, check_manifest, verify_aggregate, verify_proofs
from crypto import identity
from protos import federation_pb2, serde, wire
from protos.serde import SchemeName

_BUILDS = (
    federation_pb2.TASK_KIND_INIT,
    federation_pb2.TASK_KIND_TRAIN,
    federation_pb2.TASK_KIND_AUDIT,
)


def scheme_of(task: federation_pb2.Task) -> SchemeName:
    """The scheme a task names, as the site pins it; an unknown one is refused."""
    try:
        return serde.scheme_from_proto(task.secure)
    except ValueError as exc:
        raise TaskRefused("policy", f"the task names {exc}") from exc


def _fingerprint(public: bytes) -> str:
    try:
        return identity.fingerprint(bytes(public))
    except ValueError:
        return ""


def observed(task: federation_pb2.Task, config: dict[str, Any]) -> Observed:
    """What this task says about its run, in the form the site's run pins compare."""
    return Observed(
        run_id=task.run_id,
        scheme=scheme_of(task),
        model=str(config.get("model", "")),
        model_config=config.get("model_config", {}),
        lora=str(config.get("lora", "") or ""),
        participants={p.site_name: _fingerprint(p.ed25519_public_key) for p in task.participants},
        custodian=task.custodian,
        key_fingerprint=task.encoding.key_fingerprint,
        schema=_schema_fingerprint(config.get("schema")),
        # In secure runs model_sha256 is the run's initial model on every task; in
        # plaintext runs it is the latest global model and changes each round.
        initial_model=task.model_sha256 if scheme_of(task) is SchemeName.PAILLIER else "",
        privacy=_privacy_plan(task),
    )


def _privacy_plan(task: federation_pb2.Task) -> str:
    """The task's DP plan as canonical JSON of its fields ("" for none), for the run pin."""
    if not task.HasField("privacy") or not task.privacy.mode:
        return ""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(task.privacy), sort_keys=True, separators=(",", ":"))


def _schema_fingerprint(value: object) -> str:
    """sha256 of the task's pinned data schema; "" when it pins none or it does not read."""
    if value in (None, "", {}):
        return ""
    from protos.data_schema import from_dict

    try:
        return from_dict(value).fingerprint()
    except ValueError:
        return "unreadable"


def admit(agent: Site, task: federation_pb2.Task) -> RunPin:
    """Refuse a task the site's policy forbids or that disagrees with the run's pin.

    Raises
    ------
    TaskRefused
        ``policy``, ``pin``, ``model`` or ``schema``, with the reason the operator will read.
    """
    policy = agent.config.policy
    try:
        config = json.loads(task.config_json or "{}")
    except ValueError as exc:
        raise TaskRefused("policy", f"the task's config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TaskRefused("policy", "the task's config is not a JSON object")
    if policy.require_secure and scheme_of(task) is not SchemeName.PAILLIER:
        raise TaskRefused(
            "policy", "this site sends updates only under encryption (--require-secure)"
        )
    if (
        policy.min_threshold
        and scheme_of(task) is SchemeName.PAILLIER
        and task.threshold < policy.min_threshold
    ):
        mode = f"{task.threshold}-of-n" if task.threshold else "single-key"
        raise TaskRefused(
            "policy",
            f"run {task.run_id} is {mode}; this site takes secure runs only with a threshold "
            f"of at least {policy.min_threshold} (--min-threshold)",
        )
    if task.kind in _BUILDS:
        from models.registry import available_models

        check_model(policy, str(config.get("model", "")), tuple(available_models()))
    pin = agent.pins.check(observed(task, config), init=task.kind == federation_pb2.TASK_KIND_INIT)
    if task.kind in _BUILDS:
        # The trainer's say: can it build the run's model on data that fits the run's
        # schema? (TabularTrainer.accept_task; a user's NumPyClient may offer the same.)
        accept = getattr(agent.client, "accept_task", None)
        if callable(accept):
            accept(config)
    return pin


def signers(agent: Site, task: federation_pb2.Task, pin: RunPin | None) -> dict[str, Signer]:
    """The run's participants whose identity this site trusts: pinned for the run and as peers.

    The keys come from the task, but a key counts only when its fingerprint is the one
    pinned for the run and the one this site's people pinned for that site (or this
    site's own identity).
    """
    out: dict[str, Signer] = {}
    pinned = pin.participants if pin is not None else {}
    for participant in task.participants:
        site, public = participant.site_name, bytes(participant.ed25519_public_key)
        seen = _fingerprint(public)
        if not seen or pinned.get(site) != seen:
            continue
        if site == agent.config.site_name:
            if seen != agent.identity.fingerprint:
                continue
        else:
            try:
                agent.peers.check(site, public)
            except UntrustedPeer:
                continue
        out[site] = Signer(site, seen, public)
    return out


def checked_aggregate(
    agent: Site,
    task: federation_pb2.Task,
    aggregate: federation_pb2.AggregateRef,
    public_key: Any,
    on_signed: Callable[[bytes], None] | None = None,
) -> bytes:
    """The aggregate's ciphertexts, fetched, once its manifest and product check.

    ``on_signed`` is called with the fetched bytes once the signed manifest checks
    (enough pinned sites signed contributions of this size for this run and round), before
    the costlier product and proof checks: a threshold site starts its partials there
    (client/threshold_partials.py ``EarlyPartial``), so a coordinator cannot set that work
    going with an aggregate nobody signed.

    Raises
    ------
    TaskRefused
        ``verify`` for anything that does not check.
    """
    import crypto

    width = crypto.ciphertext_width(public_key)
    pin = agent.pins.get(task.run_id)
    entries = [
        Entry(
            node_id=c.node_id,
            site=c.site_name,
            payload_sha256=c.payload_sha256,
            weight=int(c.weight),
            payload_size=int(c.payload_size),
            signature=bytes(c.signature),
            plaintext_proof=bytes(c.plaintext_proof),
        )
        for c in aggregate.contributions
    ]
    payload = agent.fetch(task.run_id, aggregate.sha256)
    if not payload or len(payload) % width:
        raise TaskRefused(
            "verify", f"the aggregate of round {aggregate.round} is not whole ciphertexts"
        )
    check_manifest(
        entries,
        run_id=task.run_id,
        round_number=int(aggregate.round),
        total_weight=int(aggregate.total_weight),
        key_id=task.encoding.key_id,
        encoding=wire.PAILLIER_PACKED,
        signers=signers(agent, task, pin),
        min_sites=agent.config.policy.min_aggregate_sites,
        payload_size=len(payload),
        require_proofs=True,
    )
    if on_signed is not None:
        on_signed(payload)
    payloads = verify_aggregate(
        entries,
        payload,
        lambda sha: agent.fetch(task.run_id, sha),
        width=width,
        n_square=public_key.nsquare,
    )
    verify_proofs(
        entries,
        payloads,
        run_id=task.run_id,
        round_number=int(aggregate.round),
        n=public_key.n,
        width=width,
    )
    # One aggregate per round, ever: checked last so a bad aggregate pins nothing.
    agent.pins.pin_aggregate(task.run_id, int(aggregate.round), aggregate.sha256)
    return payload
