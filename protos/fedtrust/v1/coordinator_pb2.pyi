from fedtrust.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class SubmitHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "he_context_size")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    he_context_size: int
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., he_context_size: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("header", "he_context_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HE_CONTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    he_context_chunk: bytes
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., he_context_chunk: _Optional[bytes] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: bytes
    def __init__(self, receipt: _Optional[bytes] = ...) -> None: ...

class RelayedRelease(_message.Message):
    __slots__ = ("node", "ciphertext_sizes")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_SIZES_FIELD_NUMBER: _ClassVar[int]
    node: str
    ciphertext_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node: _Optional[str] = ..., ciphertext_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("progress", "ciphertext_chunk", "outcome", "relayed")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    ciphertext_chunk: bytes
    outcome: Outcome
    relayed: RelayedRelease
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., ciphertext_chunk: _Optional[bytes] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., relayed: _Optional[_Union[RelayedRelease, _Mapping]] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "error", "contract_digest", "participants", "created_at", "updated_at", "kind", "stage", "round", "rounds", "answered", "heartbeat_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    error: str
    contract_digest: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    created_at: str
    updated_at: str
    kind: str
    stage: str
    round: int
    rounds: int
    answered: int
    heartbeat_at: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., error: _Optional[str] = ..., contract_digest: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., kind: _Optional[str] = ..., stage: _Optional[str] = ..., round: _Optional[int] = ..., rounds: _Optional[int] = ..., answered: _Optional[int] = ..., heartbeat_at: _Optional[str] = ...) -> None: ...

class TrainingSubmission(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ...) -> None: ...

class TrainingOutcome(_message.Message):
    __slots__ = ("receipt", "model_size")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    receipt: bytes
    model_size: int
    def __init__(self, receipt: _Optional[bytes] = ..., model_size: _Optional[int] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("progress", "model_chunk", "outcome")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    model_chunk: bytes
    outcome: TrainingOutcome
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., model_chunk: _Optional[bytes] = ..., outcome: _Optional[_Union[TrainingOutcome, _Mapping]] = ...) -> None: ...
