from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdmitRequest(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "revocation_list")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_LIST_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    revocation_list: bytes
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., revocation_list: _Optional[bytes] = ...) -> None: ...

class AdmitReply(_message.Message):
    __slots__ = ("admission_envelope",)
    ADMISSION_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    admission_envelope: bytes
    def __init__(self, admission_envelope: _Optional[bytes] = ...) -> None: ...

class QueryHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "he_context_size", "admissions")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    ADMISSIONS_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    he_context_size: int
    admissions: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., he_context_size: _Optional[int] = ..., admissions: _Optional[_Iterable[bytes]] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("header", "he_context_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: QueryHeader
    he_context_chunk: bytes
    def __init__(self, header: _Optional[_Union[QueryHeader, _Mapping]] = ..., he_context_chunk: _Optional[bytes] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("attestation_envelope", "ciphertext_sizes")
    ATTESTATION_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_SIZES_FIELD_NUMBER: _ClassVar[int]
    attestation_envelope: bytes
    ciphertext_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, attestation_envelope: _Optional[bytes] = ..., ciphertext_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("ciphertext_chunk", "release")
    CIPHERTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ciphertext_chunk: bytes
    release: Release
    def __init__(self, ciphertext_chunk: _Optional[bytes] = ..., release: _Optional[_Union[Release, _Mapping]] = ...) -> None: ...

class TrainHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "message_size", "admissions")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ADMISSIONS_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    message_size: int
    admissions: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., message_size: _Optional[int] = ..., admissions: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("header", "message_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TrainHeader
    message_chunk: bytes
    def __init__(self, header: _Optional[_Union[TrainHeader, _Mapping]] = ..., message_chunk: _Optional[bytes] = ...) -> None: ...

class RoundRelease(_message.Message):
    __slots__ = ("phase", "round", "global_digest", "vector_size", "signature")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    round: int
    global_digest: str
    vector_size: int
    signature: bytes
    def __init__(self, phase: _Optional[str] = ..., round: _Optional[int] = ..., global_digest: _Optional[str] = ..., vector_size: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TrainReply(_message.Message):
    __slots__ = ("vector_chunk", "release")
    VECTOR_CHUNK_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    vector_chunk: bytes
    release: RoundRelease
    def __init__(self, vector_chunk: _Optional[bytes] = ..., release: _Optional[_Union[RoundRelease, _Mapping]] = ...) -> None: ...

class SignedVector(_message.Message):
    __slots__ = ("node", "job_digest", "phase", "round", "signature", "vector_size")
    NODE_FIELD_NUMBER: _ClassVar[int]
    JOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    node: str
    job_digest: str
    phase: str
    round: int
    signature: bytes
    vector_size: int
    def __init__(self, node: _Optional[str] = ..., job_digest: _Optional[str] = ..., phase: _Optional[str] = ..., round: _Optional[int] = ..., signature: _Optional[bytes] = ..., vector_size: _Optional[int] = ...) -> None: ...

class ForwardHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "phase", "round", "vectors")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    phase: str
    round: int
    vectors: _containers.RepeatedCompositeFieldContainer[SignedVector]
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., phase: _Optional[str] = ..., round: _Optional[int] = ..., vectors: _Optional[_Iterable[_Union[SignedVector, _Mapping]]] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("header", "vector_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VECTOR_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ForwardHeader
    vector_chunk: bytes
    def __init__(self, header: _Optional[_Union[ForwardHeader, _Mapping]] = ..., vector_chunk: _Optional[bytes] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("global_digest",)
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    global_digest: str
    def __init__(self, global_digest: _Optional[str] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ...) -> None: ...

class FinishReply(_message.Message):
    __slots__ = ("attestation_envelope",)
    ATTESTATION_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    attestation_envelope: bytes
    def __init__(self, attestation_envelope: _Optional[bytes] = ...) -> None: ...
