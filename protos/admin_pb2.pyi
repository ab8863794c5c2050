from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DashboardWhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DashboardWhoAmIReply(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricsReply(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EnrolSiteRequest(_message.Message):
    __slots__ = ("site_name", "ttl_seconds")
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    ttl_seconds: float
    def __init__(self, site_name: _Optional[str] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class EnrolSiteReply(_message.Message):
    __slots__ = ("token", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix: float
    def __init__(self, token: _Optional[str] = ..., expires_unix: _Optional[float] = ...) -> None: ...

class AddOperatorRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class AddOperatorReply(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class ExportReportRequest(_message.Message):
    __slots__ = ("run_id", "format")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    format: str
    def __init__(self, run_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("model", "rounds", "min_clients", "max_clients", "fraction", "round_deadline_seconds", "local_epochs", "lr", "secure", "custodian", "strategy", "config_json", "name", "allow_two_site_secure", "threshold", "privacy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOW_TWO_SITE_SECURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    model: str
    rounds: int
    min_clients: int
    max_clients: int
    fraction: float
    round_deadline_seconds: float
    local_epochs: int
    lr: float
    secure: _common_pb2.SecureScheme
    custodian: str
    strategy: str
    config_json: str
    name: str
    allow_two_site_secure: bool
    threshold: int
    privacy: _common_pb2.PrivacyPlan
    def __init__(self, model: _Optional[str] = ..., rounds: _Optional[int] = ..., min_clients: _Optional[int] = ..., max_clients: _Optional[int] = ..., fraction: _Optional[float] = ..., round_deadline_seconds: _Optional[float] = ..., local_epochs: _Optional[int] = ..., lr: _Optional[float] = ..., secure: _Optional[_Union[_common_pb2.SecureScheme, str]] = ..., custodian: _Optional[str] = ..., strategy: _Optional[str] = ..., config_json: _Optional[str] = ..., name: _Optional[str] = ..., allow_two_site_secure: _Optional[bool] = ..., threshold: _Optional[int] = ..., privacy: _Optional[_Union[_common_pb2.PrivacyPlan, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("number", "state", "selected", "submitted", "total_weight", "metrics", "opened_unix", "closed_unix", "model_sha256", "bytes_received")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OPENED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CLOSED_UNIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    number: int
    state: str
    selected: int
    submitted: int
    total_weight: int
    metrics: _containers.ScalarMap[str, float]
    opened_unix: float
    closed_unix: float
    model_sha256: str
    bytes_received: int
    def __init__(self, number: _Optional[int] = ..., state: _Optional[str] = ..., selected: _Optional[int] = ..., submitted: _Optional[int] = ..., total_weight: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., opened_unix: _Optional[float] = ..., closed_unix: _Optional[float] = ..., model_sha256: _Optional[str] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "name", "state", "model", "rounds", "current_round", "min_clients", "secure", "strategy", "config_json", "created_unix", "started_unix", "ended_unix", "failure_reason", "key_fingerprint", "custodian", "round_infos", "final_model_sha256", "audits_received", "waiting_for", "refusals", "site_results", "threshold_custody")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    ROUND_INFOS_FIELD_NUMBER: _ClassVar[int]
    FINAL_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    AUDITS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    SITE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_CUSTODY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    state: _common_pb2.RunState
    model: str
    rounds: int
    current_round: int
    min_clients: int
    secure: _common_pb2.SecureScheme
    strategy: str
    config_json: str
    created_unix: float
    started_unix: float
    ended_unix: float
    failure_reason: str
    key_fingerprint: str
    custodian: str
    round_infos: _containers.RepeatedCompositeFieldContainer[RoundInfo]
    final_model_sha256: str
    audits_received: int
    waiting_for: str
    refusals: _containers.RepeatedCompositeFieldContainer[SiteRefusal]
    site_results: _containers.RepeatedCompositeFieldContainer[SiteResult]
    threshold_custody: ThresholdCustody
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.RunState, str]] = ..., model: _Optional[str] = ..., rounds: _Optional[int] = ..., current_round: _Optional[int] = ..., min_clients: _Optional[int] = ..., secure: _Optional[_Union[_common_pb2.SecureScheme, str]] = ..., strategy: _Optional[str] = ..., config_json: _Optional[str] = ..., created_unix: _Optional[float] = ..., started_unix: _Optional[float] = ..., ended_unix: _Optional[float] = ..., failure_reason: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., custodian: _Optional[str] = ..., round_infos: _Optional[_Iterable[_Union[RoundInfo, _Mapping]]] = ..., final_model_sha256: _Optional[str] = ..., audits_received: _Optional[int] = ..., waiting_for: _Optional[str] = ..., refusals: _Optional[_Iterable[_Union[SiteRefusal, _Mapping]]] = ..., site_results: _Optional[_Iterable[_Union[SiteResult, _Mapping]]] = ..., threshold_custody: _Optional[_Union[ThresholdCustody, _Mapping]] = ...) -> None: ...

class ThresholdCustody(_message.Message):
    __slots__ = ("threshold", "parties", "holders", "key_fingerprint", "custodian", "erasure", "statement_sha256", "verified", "problem", "echo_quorum")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ECHO_QUORUM_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    parties: int
    holders: _containers.RepeatedScalarFieldContainer[str]
    key_fingerprint: str
    custodian: str
    erasure: str
    statement_sha256: str
    verified: bool
    problem: str
    echo_quorum: int
    def __init__(self, threshold: _Optional[int] = ..., parties: _Optional[int] = ..., holders: _Optional[_Iterable[str]] = ..., key_fingerprint: _Optional[str] = ..., custodian: _Optional[str] = ..., erasure: _Optional[str] = ..., statement_sha256: _Optional[str] = ..., verified: _Optional[bool] = ..., problem: _Optional[str] = ..., echo_quorum: _Optional[int] = ...) -> None: ...

class SiteResult(_message.Message):
    __slots__ = ("site_name", "audit", "holdout_metrics")
    class HoldoutMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_METRICS_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    audit: str
    holdout_metrics: _containers.ScalarMap[str, float]
    def __init__(self, site_name: _Optional[str] = ..., audit: _Optional[str] = ..., holdout_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SiteRefusal(_message.Message):
    __slots__ = ("site_name", "round", "code", "reason", "time_unix")
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    site_name: str
    round: int
    code: str
    reason: str
    time_unix: float
    def __init__(self, site_name: _Optional[str] = ..., round: _Optional[int] = ..., code: _Optional[str] = ..., reason: _Optional[str] = ..., time_unix: _Optional[float] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("time_unix", "kind", "message", "run")
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    kind: str
    message: str
    run: RunInfo
    def __init__(self, time_unix: _Optional[float] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., run: _Optional[_Union[RunInfo, _Mapping]] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "site_name", "online", "last_seen_unix", "x25519_fingerprint")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    X25519_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    site_name: str
    online: bool
    last_seen_unix: float
    x25519_fingerprint: str
    def __init__(self, node_id: _Optional[str] = ..., site_name: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen_unix: _Optional[float] = ..., x25519_fingerprint: _Optional[str] = ...) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class ListRunsReply(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("run_id", "after_seq", "limit")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_seq: int
    limit: int
    def __init__(self, run_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeReply(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "time_unix", "run_id", "kind", "actor", "details_json", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time_unix: float
    run_id: str
    kind: str
    actor: str
    details_json: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time_unix: _Optional[float] = ..., run_id: _Optional[str] = ..., kind: _Optional[str] = ..., actor: _Optional[str] = ..., details_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class AuditLog(_message.Message):
    __slots__ = ("entries", "more", "head_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    more: bool
    head_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., more: _Optional[bool] = ..., head_seq: _Optional[int] = ...) -> None: ...
