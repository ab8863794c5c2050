from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]

class SecureScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECURE_SCHEME_UNSPECIFIED: _ClassVar[SecureScheme]
    SECURE_SCHEME_NONE: _ClassVar[SecureScheme]
    SECURE_SCHEME_PAILLIER: _ClassVar[SecureScheme]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_STOPPED: RunState
SECURE_SCHEME_UNSPECIFIED: SecureScheme
SECURE_SCHEME_NONE: SecureScheme
SECURE_SCHEME_PAILLIER: SecureScheme

class Chunk(_message.Message):
    __slots__ = ("data", "offset", "total_size", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("double_value", "int_value", "bool_value", "string_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    bool_value: bool
    string_value: str
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ...) -> None: ...

class EncodingParams(_message.Message):
    __slots__ = ("clip", "bits", "max_weight", "key_bits", "key_id", "public_key", "key_fingerprint", "weight_cap")
    CLIP_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEY_BITS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CAP_FIELD_NUMBER: _ClassVar[int]
    clip: float
    bits: int
    max_weight: int
    key_bits: int
    key_id: str
    public_key: bytes
    key_fingerprint: str
    weight_cap: int
    def __init__(self, clip: _Optional[float] = ..., bits: _Optional[int] = ..., max_weight: _Optional[int] = ..., key_bits: _Optional[int] = ..., key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., key_fingerprint: _Optional[str] = ..., weight_cap: _Optional[int] = ...) -> None: ...

class LogHead(_message.Message):
    __slots__ = ("seq", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: str
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[str] = ...) -> None: ...

class PrivacyPlan(_message.Message):
    __slots__ = ("mode", "epsilon", "delta", "noise_multiplier", "max_grad_norm", "accountant", "quorum", "max_sites")
    MODE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    mode: str
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    quorum: int
    max_sites: int
    def __init__(self, mode: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., accountant: _Optional[str] = ..., quorum: _Optional[int] = ..., max_sites: _Optional[int] = ...) -> None: ...
