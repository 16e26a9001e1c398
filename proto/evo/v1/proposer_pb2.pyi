from evo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "num_samples", "sampling", "adapter_id", "program_opening", "grammar", "avoid_normalized_hashes")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_OPENING_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    AVOID_NORMALIZED_HASHES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    num_samples: int
    sampling: _common_pb2.SamplingParams
    adapter_id: str
    program_opening: str
    grammar: str
    avoid_normalized_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., num_samples: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., adapter_id: _Optional[str] = ..., program_opening: _Optional[str] = ..., grammar: _Optional[str] = ..., avoid_normalized_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("raw_completion", "program", "parse_error", "prompt_tokens", "completion_tokens", "latency_seconds", "finish_reason")
    RAW_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    raw_completion: str
    program: str
    parse_error: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    finish_reason: str
    def __init__(self, raw_completion: _Optional[str] = ..., program: _Optional[str] = ..., parse_error: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_seconds: _Optional[float] = ..., finish_reason: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("samples", "backend", "model_id", "adapter_id")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    backend: str
    model_id: str
    adapter_id: str
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., backend: _Optional[str] = ..., model_id: _Optional[str] = ..., adapter_id: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProposerCapabilities(_message.Message):
    __slots__ = ("prompt_tuning", "adapters", "batched_sampling", "max_context_tokens", "grammar")
    PROMPT_TUNING_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    prompt_tuning: bool
    adapters: bool
    batched_sampling: bool
    max_context_tokens: int
    grammar: str
    def __init__(self, prompt_tuning: _Optional[bool] = ..., adapters: _Optional[bool] = ..., batched_sampling: _Optional[bool] = ..., max_context_tokens: _Optional[int] = ..., grammar: _Optional[str] = ...) -> None: ...

class ProposerInfo(_message.Message):
    __slots__ = ("backend", "model_id", "capabilities", "adapter_ids")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_IDS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model_id: str
    capabilities: ProposerCapabilities
    adapter_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backend: _Optional[str] = ..., model_id: _Optional[str] = ..., capabilities: _Optional[_Union[ProposerCapabilities, _Mapping]] = ..., adapter_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainSoftPromptRequest(_message.Message):
    __slots__ = ("examples", "num_virtual_tokens", "epochs", "batch_size", "learning_rate", "seed", "init_adapter_id")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_VIRTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedScalarFieldContainer[str]
    num_virtual_tokens: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    init_adapter_id: str
    def __init__(self, examples: _Optional[_Iterable[str]] = ..., num_virtual_tokens: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., init_adapter_id: _Optional[str] = ...) -> None: ...

class TrainSoftPromptResponse(_message.Message):
    __slots__ = ("adapter_id", "epoch_losses", "final_loss", "num_examples", "train_seconds")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_LOSSES_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    epoch_losses: _containers.RepeatedScalarFieldContainer[float]
    final_loss: float
    num_examples: int
    train_seconds: float
    def __init__(self, adapter_id: _Optional[str] = ..., epoch_losses: _Optional[_Iterable[float]] = ..., final_loss: _Optional[float] = ..., num_examples: _Optional[int] = ..., train_seconds: _Optional[float] = ...) -> None: ...
