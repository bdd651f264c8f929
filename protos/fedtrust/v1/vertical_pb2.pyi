from fedtrust.v1 import coordinator_pb2 as _coordinator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PsiHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "admissions", "step", "sealed_size")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ADMISSIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEALED_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    admissions: _containers.RepeatedScalarFieldContainer[bytes]
    step: int
    sealed_size: int
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., admissions: _Optional[_Iterable[bytes]] = ..., step: _Optional[int] = ..., sealed_size: _Optional[int] = ...) -> None: ...

class PsiRequest(_message.Message):
    __slots__ = ("header", "sealed_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SEALED_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PsiHeader
    sealed_chunk: bytes
    def __init__(self, header: _Optional[_Union[PsiHeader, _Mapping]] = ..., sealed_chunk: _Optional[bytes] = ...) -> None: ...

class PsiOutcome(_message.Message):
    __slots__ = ("sealed_size", "attestation_envelope")
    SEALED_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    sealed_size: int
    attestation_envelope: bytes
    def __init__(self, sealed_size: _Optional[int] = ..., attestation_envelope: _Optional[bytes] = ...) -> None: ...

class PsiReply(_message.Message):
    __slots__ = ("sealed_chunk", "outcome")
    SEALED_CHUNK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    sealed_chunk: bytes
    outcome: PsiOutcome
    def __init__(self, sealed_chunk: _Optional[bytes] = ..., outcome: _Optional[_Union[PsiOutcome, _Mapping]] = ...) -> None: ...

class VerticalSubmission(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ...) -> None: ...
