from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVAL_STATUS_UNSPECIFIED: _ClassVar[EvalStatus]
    EVAL_STATUS_OK: _ClassVar[EvalStatus]
    EVAL_STATUS_INVALID: _ClassVar[EvalStatus]
    EVAL_STATUS_REJECTED: _ClassVar[EvalStatus]
    EVAL_STATUS_TIMEOUT: _ClassVar[EvalStatus]
    EVAL_STATUS_OOM: _ClassVar[EvalStatus]
    EVAL_STATUS_CRASHED: _ClassVar[EvalStatus]
    EVAL_STATUS_DIVERGED: _ClassVar[EvalStatus]
    EVAL_STATUS_CANCELLED: _ClassVar[EvalStatus]
    EVAL_STATUS_INTERNAL: _ClassVar[EvalStatus]
EVAL_STATUS_UNSPECIFIED: EvalStatus
EVAL_STATUS_OK: EvalStatus
EVAL_STATUS_INVALID: EvalStatus
EVAL_STATUS_REJECTED: EvalStatus
EVAL_STATUS_TIMEOUT: EvalStatus
EVAL_STATUS_OOM: EvalStatus
EVAL_STATUS_CRASHED: EvalStatus
EVAL_STATUS_DIVERGED: EvalStatus
EVAL_STATUS_CANCELLED: EvalStatus
EVAL_STATUS_INTERNAL: EvalStatus

class CurvePoint(_message.Message):
    __slots__ = ("step", "train_loss", "val_accuracy", "val_error")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    step: int
    train_loss: float
    val_accuracy: float
    val_error: float
    def __init__(self, step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., val_error: _Optional[float] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("num_params", "best_val_error", "best_val_accuracy", "test_accuracy", "train_seconds", "steps_completed", "val_curve", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    VAL_CURVE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    num_params: int
    best_val_error: float
    best_val_accuracy: float
    test_accuracy: float
    train_seconds: float
    steps_completed: int
    val_curve: _containers.RepeatedCompositeFieldContainer[CurvePoint]
    extra: _containers.ScalarMap[str, float]
    def __init__(self, num_params: _Optional[int] = ..., best_val_error: _Optional[float] = ..., best_val_accuracy: _Optional[float] = ..., test_accuracy: _Optional[float] = ..., train_seconds: _Optional[float] = ..., steps_completed: _Optional[int] = ..., val_curve: _Optional[_Iterable[_Union[CurvePoint, _Mapping]]] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "max_new_tokens", "stop", "seed", "grammar_version")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_VERSION_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    grammar_version: str
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., grammar_version: _Optional[str] = ...) -> None: ...
