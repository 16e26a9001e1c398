from evo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProgramLanguage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROGRAM_LANGUAGE_UNSPECIFIED: _ClassVar[ProgramLanguage]
    PROGRAM_LANGUAGE_PYTORCH: _ClassVar[ProgramLanguage]
    PROGRAM_LANGUAGE_JAX: _ClassVar[ProgramLanguage]
PROGRAM_LANGUAGE_UNSPECIFIED: ProgramLanguage
PROGRAM_LANGUAGE_PYTORCH: ProgramLanguage
PROGRAM_LANGUAGE_JAX: ProgramLanguage

class Program(_message.Message):
    __slots__ = ("code", "language")
    CODE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    language: ProgramLanguage
    def __init__(self, code: _Optional[str] = ..., language: _Optional[_Union[ProgramLanguage, str]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("steps", "seed", "eval_every")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    steps: int
    seed: int
    eval_every: int
    def __init__(self, steps: _Optional[int] = ..., seed: _Optional[int] = ..., eval_every: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("wall_seconds", "memory_bytes", "max_processes", "max_output_bytes", "max_params")
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    wall_seconds: float
    memory_bytes: int
    max_processes: int
    max_output_bytes: int
    max_params: int
    def __init__(self, wall_seconds: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., max_processes: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., max_params: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("program", "task", "budget", "limits", "request_id")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    program: Program
    task: str
    budget: Budget
    limits: Limits
    request_id: str
    def __init__(self, program: _Optional[_Union[Program, _Mapping]] = ..., task: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("backend", "isolated", "limits", "device")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    isolated: bool
    limits: Limits
    device: str
    def __init__(self, backend: _Optional[str] = ..., isolated: _Optional[bool] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., device: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("status", "message", "metrics", "log_tail", "sandbox", "trainer_id", "request_id", "wall_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.EvalStatus
    message: str
    metrics: _common_pb2.Metrics
    log_tail: str
    sandbox: SandboxInfo
    trainer_id: str
    request_id: str
    wall_seconds: float
    def __init__(self, status: _Optional[_Union[_common_pb2.EvalStatus, str]] = ..., message: _Optional[str] = ..., metrics: _Optional[_Union[_common_pb2.Metrics, _Mapping]] = ..., log_tail: _Optional[str] = ..., sandbox: _Optional[_Union[SandboxInfo, _Mapping]] = ..., trainer_id: _Optional[str] = ..., request_id: _Optional[str] = ..., wall_seconds: _Optional[float] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("stage", "step", "total_steps", "train_loss", "val_accuracy")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: int
    total_steps: int
    train_loss: float
    val_accuracy: float
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ...) -> None: ...

class EvaluateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    result: EvaluateResponse
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., result: _Optional[_Union[EvaluateResponse, _Mapping]] = ...) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("slots_total", "slots_busy", "queued", "max_queue", "backends", "devices", "trainer_id")
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    slots_total: int
    slots_busy: int
    queued: int
    max_queue: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedScalarFieldContainer[str]
    trainer_id: str
    def __init__(self, slots_total: _Optional[int] = ..., slots_busy: _Optional[int] = ..., queued: _Optional[int] = ..., max_queue: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[str]] = ..., trainer_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SeedProgram(_message.Message):
    __slots__ = ("name", "code")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    code: str
    def __init__(self, name: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "description", "language", "prompt_header", "program_opening", "seeds", "default_budget", "grammar", "grammar_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_HEADER_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_OPENING_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BUDGET_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    language: ProgramLanguage
    prompt_header: str
    program_opening: str
    seeds: _containers.RepeatedCompositeFieldContainer[SeedProgram]
    default_budget: Budget
    grammar: str
    grammar_version: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., language: _Optional[_Union[ProgramLanguage, str]] = ..., prompt_header: _Optional[str] = ..., program_opening: _Optional[str] = ..., seeds: _Optional[_Iterable[_Union[SeedProgram, _Mapping]]] = ..., default_budget: _Optional[_Union[Budget, _Mapping]] = ..., grammar: _Optional[str] = ..., grammar_version: _Optional[str] = ...) -> None: ...
