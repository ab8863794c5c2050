"""Update schemes at the coordinator: what each accepts from a site, and how it aggregates.

A scheme is the wire form of a round's updates. Its site faces (encode, and the global
model rebuilt from aggregates) live in client/schemes/: plain.py (float32 and 8-bit
tensors, over protos/wire.py and crypto/quantize) and paillier.py (single-key and
threshold, over crypto/codec.py; its docstring walks through a secure round). Its
coordinator faces live here: the size an
update may declare, the check of its payload, and the round's aggregate. Intake
(coordinator/federation.py) and the scheduler (coordinator/scheduler.py) call
:func:`scheme_of` and never compare scheme names themselves.

Threshold runs and record-level DP are Paillier and plaintext runs at the coordinator:
their ciphertexts and tensors look the same here; what differs is who can decrypt
(coordinator/keys.py relays partials) and what each site spends (client/dp*.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from phe import PaillierPublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

import crypto
from coordinator.aggregation import aggregate_deltas, apply_deltas
from coordinator.errors import FailedPrecondition, InvalidArgument
from coordinator.hub import Hub
from coordinator.privacy import withholds_counts
from coordinator.schema import ModelKind, ModelVersion, Run, Task, TaskKind, Update
from protos import federation_pb2, wire
from protos.serde import SchemeName


@dataclass(frozen=True)
class Aggregate:
    """A round's aggregate, stored in the blob store."""

    sha256: str
    size: int
    count: int  # values it holds
    kind: ModelKind


class Scheme(Protocol):
    """The coordinator's faces of one update scheme."""

    name: SchemeName
    # True when the coordinator cannot read the updates (nor the aggregate): keys, sealed
    # private keys, signed contributions and proofs travel with the run's tasks.
    encrypted: bool

    def encoding(self, run: Run) -> str:
        """The ``UpdateHeader.encoding`` this run's TRAIN updates must carry."""
        ...

    def check_declared_size(self, run: Run, header: federation_pb2.UpdateHeader) -> None:
        """INVALID_ARGUMENT when a TRAIN update declares a size the run cannot produce."""
        ...

    def validate(
        self,
        session: Session,
        run: Run,
        task: Task,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> int:
        """Check one TRAIN update's payload; return the weight it carries in the aggregate."""
        ...

    def aggregate(
        self, hub: Hub, session: Session, run: Run, number: int, updates: list[Update]
    ) -> Aggregate:
        """Combine a closed round's updates into the round's model or aggregate."""
        ...


class PlaintextScheme:
    """Float32 (or 8-bit) tensors; a Flower strategy aggregates them in the clear."""

    name = SchemeName.NONE
    encrypted = False

    def encoding(self, run: Run) -> str:
        """8-bit tensors when the run asks for update quantisation, float32 otherwise."""
        return wire.TENSORS_Q8 if run.settings().update_bits else wire.TENSORS_FLOAT32

    def check_declared_size(self, run: Run, header: federation_pb2.UpdateHeader) -> None:
        """At most the model's tensors at 8 bytes a value: a stream never buffers more."""
        if run.tensor_specs and header.payload_size > plaintext_payload_bound(run):
            raise InvalidArgument(
                f"update declares {header.payload_size} bytes; this run's model needs at most "
                f"{plaintext_payload_bound(run)}"
            )

    def validate(
        self,
        session: Session,
        run: Run,
        task: Task,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> int:
        """Readable, finite tensors of the model's shapes; the weight is the example count.

        A DP run's site withholds its count (0, coordinator/privacy.py): it weighs 1.
        """
        check_tensors(payload, run, quantised=header.encoding == wire.TENSORS_Q8)
        return max(int(header.num_examples), 1)

    def aggregate(
        self, hub: Hub, session: Session, run: Run, number: int, updates: list[Update]
    ) -> Aggregate:
        """The run's strategy over the updates' deltas, applied to the previous model."""
        previous = session.scalar(
            select(ModelVersion).where(
                ModelVersion.run_id == run.id, ModelVersion.round == number - 1
            )
        )
        base_sha = previous.blob_sha256 if previous else run.initial_model_sha256
        weights = wire.decode_tensors(hub.blobs.get(base_sha))
        settings = run.settings()
        bits = settings.update_bits
        results = [(_deltas(hub, update, bits), int(update.weight)) for update in updates]
        deltas = aggregate_deltas(run.strategy, results)
        payload = wire.encode_tensors(apply_deltas(weights, deltas, settings.server_lr))
        return Aggregate(
            hub.blobs.put(payload),
            len(payload),
            sum(int(w.size) for w in weights),
            ModelKind.PLAINTEXT,
        )


class PaillierScheme:
    """Packed Paillier ciphertexts (BatchCrypt slots); the coordinator only multiplies them."""

    name = SchemeName.PAILLIER
    encrypted = True

    def encoding(self, run: Run) -> str:
        """Packed ciphertexts of the run's key."""
        return wire.PAILLIER_PACKED

    def check_declared_size(self, run: Run, header: federation_pb2.UpdateHeader) -> None:
        """Exactly the ciphertexts of the model, known from the key and the shapes alone."""
        if not run.public_key:
            return
        try:
            expected = secure_payload_size(run)
        except ValueError as exc:
            raise InvalidArgument(f"this run's key cannot size an update: {exc}") from exc
        if header.payload_size != expected:
            raise InvalidArgument(
                f"update declares {header.payload_size} bytes; this run's model needs "
                f"exactly {expected} bytes of ciphertexts"
            )

    def validate(
        self,
        session: Session,
        run: Run,
        task: Task,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> int:
        """The run's key, a weight under the round's cap, and well-formed ciphertexts.

        Σw must stay under the codec's slot bound or slots would carry into each other;
        each ciphertext must be in [1, n²) and coprime to n (crypto.validate_ciphertexts).
        """
        _check_key(run, header)
        max_weight = run.settings().encoding.max_weight
        selected = len(
            session.scalars(
                select(Task.id).where(
                    Task.run_id == run.id, Task.round == task.round, Task.kind == TaskKind.TRAIN
                )
            ).all()
        )
        cap = weight_cap(run, selected)
        weight = int(header.weight)
        if withholds_counts(run) and weight != 1:
            # Record-level DP over Paillier: sites withhold their counts, so none may weigh
            # more than another (a heavy weight would drown the others' noised updates).
            raise InvalidArgument(
                f"weight {weight}: a differentially private run averages sites, every weight is 1"
            )
        if not 1 <= weight <= cap:
            raise InvalidArgument(f"weight {weight} is outside 1..{cap} for this round")
        accepted = sum(
            session.scalars(
                select(Update.weight).where(Update.run_id == run.id, Update.round == task.round)
            ).all()
        )
        if accepted + weight > max_weight:
            raise InvalidArgument(
                f"total weight {accepted + weight} would pass the slot bound {max_weight}"
            )
        public_key = crypto.public_key_from_bytes(run.public_key)
        expected = _codec(run, public_key.n.bit_length()).num_plaintexts(run.value_count())
        _check_ciphertexts(public_key, payload, expected, "the model")
        return weight

    def aggregate(
        self, hub: Hub, session: Session, run: Run, number: int, updates: list[Update]
    ) -> Aggregate:
        """Multiply the sites' ciphertexts slot-wise: the coordinator never decrypts."""
        public_key = crypto.public_key_from_bytes(run.public_key)
        width = crypto.ciphertext_width(public_key)
        vectors = [
            crypto.ciphertexts_from_bytes(hub.blobs.get(u.blob_sha256), width) for u in updates
        ]
        total = crypto.add_encrypted(vectors, public_key)
        payload = crypto.ciphertexts_to_bytes(total, width)
        return Aggregate(
            hub.blobs.put(payload), len(payload), run.value_count(), ModelKind.ENCRYPTED_AGGREGATE
        )


class SiteDPScheme(PaillierScheme):
    """Paillier runs with site-level DP: the sites' noised integers in crypto/dp_layout.py's slots.

    The slots are wider than the codec's (they hold the noise's headroom), so the update's
    size comes from the run's layout (coordinator/privacy.py ``site_layout``), derived as
    every site derives it. Every site's weight is exactly 1 (sites are averaged, not
    weighted by their example counts), and a round adds at most the layout's ``max_sites``.
    """

    def check_declared_size(self, run: Run, header: federation_pb2.UpdateHeader) -> None:
        """Exactly the layout's ciphertexts for the model."""
        expected = _site_dp_payload_size(run)
        if expected is not None and header.payload_size != expected:
            raise InvalidArgument(
                f"update declares {header.payload_size} bytes; this run's site-level DP layout "
                f"needs exactly {expected} bytes of ciphertexts"
            )

    def validate(
        self,
        session: Session,
        run: Run,
        task: Task,
        header: federation_pb2.UpdateHeader,
        payload: bytes,
    ) -> int:
        """The run's key, weight 1, room in the slots, and the layout's well-formed ciphertexts."""
        from coordinator.privacy import site_layout

        _check_key(run, header)
        if int(header.weight) != 1:
            raise InvalidArgument(
                f"weight {header.weight}: a site-level DP run averages sites, every weight is 1"
            )
        layout = site_layout(run)
        assert layout is not None  # scheme_of picks this scheme only for such runs
        accepted = len(
            session.scalars(
                select(Update.id).where(Update.run_id == run.id, Update.round == task.round)
            ).all()
        )
        if accepted + 1 > layout.max_sites:
            raise InvalidArgument(
                f"round {task.round} already adds {accepted} sites, the most the run's slots hold"
            )
        public_key = crypto.public_key_from_bytes(run.public_key)
        _check_ciphertexts(
            public_key, payload, layout.num_plaintexts, "the run's site-level DP layout"
        )
        return 1


def _check_key(run: Run, header: federation_pb2.UpdateHeader) -> None:
    """FAILED_PRECONDITION for an update under another key than the run's (Paillier schemes)."""
    if header.key_id != run.key_id:
        raise FailedPrecondition(
            f"update is encrypted under key {header.key_id!r}; this run's key is {run.key_id!r}"
        )


def _check_ciphertexts(
    public_key: PaillierPublicKey, payload: bytes, expected: int, needs: str
) -> None:
    """INVALID_ARGUMENT unless ``payload`` is exactly ``expected`` well-formed ciphertexts.

    Each must be in [1, n²) and coprime to n (crypto.validate_ciphertexts); ``needs`` names
    what sets the count in the message. Serves both Paillier schemes' ``validate``.
    """
    width = crypto.ciphertext_width(public_key)
    if len(payload) != expected * width:
        raise InvalidArgument(
            f"update holds {len(payload) / width:.1f} ciphertexts; {needs} needs {expected}"
        )
    try:
        crypto.validate_ciphertexts(crypto.ciphertexts_from_bytes(payload, width), public_key)
    except ValueError as exc:
        raise InvalidArgument(f"bad ciphertext: {exc}") from exc


def _site_dp_payload_size(run: Run) -> int | None:
    """Bytes of one site-level DP update (None before the run has a key)."""
    from coordinator.privacy import site_layout

    try:
        layout = site_layout(run)
    except ValueError as exc:
        raise InvalidArgument(f"this run's site-level DP layout does not fit: {exc}") from exc
    if layout is None:
        return None
    width = crypto.ciphertext_width(crypto.public_key_from_bytes(run.public_key))
    return layout.num_plaintexts * width


PLAINTEXT = PlaintextScheme()
PAILLIER = PaillierScheme()
SITE_DP = SiteDPScheme()
SCHEMES: dict[str, Scheme] = {PLAINTEXT.name: PLAINTEXT, PAILLIER.name: PAILLIER}


def scheme_of(run: Run) -> Scheme:
    """The scheme a run's updates travel in (its ``secure`` column, checked at creation).

    Every module that treats secure and plaintext runs differently asks this object
    (``scheme_of(run).encrypted``); none compares scheme names. A Paillier run with a
    site-level DP plan travels in that plan's layout (:class:`SiteDPScheme`).
    """
    plan = run.config.get("privacy")
    if run.secure == PAILLIER.name and isinstance(plan, dict) and plan.get("mode") == "site":
        return SITE_DP
    return SCHEMES[run.secure]


def weight_cap(run: Run, selected: int) -> int:
    """Largest weight one site may use so that the round's Σw can never pass max_weight."""
    max_weight = run.settings().encoding.max_weight
    return max(1, max_weight // max(selected, run.min_clients, 1))


def check_tensors(
    payload: bytes, run: Run | None, quantised: bool = False
) -> list[wire.TensorSpec]:
    """Readable, finite tensors; of the run's model's shapes when ``run`` is given.

    Initial weights are checked without a run (they define the shapes); updates with it.
    """
    try:
        specs = wire.tensor_specs(payload)
    except wire.PayloadError as exc:
        raise InvalidArgument(f"update is not a tensor payload: {exc}") from exc
    allowed = ("int8", "float32") if quantised else ("float32", "float64", "float16")
    if any(s.dtype not in allowed for s in specs):
        raise InvalidArgument(f"update tensors must be {' or '.join(allowed)}")
    if quantised:
        try:
            crypto.decompress_update(wire.decode_tensors(payload), 8)
        except ValueError as exc:
            raise InvalidArgument(f"bad quantised update: {exc}") from exc
        specs = specs[:-1]  # the last tensor is the per-tensor scales
    if run is not None:
        expected = run.model_shapes()
        got = [(s.dtype, s.shape) for s in specs]
        if len(got) != len(expected):
            raise InvalidArgument(f"update has {len(got)} tensors, the model has {len(expected)}")
        for index, (have, want) in enumerate(zip(got, expected, strict=True)):
            if have[1] != want[1]:
                raise InvalidArgument(
                    f"tensor {index} has shape {list(have[1])}, the model's is {list(want[1])}"
                )
    arrays = wire.decode_tensors(payload)
    if not all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
        raise InvalidArgument("update holds NaN or infinite values")
    return specs


def secure_payload_size(run: Run) -> int:
    """Bytes of one secure update: packed ciphertexts of the run's model, fixed width each.

    Known from the run's public key, encoding and tensor shapes alone, so a header that
    declares another size is refused before its payload is read.
    """
    public_key = crypto.public_key_from_bytes(run.public_key)
    codec = _codec(run, public_key.n.bit_length())
    return codec.num_plaintexts(run.value_count()) * crypto.ciphertext_width(public_key)


def plaintext_payload_bound(run: Run) -> int:
    """Most bytes a plaintext update of the run's model can take (protos.wire tensors).

    Every tensor at the widest dtype a site may send (8 bytes a value), its spec in the
    JSON header, and one more tensor of per-tensor scales for 8-bit updates.
    """
    shapes = [shape for _, shape in run.model_shapes()]
    specs = [{"dtype": "float64", "shape": list(shape)} for shape in shapes]
    specs.append({"dtype": "float64", "shape": [len(shapes)]})
    header = len(json.dumps(specs, separators=(",", ":")))
    return 8 + header + 8 * (run.value_count() + len(shapes))


def _codec(run: Run, key_bits: int) -> crypto.SlotCodec:
    enc = run.settings().encoding
    return crypto.SlotCodec(
        clip=enc.clip, bits=enc.bits, max_weight=enc.max_weight, key_bits=key_bits
    )


def _deltas(hub: Hub, update: Update, bits: int | None) -> list[np.ndarray]:
    arrays = wire.decode_tensors(hub.blobs.get(update.blob_sha256))
    if update.encoding != wire.TENSORS_Q8:
        return arrays
    if bits is None:
        raise ValueError(f"run {update.run_id} has quantised updates but no quantisation")
    return crypto.decompress_update(arrays, bits)
