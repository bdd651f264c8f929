from fedtrust.v1 import coordinator_pb2 as _coordinator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MpcHeader(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope", "admissions")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ADMISSIONS_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    admissions: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ..., admissions: _Optional[_Iterable[bytes]] = ...) -> None: ...

class MpcFrame(_message.Message):
    __slots__ = ("peer", "sealed")
    PEER_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    peer: int
    sealed: bytes
    def __init__(self, peer: _Optional[int] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class MpcIn(_message.Message):
    __slots__ = ("header", "frame")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    header: MpcHeader
    frame: MpcFrame
    def __init__(self, header: _Optional[_Union[MpcHeader, _Mapping]] = ..., frame: _Optional[_Union[MpcFrame, _Mapping]] = ...) -> None: ...

class MpcResult(_message.Message):
    __slots__ = ("attestation_envelope", "sealed_output")
    ATTESTATION_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SEALED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    attestation_envelope: bytes
    sealed_output: bytes
    def __init__(self, attestation_envelope: _Optional[bytes] = ..., sealed_output: _Optional[bytes] = ...) -> None: ...

class MpcOut(_message.Message):
    __slots__ = ("frame", "result")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    frame: MpcFrame
    result: MpcResult
    def __init__(self, frame: _Optional[_Union[MpcFrame, _Mapping]] = ..., result: _Optional[_Union[MpcResult, _Mapping]] = ...) -> None: ...

class MpcSubmission(_message.Message):
    __slots__ = ("job_envelope", "contract_envelope")
    JOB_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    job_envelope: bytes
    contract_envelope: bytes
    def __init__(self, job_envelope: _Optional[bytes] = ..., contract_envelope: _Optional[bytes] = ...) -> None: ...
