"""The one place that knows the database schema (SQLAlchemy 2 typed ORM)."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from protos.serde import SchemeName

if TYPE_CHECKING:
    from coordinator.runs import RunConfig


def now() -> float:
    """The current Unix time: the default of every timestamp column (seconds, as a float)."""
    return time.time()


class Base(DeclarativeBase):
    """The declarative base every table derives from; its metadata is what Alembic migrates."""


class RunState(enum.StrEnum):
    """Where a run stands: pending, running, then completed, failed or stopped for good."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        """True once the run can change no more: completed, failed or stopped."""
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.STOPPED)


class RoundState(enum.StrEnum):
    """Where a round stands: open while updates may arrive, then closed or failed."""

    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class TaskKind(enum.StrEnum):
    """What a task asks of a site: send initial weights, train, generate the run key, or audit."""

    INIT = "init"
    TRAIN = "train"
    KEYGEN = "keygen"
    AUDIT = "audit"


class TaskState(enum.StrEnum):
    """A task's life: handed out once, then done, missed, refused by the site, or cancelled."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DONE = "done"
    MISSED = "missed"
    REFUSED = "refused"
    CANCELLED = "cancelled"


class ModelKind(enum.StrEnum):
    """What a stored model version holds: readable weights, or a sum of ciphertexts.

    The coordinator of a secure run keeps only the encrypted aggregate; it cannot read it.
    """

    PLAINTEXT = "plaintext"
    ENCRYPTED_AGGREGATE = "encrypted_aggregate"


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings: readable in SQL and free of native enum types in Postgres.
    return Enum(cls, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class Institution(Base):
    """An institution (one site name): the unit operators enrol and peers pin."""

    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Node(Base):
    """One enrolled agent of an institution: its token hash, keys and liveness."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    x25519_public_key: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    capabilities: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_seen: Mapped[float] = mapped_column(Float, default=now)
    # What the scheduler last recorded, so going offline and coming back are audited once.
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    # The site's Ed25519 identity and its signature binding x25519_public_key to it: relayed
    # to peers, who trust them only against the fingerprints they pinned themselves.
    ed25519_public_key: Mapped[bytes] = mapped_column(
        LargeBinary, default=b"", server_default=text("''")
    )
    x25519_signature: Mapped[bytes] = mapped_column(
        LargeBinary, default=b"", server_default=text("''")
    )
    # 0: never. A revoked or expired node token is refused (UNAUTHENTICATED).
    token_expires_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    revoked_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class Run(Base):
    """A federated training run: its settings as created, its state and its pinned facts."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[RunState] = mapped_column(_enum(RunState), default=RunState.PENDING)
    model: Mapped[str] = mapped_column(String(256))
    rounds: Mapped[int] = mapped_column(Integer)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    min_clients: Mapped[int] = mapped_column(Integer)
    max_clients: Mapped[int] = mapped_column(Integer, default=0)
    fraction: Mapped[float] = mapped_column(Float, default=1.0)
    round_deadline: Mapped[float] = mapped_column(Float)
    strategy: Mapped[str] = mapped_column(String(32), default="fedavg")
    secure: Mapped[str] = mapped_column(String(16), default=SchemeName.NONE.value)
    config: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    custodian: Mapped[str] = mapped_column(String(128), default="")
    public_key: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    key_id: Mapped[str] = mapped_column(String(32), default="")
    key_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    initial_model_sha256: Mapped[str] = mapped_column(String(64), default="")
    base_model_sha256: Mapped[str] = mapped_column(String(64), default="")
    final_model_sha256: Mapped[str] = mapped_column(String(64), default="")
    tensor_specs: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    round_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float] = mapped_column(Float, default=0.0)
    ended_at: Mapped[float] = mapped_column(Float, default=0.0)
    # Secure runs: the node ids of the run's sites, fixed when the run starts (keys are
    # sealed to these and no others), and the custodian's signed key statement.
    participants: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    key_statement: Mapped[bytes] = mapped_column(
        LargeBinary, default=b"", server_default=text("''")
    )
    key_statement_signature: Mapped[bytes] = mapped_column(
        LargeBinary, default=b"", server_default=text("''")
    )
    # The data schema every site must match (protos.data_schema, canonical JSON): the
    # operator's, or the first participant's, pinned before round 1. "" until pinned.
    data_schema: Mapped[str] = mapped_column(Text, default="", server_default="")

    def model_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(dtype, shape)`` of each exchanged tensor, as the initial weights declared them."""
        out = []
        for spec in self.tensor_specs:
            shape = spec.get("shape", [])
            out.append((str(spec.get("dtype")), tuple(int(d) for d in shape)))  # type: ignore[attr-defined]
        return out

    def value_count(self) -> int:
        """Number of values in one update: what the Paillier codec packs."""
        total = 0
        for _, shape in self.model_shapes():
            size = 1
            for dim in shape:
                size *= dim
            total += size
        return total

    def settings(self) -> RunConfig:
        """The run's config, typed (coordinator/runs.py; checked when the run was created)."""
        from coordinator.runs import RunConfig

        return RunConfig.parse(self.config, self.min_clients, self.secure == SchemeName.PAILLIER)

    def encoding(self) -> dict[str, float | int]:
        """The Paillier encoding of a secure run as a dict: ``settings().encoding``'s values."""
        return self.settings().encoding.as_dict()


class Round(Base):
    """One round of a run: its deadline, and the aggregate's weight and hash once closed."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[RoundState] = mapped_column(_enum(RoundState), default=RoundState.OPEN)
    deadline: Mapped[float] = mapped_column(Float)
    opened_at: Mapped[float] = mapped_column(Float, default=now)
    closed_at: Mapped[float] = mapped_column(Float, default=0.0)
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    total_weight: Mapped[int] = mapped_column(BigInteger, default=0)
    num_updates: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class Task(Base):
    """A unit of work handed to one node for one run (and round, for training)."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind))
    round: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState), default=TaskState.PENDING)
    deadline: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    delivered_at: Mapped[float] = mapped_column(Float, default=0.0)


class Update(Base):
    """One site's accepted update for a round: where its bytes are and the weight it claims.

    The bytes live in the blob store (``coordinator.blobs``); this row holds their sha256.
    """

    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("run_id", "round", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    encoding: Mapped[str] = mapped_column(String(32))
    num_examples: Mapped[int] = mapped_column(BigInteger)
    weight: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    received_at: Mapped[float] = mapped_column(Float, default=now)
    # The site's Ed25519 signature over crypto.identity.update_statement(...).
    signature: Mapped[bytes] = mapped_column(LargeBinary, default=b"", server_default=text("''"))
    # Secure runs: crypto.plaintext_proof bytes, relayed to every site in the manifest.
    plaintext_proof: Mapped[bytes | None] = mapped_column(LargeBinary, default=b"", nullable=True)


class ModelVersion(Base):
    """A model of a run after a round (or the initial one): plaintext or encrypted aggregate."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("run_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    total_weight: Mapped[int] = mapped_column(BigInteger, default=0)
    num_updates: Mapped[int] = mapped_column(Integer, default=0)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class SealedKey(Base):
    """A run's private key sealed to one participant: only that site can open it."""

    __tablename__ = "sealed_keys"
    __table_args__ = (UniqueConstraint("run_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class SiteAudit(Base):
    """The SHAP audit summary a site sent for a run (one per site and run)."""

    __tablename__ = "site_audits"
    __table_args__ = (UniqueConstraint("run_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    summary: Mapped[dict[str, object]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float, default=now)


class SiteRefusal(Base):
    """A task a site refused (its policy, a pin, an aggregate that did not verify), and why."""

    __tablename__ = "site_refusals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    task_id: Mapped[str] = mapped_column(String(36))
    round: Mapped[int] = mapped_column(Integer, default=0)
    code: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1000))
    time: Mapped[float] = mapped_column(Float, default=now)


class RunSite(Base):
    """A site's provenance in one run, frozen when it first took part (reports read this).

    Copied from what the site reported at that time (rows, data and schema fingerprints,
    agent version), so a site that later re-joins with other data cannot change what a
    finished run's report says it trained on.
    """

    __tablename__ = "run_sites"
    __table_args__ = (UniqueConstraint("run_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    site_name: Mapped[str] = mapped_column(String(128))
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    data_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    schema_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    recorded_at: Mapped[float] = mapped_column(Float, default=now)


class AuditEvent(Base):
    """One row of the hash-chained audit log; ``hash`` covers ``prev_hash`` and the row."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[float] = mapped_column(Float)
    run_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Enrolment(Base):
    """A one-time token a site exchanges for its node credential on its first join."""

    __tablename__ = "enrolments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_name: Mapped[str] = mapped_column(String(128), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float] = mapped_column(Float, default=0.0)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Operator(Base):
    """A person or tool calling the admin service, with a role: admin or auditor."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    # 0: never.
    expires_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    revoked_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class ThresholdKey(Base):
    """A threshold run's public custody: verification keys and the custodian's statement.

    Nothing secret: the shares sit sealed in ``sealed_keys`` (one per holder), and the
    custodian erased the whole key after dealing.
    """

    __tablename__ = "threshold_keys"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    threshold: Mapped[int] = mapped_column(Integer)
    parties: Mapped[int] = mapped_column(Integer)
    verification_keys: Mapped[bytes] = mapped_column(LargeBinary)
    statement: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class ThresholdPartial(Base):
    """One site's partial decryption of one round, sealed under the run's group key."""

    __tablename__ = "threshold_partials"
    __table_args__ = (UniqueConstraint("run_id", "round", "node_id", "part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    site_name: Mapped[str] = mapped_column(String(128))
    # 0: the site's blocks of the spread work; 1: the whole vector (client/threshold_partials.py);
    # 2: its signed echo of the aggregate, in the clear (coordinator/threshold.py ECHO_PART).
    part: Mapped[int] = mapped_column(Integer, default=0)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float, default=now)
