from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_NONE: _ClassVar[TaskKind]
    TASK_KIND_INIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_KEYGEN: _ClassVar[TaskKind]
    TASK_KIND_AUDIT: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_NONE: TaskKind
TASK_KIND_INIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_KEYGEN: TaskKind
TASK_KIND_AUDIT: TaskKind

class LedgerEntry(_message.Message):
    __slots__ = ("run_id", "statement", "signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    statement: bytes
    signature: bytes
    def __init__(self, run_id: _Optional[str] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FinalModelRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("site_name", "x25519_public_key", "enrolment_token", "node_token", "agent_version", "capabilities", "ed25519_public_key", "x25519_signature")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENROLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ED25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    X25519_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    x25519_public_key: bytes
    enrolment_token: str
    node_token: str
    agent_version: str
    capabilities: _containers.ScalarMap[str, str]
    ed25519_public_key: bytes
    x25519_signature: bytes
    def __init__(self, site_name: _Optional[str] = ..., x25519_public_key: _Optional[bytes] = ..., enrolment_token: _Optional[str] = ..., node_token: _Optional[str] = ..., agent_version: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., ed25519_public_key: _Optional[bytes] = ..., x25519_signature: _Optional[bytes] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("node_id", "node_token", "heartbeat_interval_seconds", "log_head")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOG_HEAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_token: str
    heartbeat_interval_seconds: float
    log_head: _common_pb2.LogHead
    def __init__(self, node_id: _Optional[str] = ..., node_token: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., log_head: _Optional[_Union[_common_pb2.LogHead, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("server_time_unix",)
    SERVER_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    server_time_unix: float
    def __init__(self, server_time_unix: _Optional[float] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("wait_seconds",)
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    def __init__(self, wait_seconds: _Optional[float] = ...) -> None: ...

class AggregateRef(_message.Message):
    __slots__ = ("round", "sha256", "total_weight", "num_updates", "count", "contributions")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_UPDATES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    round: int
    sha256: str
    total_weight: int
    num_updates: int
    count: int
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    def __init__(self, round: _Optional[int] = ..., sha256: _Optional[str] = ..., total_weight: _Optional[int] = ..., num_updates: _Optional[int] = ..., count: _Optional[int] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("node_id", "site_name", "payload_sha256", "weight", "payload_size", "signature", "plaintext_proof")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_PROOF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    site_name: str
    payload_sha256: str
    weight: int
    payload_size: int
    signature: bytes
    plaintext_proof: bytes
    def __init__(self, node_id: _Optional[str] = ..., site_name: _Optional[str] = ..., payload_sha256: _Optional[str] = ..., weight: _Optional[int] = ..., payload_size: _Optional[int] = ..., signature: _Optional[bytes] = ..., plaintext_proof: _Optional[bytes] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("node_id", "site_name", "x25519_public_key", "ed25519_public_key", "x25519_signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ED25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    X25519_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    site_name: str
    x25519_public_key: bytes
    ed25519_public_key: bytes
    x25519_signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., site_name: _Optional[str] = ..., x25519_public_key: _Optional[bytes] = ..., ed25519_public_key: _Optional[bytes] = ..., x25519_signature: _Optional[bytes] = ...) -> None: ...

class KeyStatement(_message.Message):
    __slots__ = ("statement", "signature", "custodian")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    statement: bytes
    signature: bytes
    custodian: str
    def __init__(self, statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., custodian: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "task_id", "run_id", "round", "model_sha256", "aggregates", "config_json", "secure", "encoding", "sealed_private_key", "deadline_unix", "participants", "key_statement", "log_head", "custodian", "privacy", "threshold", "threshold_dealing")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SEALED_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    KEY_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    LOG_HEAD_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_DEALING_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    task_id: str
    run_id: str
    round: int
    model_sha256: str
    aggregates: _containers.RepeatedCompositeFieldContainer[AggregateRef]
    config_json: str
    secure: _common_pb2.SecureScheme
    encoding: _common_pb2.EncodingParams
    sealed_private_key: bytes
    deadline_unix: float
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    key_statement: KeyStatement
    log_head: _common_pb2.LogHead
    custodian: str
    privacy: _common_pb2.PrivacyPlan
    threshold: int
    threshold_dealing: ThresholdDealing
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., model_sha256: _Optional[str] = ..., aggregates: _Optional[_Iterable[_Union[AggregateRef, _Mapping]]] = ..., config_json: _Optional[str] = ..., secure: _Optional[_Union[_common_pb2.SecureScheme, str]] = ..., encoding: _Optional[_Union[_common_pb2.EncodingParams, _Mapping]] = ..., sealed_private_key: _Optional[bytes] = ..., deadline_unix: _Optional[float] = ..., participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., key_statement: _Optional[_Union[KeyStatement, _Mapping]] = ..., log_head: _Optional[_Union[_common_pb2.LogHead, _Mapping]] = ..., custodian: _Optional[str] = ..., privacy: _Optional[_Union[_common_pb2.PrivacyPlan, _Mapping]] = ..., threshold: _Optional[int] = ..., threshold_dealing: _Optional[_Union[ThresholdDealing, _Mapping]] = ...) -> None: ...

class ThresholdDealing(_message.Message):
    __slots__ = ("verification_keys", "statement", "signature")
    VERIFICATION_KEYS_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    verification_keys: bytes
    statement: bytes
    signature: bytes
    def __init__(self, verification_keys: _Optional[bytes] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PartialSubmission(_message.Message):
    __slots__ = ("run_id", "round", "sealed", "part")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    sealed: bytes
    part: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., sealed: _Optional[bytes] = ..., part: _Optional[int] = ...) -> None: ...

class PartialFetchRequest(_message.Message):
    __slots__ = ("run_id", "round", "wait_seconds", "at_least")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    wait_seconds: float
    at_least: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., at_least: _Optional[int] = ...) -> None: ...

class PartialEnvelope(_message.Message):
    __slots__ = ("site_name", "node_id", "sealed", "part")
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    node_id: str
    sealed: bytes
    part: int
    def __init__(self, site_name: _Optional[str] = ..., node_id: _Optional[str] = ..., sealed: _Optional[bytes] = ..., part: _Optional[int] = ...) -> None: ...

class PartialFetchReply(_message.Message):
    __slots__ = ("partials", "threshold")
    PARTIALS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    partials: _containers.RepeatedCompositeFieldContainer[PartialEnvelope]
    threshold: int
    def __init__(self, partials: _Optional[_Iterable[_Union[PartialEnvelope, _Mapping]]] = ..., threshold: _Optional[int] = ...) -> None: ...

class PartialComplaint(_message.Message):
    __slots__ = ("run_id", "round", "accused_site", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCUSED_SITE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    accused_site: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., accused_site: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskRefusal(_message.Message):
    __slots__ = ("task_id", "run_id", "code", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    code: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FetchModelRequest(_message.Message):
    __slots__ = ("run_id", "sha256")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sha256: str
    def __init__(self, run_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("task_id", "run_id", "round", "num_examples", "weight", "metrics", "payload_size", "payload_sha256", "encoding", "key_id", "base_model_sha256", "signature", "plaintext_proof")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Scalar, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_PROOF_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    round: int
    num_examples: int
    weight: int
    metrics: _containers.MessageMap[str, _common_pb2.Scalar]
    payload_size: int
    payload_sha256: str
    encoding: str
    key_id: str
    base_model_sha256: str
    signature: bytes
    plaintext_proof: bytes
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., weight: _Optional[int] = ..., metrics: _Optional[_Mapping[str, _common_pb2.Scalar]] = ..., payload_size: _Optional[int] = ..., payload_sha256: _Optional[str] = ..., encoding: _Optional[str] = ..., key_id: _Optional[str] = ..., base_model_sha256: _Optional[str] = ..., signature: _Optional[bytes] = ..., plaintext_proof: _Optional[bytes] = ...) -> None: ...

class UpdateMessage(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("id", "message", "log_head")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_HEAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    message: str
    log_head: _common_pb2.LogHead
    def __init__(self, id: _Optional[str] = ..., message: _Optional[str] = ..., log_head: _Optional[_Union[_common_pb2.LogHead, _Mapping]] = ...) -> None: ...

class SealedKey(_message.Message):
    __slots__ = ("node_id", "sealed_private_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    sealed_private_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., sealed_private_key: _Optional[bytes] = ...) -> None: ...

class KeyBundle(_message.Message):
    __slots__ = ("task_id", "run_id", "public_key", "key_fingerprint", "key_bits", "sealed", "statement", "threshold_dealing")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KEY_BITS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_DEALING_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    public_key: bytes
    key_fingerprint: str
    key_bits: int
    sealed: _containers.RepeatedCompositeFieldContainer[SealedKey]
    statement: KeyStatement
    threshold_dealing: ThresholdDealing
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., key_fingerprint: _Optional[str] = ..., key_bits: _Optional[int] = ..., sealed: _Optional[_Iterable[_Union[SealedKey, _Mapping]]] = ..., statement: _Optional[_Union[KeyStatement, _Mapping]] = ..., threshold_dealing: _Optional[_Union[ThresholdDealing, _Mapping]] = ...) -> None: ...

class AuditSubmission(_message.Message):
    __slots__ = ("task_id", "run_id", "summary_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    summary_json: str
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., summary_json: _Optional[str] = ...) -> None: ...

class EchoSubmission(_message.Message):
    __slots__ = ("run_id", "round", "statement", "signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    statement: bytes
    signature: bytes
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EchoFetchRequest(_message.Message):
    __slots__ = ("run_id", "round", "wait_seconds", "at_least")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    wait_seconds: float
    at_least: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., at_least: _Optional[int] = ...) -> None: ...

class EchoEnvelope(_message.Message):
    __slots__ = ("site_name", "node_id", "statement", "signature")
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    node_id: str
    statement: bytes
    signature: bytes
    def __init__(self, site_name: _Optional[str] = ..., node_id: _Optional[str] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EchoFetchReply(_message.Message):
    __slots__ = ("echoes",)
    ECHOES_FIELD_NUMBER: _ClassVar[int]
    echoes: _containers.RepeatedCompositeFieldContainer[EchoEnvelope]
    def __init__(self, echoes: _Optional[_Iterable[_Union[EchoEnvelope, _Mapping]]] = ...) -> None: ...
