"""A site's run keys: the custodian makes and deals them, every participant opens its own.

Single-custodian runs: the custodian makes the Paillier key, seals the private key to each
participant it pinned and signs the dealing (:meth:`RunKeys.keygen`); a participant opens
its sealed copy only once the dealing checks against its pins (:meth:`RunKeys.open`).
Whom to seal to and which dealings to accept are client/keys.py; t-of-n runs deal and
open shares in client/threshold.py. The site's own keys are client/custody.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import crypto
from client import keys, prewarm
from client.link import Link
from client.policy import TaskRefused, check_deal_bits, check_key_bits
from client.site import AgentError, Site
from protos import federation_pb2

log = logging.getLogger(__name__)


def key_context(run_id: str, fingerprint: str) -> bytes:
    """Binds a sealed key to its run and public key: a blob replayed for another run fails."""
    return f"cohort/run-key/{run_id}/{fingerprint}".encode()


class RunKeys:
    """The keys of each run this site takes part in, made or opened once per run."""

    def __init__(self, site: Site, link: Link) -> None:
        self.site = site
        self.link = link
        self.keys: dict[str, tuple[Any, Any]] = {}  # run → (public, private or None)
        self.threshold: dict[str, Any] = {}  # run → client.threshold.ThresholdKey

    def keygen(self, task: federation_pb2.Task) -> None:
        """Custodian: make the run's Paillier key here, seal it to pinned sites, sign the deal.

        Only participants whose identity this site pinned, and whose sealing key that
        identity signed, get the key (client/keys.py); fewer than the policy's minimum and
        the task is refused before any key is made.
        """
        site = self.site
        recipients, refused = keys.trusted_recipients(task.participants, site.identity, site.peers)
        for reason in refused:
            log.warning("run %s: not sealing the key to %s", task.run_id, reason)
        if task.threshold:
            self._deal_threshold(task, recipients, refused)
            return
        policy = site.config.policy
        keys.check_enough(task.run_id, recipients, policy, refused)
        bits = int(task.encoding.key_bits) or 2048
        check_deal_bits(policy, bits)
        started = time.perf_counter()
        public_key, private_key = crypto.generate_keypair(bits, insecure_test_size=bits < 2048)
        private_bytes = crypto.private_key_to_bytes(private_key)
        bundle = keys.new_bundle(task, public_key)
        fingerprint = bundle.key_fingerprint
        for recipient in recipients:
            sealed = crypto.seal(
                recipient.x25519_public, private_bytes, key_context(task.run_id, fingerprint)
            )
            bundle.sealed.add(node_id=recipient.node_id, sealed_private_key=sealed)
        bundle.statement.CopyFrom(
            keys.deal(
                task.run_id,
                fingerprint,
                site.identity,
                recipients,
                policy,
                refused,
                privacy_sha256=keys.task_plan_digest(task),
            )
        )
        self.link.submit_keys(bundle)
        self.keys[task.run_id] = (public_key, private_key)
        prewarm.warm_crypto(site.config.encrypt_workers)
        site.listener(
            "keygen",
            {
                "run_id": task.run_id,
                "fingerprint": fingerprint,
                "seconds": time.perf_counter() - started,
                "sealed_for": len(recipients),
            },
        )
        log.info("run %s key fingerprint %s (compare out of band)", task.run_id, fingerprint)

    def _deal_threshold(
        self, task: federation_pb2.Task, recipients: list[keys.Recipient], refused: list[str]
    ) -> None:
        """Custodian of a t-of-n run: deal the shares and erase the key (client/threshold.py)."""
        from client import threshold

        started = time.perf_counter()
        bundle = threshold.deal(self.site, task, recipients, refused)
        self.link.submit_keys(bundle)
        self.site.listener(
            "keygen",
            {
                "run_id": task.run_id,
                "fingerprint": bundle.key_fingerprint,
                "seconds": time.perf_counter() - started,
                "sealed_for": len(bundle.sealed),
                "threshold": task.threshold,
            },
        )

    def open(self, task: federation_pb2.Task) -> tuple[Any, Any]:
        """Open (once) the run's private key sealed to this site, and check it is the run's.

        A share holder of a t-of-n run gets ``(public key, None)``: it never holds the key.
        """
        if task.run_id in self.keys:
            return self.keys[task.run_id]
        if task.threshold:
            return self._open_share(task)
        site = self.site
        policy = site.config.policy
        if not task.sealed_private_key:
            raise AgentError(f"no sealed key for this site in run {task.run_id}")
        public_key = crypto.public_key_from_bytes(bytes(task.encoding.public_key))
        check_key_bits(policy, public_key.n.bit_length())
        fingerprint = crypto.key_fingerprint(public_key)
        if fingerprint != task.encoding.key_fingerprint:
            raise AgentError("the run's public key does not match its announced fingerprint")
        # The key is opened only as a trusted, pinned custodian dealt it to this identity.
        dealing = keys.check_statement(task, fingerprint, site.identity, site.peers, policy)
        if dealing.threshold:  # a coordinator that drops the task's threshold
            raise TaskRefused(
                "verify", f"run {task.run_id}'s key was dealt {dealing.threshold}-of-n shares"
            )
        try:
            private_bytes = crypto.open_sealed(
                site.identity.x25519_private,
                bytes(task.sealed_private_key),
                key_context(task.run_id, fingerprint),
            )
        except ValueError as exc:
            raise AgentError(
                f"the sealed run key does not open with this site's key: {exc}"
            ) from exc
        private_key = crypto.private_key_from_bytes(private_bytes, public_key)
        self.keys[task.run_id] = (public_key, private_key)
        prewarm.warm_crypto(site.config.encrypt_workers)  # ready by the first aggregate
        site.listener("key", {"run_id": task.run_id, "fingerprint": fingerprint})
        log.info("run %s key fingerprint %s (compare out of band)", task.run_id, fingerprint)
        return public_key, private_key

    def _open_share(self, task: federation_pb2.Task) -> tuple[Any, Any]:
        """t-of-n: this site holds a share, never the private key (client/threshold.py)."""
        from client import threshold

        key = threshold.open_key(self.site, task)
        self.threshold[task.run_id] = key
        self.keys[task.run_id] = (key.public_key, None)
        self.site.listener(
            "key", {"run_id": task.run_id, "fingerprint": task.encoding.key_fingerprint}
        )
        return self.keys[task.run_id]
