"""The Paillier scheme at a site: one secure round, step by step, and where each step lives.

Updates leave a site only as packed Paillier ciphertexts (BatchCrypt slots: Jiang et al.,
"BatchCrypt: Efficient Homomorphic Encryption for Cross-Silo Federated Learning", USENIX
ATC 2020); the coordinator multiplies them and never holds a key that decrypts. A run of
this scheme, from ``cohort admin runs start --secure paillier`` to a site applying the
decrypted aggregate:

1. **Run and key.** The coordinator creates the run (coordinator/runs.py) and hands its
   custodian a KEYGEN task (coordinator/scheduler.py). The custodian makes the key and
   seals the private key to each participant it pinned, signing the dealing
   (:meth:`client.run_keys.RunKeys.keygen`, client/keys.py, crypto/sealing.py); in a
   t-of-n run it deals shares instead and erases the key (client/threshold.py). The
   coordinator stores the bundle (coordinator/keys.py).
2. **Initial model.** One site answers INIT with plaintext float32 weights (client/tasks.py),
   the same at every site: the start of every site's :class:`SecureModelState`.
3. **A TRAIN task arrives.** The site's gate admits it against its policy and run pins
   (client/sovereign.py). Each site opens its sealed key, or its share, once per run
   (:meth:`client.run_keys.RunKeys.open`).
4. **The global model** (:meth:`PaillierScheme.global_model`). For each aggregate the
   site has not applied: the manifest, every signature, the product of the signed
   ciphertexts and every proof of plaintext knowledge are checked
   (:func:`client.sovereign.checked_aggregate`, client/verify.py); the aggregate is
   decrypted (:meth:`PaillierScheme.sums`, or t partials in a threshold run:
   :class:`ThresholdPaillierScheme`, client/threshold_partials.py) and decoded to the
   weighted mean update (crypto/codec.py); every site steps the same server optimiser
   with it (client/schemes/paillier_model.py), so every site holds the same model.
5. **Randomness** (:meth:`PaillierScheme.prepare`). Before training, the run's pool of
   obfuscators ``r^n`` is topped up in the background (crypto/randomness.py).
6. **Training.** The site's client fits locally (client/tasks.py).
7. **Encode** (:meth:`PaillierScheme.encode`). The weight is capped at the round's
   ``weight_cap``; the delta is clipped, quantised, weighted and packed by the run's codec
   (:meth:`PaillierScheme.codec`), encrypted with the pool's obfuscators, and proven
   (:func:`encrypt_proven_update`, crypto/plaintext_proof.py).
8. **Submit.** The header, signed over payload hash, weight, key and proof, and the chunk
   stream are built by client/link.py.
9. **At the coordinator.** Intake checks the key, the weight against the slot bound and
   every ciphertext (coordinator/schemes.py ``PaillierScheme.validate``); when the round
   closes the scheduler multiplies the ciphertexts (``PaillierScheme.aggregate``) and the
   next task names the aggregate, with its signed manifest (coordinator/manifests.py).
10. **The end.** A site's final model (``cohort client export-model``) is step 4 on the
    run's final task (client/agent.py ``SiteAgent.export_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from phe import PaillierPrivateKey, PaillierPublicKey

import crypto
from client import dp_site_scheme
from client.link import Update
from client.policy import TaskRefused
from client.schemes.paillier_model import flatten
from protos import common_pb2, wire
from protos.federation_pb2 import AggregateRef, Task
from protos.wire import NDArrays

if TYPE_CHECKING:
    from client.schemes.base import SchemeSite
    from crypto.dp_layout import SiteNoise

Sums = Callable[[], list[int]]
"""An aggregate's plaintext slot sums, computed when called (inside the decode's checks)."""


def codec_for(
    encoding: common_pb2.EncodingParams, public_key: PaillierPublicKey
) -> crypto.SlotCodec:
    """The slot codec a task's encoding parameters describe, for this run's key size."""
    return crypto.SlotCodec(
        clip=encoding.clip,
        bits=encoding.bits,
        max_weight=int(encoding.max_weight),
        key_bits=public_key.n.bit_length(),
    )


def encrypt_update(
    delta: np.ndarray,
    weight: int,
    codec: crypto.SlotCodec,
    public_key: PaillierPublicKey,
    rng: np.random.Generator,
    pool: crypto.RandomnessPool | None = None,
    clip: np.ndarray | None = None,
) -> bytes:
    """Quantise, weight, pack and encrypt a flat update; returns the wire payload.

    ``clip``: per-value bounds (:meth:`SecureModelState.clip_for`) for a per-tensor codec.
    """
    plaintexts = codec.encode(delta, weight, rng, clip)
    ciphertexts = crypto.encrypt_packed(public_key, plaintexts, pool=pool)
    return crypto.ciphertexts_to_bytes(ciphertexts, crypto.ciphertext_width(public_key))


def encrypt_proven_update(
    delta: np.ndarray,
    weight: int,
    codec: crypto.SlotCodec,
    public_key: PaillierPublicKey,
    rng: np.random.Generator,
    *,
    run_id: str,
    round_number: int,
    site: str,
    pool: crypto.RandomnessPool | None = None,
    clip: np.ndarray | None = None,
) -> tuple[bytes, bytes]:
    """:func:`encrypt_update`, plus the proof that this site knows what it encrypted.

    Returns the wire payload and crypto.plaintext_proof bytes bound to this run, round
    and site. The randomness of each ciphertext is kept only for the proof.
    """
    from crypto import plaintext_proof

    return plaintext_proof.encrypt_proven(
        public_key,
        codec.encode(delta, weight, rng, clip),
        pool=pool,
        run_id=run_id,
        round_number=round_number,
        site=site,
    )


def decrypt_sums(payload: bytes, private_key: PaillierPrivateKey) -> list[int]:
    """The packed plaintexts of an encrypted aggregate (``SlotCodec.decode`` reads them)."""
    width = crypto.ciphertext_width(private_key.public_key)
    return crypto.decrypt_packed(private_key, crypto.ciphertexts_from_bytes(payload, width))


def clip_metrics(
    delta: np.ndarray, codec: crypto.SlotCodec, clip: np.ndarray | None = None
) -> dict[str, float]:
    """How many values of an update the codec clips, for the update's plaintext metrics.

    The coordinator averages numeric metrics per round, so an operator sees when bounds
    bite. These two numbers are all that clipping reveals about a site's update.
    """
    flat = np.ravel(delta)
    clipped = codec.clipped(flat, clip)
    return {"clipped_values": clipped, "clipped_fraction": clipped / max(flat.size, 1)}


class PaillierScheme:
    """A run whose aggregates one custodian's key decrypts, sealed to every participant."""

    encoding = wire.PAILLIER_PACKED

    def codec(self, task: Task, public_key: PaillierPublicKey) -> crypto.SlotCodec:
        """How this task's updates are laid out in plaintext slots (its EncodingParams)."""
        return codec_for(task.encoding, public_key)

    def global_model(self, site: SchemeSite, task: Task, config: dict[str, Any]) -> NDArrays:
        """Step 4: apply each checked, decrypted aggregate this site has not applied yet."""
        from client.sovereign import checked_aggregate

        public_key, _ = site.run_keys(task)
        state = site.secure.state(
            task, config, lambda: site.tensors(task.run_id, task.model_sha256)
        )
        codec = self.codec(task, public_key)
        layout = self.dp_layout(site, task, config, state.weights.size, public_key)
        for aggregate in task.aggregates:
            if aggregate.round <= state.applied_round:
                continue
            if layout is not None:
                # Site-level DP: a sum of fewer sites than the noise's quorum is never
                # decrypted, nor (threshold runs) partially decrypted; refused before the
                # aggregate is checked and pinned, so it cannot block the round's honest one.
                dp_site_scheme.check_contributions(aggregate, layout)
            elif task.HasField("privacy"):
                dp_site_scheme.check_unit_weights(aggregate)  # record-level DP: sites weigh 1
            started: list[Any] = []  # work begun once the signed manifest checked

            def begin(
                signed: bytes, aggregate: AggregateRef = aggregate, started: list[Any] = started
            ) -> None:
                started.append(self.start_decrypting(site, task, aggregate, signed))

            payload = checked_aggregate(site, task, aggregate, public_key, on_signed=begin)
            sums = self.sums(site, task, aggregate, payload, started[0] if started else None)
            mean = (
                _mean(aggregate, codec, sums, state.clip_for(codec))
                if layout is None
                else _dp_mean(aggregate, layout, sums)
            )
            state.weights = state.optimiser.step(state.weights, mean)
            state.carry_bounds(mean, codec)  # every site derives the next round's clip bounds alike
            state.applied_round = aggregate.round
        return state.arrays()

    def start_decrypting(
        self, site: SchemeSite, task: Task, aggregate: AggregateRef, payload: bytes
    ) -> Any:
        """Work on a signed aggregate that may start before its product and proofs check.

        None with the whole key.

        A key holder's decryption of an unchecked aggregate would be a plaintext this
        site's policy forbids it to look at (one site's update, say), so it waits.
        """
        return None

    def sums(
        self,
        site: SchemeSite,
        task: Task,
        aggregate: AggregateRef,
        payload: bytes,
        early: Any = None,
    ) -> Sums:
        """The checked aggregate's plaintext sums, decrypted with the run's key when called."""
        _, private_key = site.run_keys(task)
        if private_key is None:  # a coordinator that drops the task's threshold
            raise TaskRefused(
                "verify", f"run {task.run_id} was dealt as t-of-n shares; its tasks say otherwise"
            )
        return lambda: decrypt_sums(payload, private_key)

    def dp_layout(
        self,
        site: SchemeSite,
        task: Task,
        config: dict[str, Any],
        dimension: int,
        public_key: PaillierPublicKey,
    ) -> SiteNoise | None:
        """Site-level DP's slot layout for this run (the one pinned at its first charge).

        None for a run without site-level DP. Its updates are clipped, noised and packed by
        client/dp_site_scheme.py instead of the run's codec, every site at weight 1.
        """
        return dp_site_scheme.run_layout(
            site.privacy, task, config, dimension, public_key.n.bit_length()
        )

    def prepare(self, site: SchemeSite, task: Task, weights: NDArrays) -> None:
        """Step 5: start this run's obfuscators while the site trains."""
        public_key, _ = site.run_keys(task)
        layout = site.privacy.pinned_layout(task.run_id)  # charged (so pinned) before this
        needed = (
            _needed(self.codec(task, public_key), weights)
            if layout is None
            else layout.num_plaintexts
        )
        site.secure.randomness(task.run_id, public_key, needed)

    def encode(
        self,
        site: SchemeSite,
        task: Task,
        config: dict[str, Any],
        deltas: NDArrays,
        num_examples: int,
    ) -> Update:
        """Step 7: cap the weight, then clip, quantise, pack, encrypt and prove the delta."""
        public_key, _ = site.run_keys(task)
        codec = self.codec(task, public_key)
        delta = flatten(deltas)
        layout = self.dp_layout(site, task, config, delta.size, public_key)
        needed = _needed(codec, deltas) if layout is None else layout.num_plaintexts
        pool = site.secure.randomness(task.run_id, public_key, needed)
        if layout is None:
            if not task.encoding.weight_cap:
                raise TaskRefused("verify", "the task carries no weight cap for its update")
            weight = max(1, min(int(num_examples), int(task.encoding.weight_cap)))
            clip = site.secure.states[task.run_id].clip_for(codec)
            payload, proof = encrypt_proven_update(
                delta,
                weight,
                codec,
                public_key,
                site.rng,
                run_id=task.run_id,
                round_number=task.round,
                site=site.config.site_name,
                pool=pool,
                clip=clip,
            )
            metrics = clip_metrics(delta, codec, clip)
        else:
            # Site-level DP: clipped, noised, weight 1 for every site (client/dp_site_scheme.py).
            weight, metrics = 1, {}
            payload, proof = dp_site_scheme.encode_update(
                delta,
                layout,
                public_key,
                run_id=task.run_id,
                round_number=task.round,
                site=site.config.site_name,
                pool=pool,
            )
        if task.round < int(config.get("rounds", 0)):
            pool.start(needed)  # next round's obfuscators, made while others train
        else:
            site.secure.close_randomness(task.run_id)
        return Update(
            payload,
            self.encoding,
            num_examples=int(num_examples),
            weight=weight,
            metrics=metrics,
            proof=proof,
        )


class ThresholdPaillierScheme(PaillierScheme):
    """A t-of-n run: no site holds the key; t sites' partial decryptions open each aggregate."""

    def start_decrypting(
        self, site: SchemeSite, task: Task, aggregate: AggregateRef, payload: bytes
    ) -> Any:
        """The site's own partials of a signed aggregate, started while it is checked.

        A partial alone reveals nothing (client/threshold_partials.py ``EarlyPartial``): it
        is released only once the product and proofs check and a quorum of holders echoed
        the same aggregate. Called with the bytes the signed manifest was checked against.
        """
        from client import threshold_partials

        key = self._share(site, task)
        width = crypto.ciphertext_width(key.public_key)
        return threshold_partials.start_early(
            site,
            task,
            key,
            int(aggregate.round),
            aggregate.sha256,
            crypto.ciphertexts_from_bytes(payload, width),
        )

    def sums(
        self,
        site: SchemeSite,
        task: Task,
        aggregate: AggregateRef,
        payload: bytes,
        early: Any = None,
    ) -> Sums:
        """The checked aggregate's plaintext sums, from t verified partials (asked for now)."""
        from client import threshold_partials

        key = self._share(site, task)
        width = crypto.ciphertext_width(key.public_key)
        sums = threshold_partials.decrypt(
            site,
            task,
            key,
            int(aggregate.round),
            aggregate.sha256,
            crypto.ciphertexts_from_bytes(payload, width),
            early,
        )
        return lambda: sums

    @staticmethod
    def _share(site: SchemeSite, task: Task) -> Any:
        """The site's share of the run's t-of-n key, refused for a single-key run."""
        site.run_keys(task)  # opened once; a share for a threshold run
        key = site.custody.threshold.get(task.run_id)
        if key is None:  # a coordinator that adds a threshold to a single-key run
            raise TaskRefused(
                "verify", f"run {task.run_id}'s key is not t-of-n shares; its tasks say otherwise"
            )
        return key


def _needed(codec: crypto.SlotCodec, arrays: NDArrays) -> int:
    """Plaintexts (so obfuscators) one update of tensors like ``arrays`` takes."""
    return codec.num_plaintexts(int(sum(np.prod(a.shape) for a in arrays)))


def _mean(
    aggregate: AggregateRef, codec: crypto.SlotCodec, sums: Sums, clip: np.ndarray | None
) -> np.ndarray:
    """The weighted mean update in an aggregate's ``sums`` (``clip``: as encoded)."""

    def decode() -> np.ndarray:
        codec.check_total_weight(int(aggregate.total_weight))
        return codec.decode(sums(), int(aggregate.total_weight), int(aggregate.count), clip)

    return _decoded(aggregate, decode)


def _dp_mean(aggregate: AggregateRef, layout: SiteNoise, sums: Sums) -> np.ndarray:
    """Site-level DP: the noisy sum's mean over its contributing sites (weight 1 each)."""
    return _decoded(
        aggregate, lambda: dp_site_scheme.decode_aggregate(layout, aggregate, b"", None, sums())
    )


def _decoded(aggregate: AggregateRef, decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()``, with a sum that does not decode turned into a refused task.

    Raises
    ------
    TaskRefused
        ``decode``: signed by enough sites, yet it does not decode (one of them sent
        garbage). A failed task, never a dead agent: every later task carries this round.
    """
    try:
        return decode()
    except (OverflowError, ValueError, ArithmeticError) as exc:
        raise TaskRefused(
            "decode", f"the aggregate of round {aggregate.round} does not decode: {exc}"
        ) from exc
