from hewer._proto import dispatcher_pb2 as _dispatcher_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("version", "max_actions_per_batch", "max_reports_per_call", "max_runs_per_wait")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIONS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_REPORTS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_PER_WAIT_FIELD_NUMBER: _ClassVar[int]
    version: str
    max_actions_per_batch: int
    max_reports_per_call: int
    max_runs_per_wait: int
    def __init__(self, version: _Optional[str] = ..., max_actions_per_batch: _Optional[int] = ..., max_reports_per_call: _Optional[int] = ..., max_runs_per_wait: _Optional[int] = ...) -> None: ...

class ListenRequest(_message.Message):
    __slots__ = ("worker_id", "max_batch", "running")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    max_batch: int
    running: _containers.RepeatedCompositeFieldContainer[RunningAttempt]
    def __init__(self, worker_id: _Optional[str] = ..., max_batch: _Optional[int] = ..., running: _Optional[_Iterable[_Union[RunningAttempt, _Mapping]]] = ...) -> None: ...

class RunningAttempt(_message.Message):
    __slots__ = ("task_run_external_id", "retry_count")
    TASK_RUN_EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    task_run_external_id: str
    retry_count: int
    def __init__(self, task_run_external_id: _Optional[str] = ..., retry_count: _Optional[int] = ...) -> None: ...

class ActionBatch(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[_dispatcher_pb2.AssignedAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[_dispatcher_pb2.AssignedAction, _Mapping]]] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_dispatcher_pb2.StepActionEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_dispatcher_pb2.StepActionEvent, _Mapping]]] = ...) -> None: ...

class ReportResult(_message.Message):
    __slots__ = ("applied", "reason")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    reason: str
    def __init__(self, applied: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ReportResult, _Mapping]]] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("run_ids",)
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WaitResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_dispatcher_pb2.WorkflowRunEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_dispatcher_pb2.WorkflowRunEvent, _Mapping]]] = ...) -> None: ...
