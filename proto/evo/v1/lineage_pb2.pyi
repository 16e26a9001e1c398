import datetime

from evo.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_STATE_UNSPECIFIED: _ClassVar[SearchState]
    SEARCH_STATE_CREATED: _ClassVar[SearchState]
    SEARCH_STATE_RUNNING: _ClassVar[SearchState]
    SEARCH_STATE_STOPPING: _ClassVar[SearchState]
    SEARCH_STATE_STOPPED: _ClassVar[SearchState]
    SEARCH_STATE_FINISHED: _ClassVar[SearchState]
    SEARCH_STATE_FAILED: _ClassVar[SearchState]

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_GENERATING: _ClassVar[RoundState]
    ROUND_STATE_TRAINING: _ClassVar[RoundState]
    ROUND_STATE_TUNING: _ClassVar[RoundState]
    ROUND_STATE_FINISHED: _ClassVar[RoundState]

class CandidateOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_ORIGIN_UNSPECIFIED: _ClassVar[CandidateOrigin]
    CANDIDATE_ORIGIN_SEED: _ClassVar[CandidateOrigin]
    CANDIDATE_ORIGIN_LANGUAGE_MODEL: _ClassVar[CandidateOrigin]
    CANDIDATE_ORIGIN_MUTATION: _ClassVar[CandidateOrigin]

class CandidateState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_STATE_UNSPECIFIED: _ClassVar[CandidateState]
    CANDIDATE_STATE_PENDING: _ClassVar[CandidateState]
    CANDIDATE_STATE_SCORED: _ClassVar[CandidateState]
    CANDIDATE_STATE_DUPLICATE: _ClassVar[CandidateState]
    CANDIDATE_STATE_FAILED: _ClassVar[CandidateState]
    CANDIDATE_STATE_FILTERED: _ClassVar[CandidateState]

class ErrorMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_METRIC_UNSPECIFIED: _ClassVar[ErrorMetric]
    ERROR_METRIC_VAL: _ClassVar[ErrorMetric]
    ERROR_METRIC_TEST: _ClassVar[ErrorMetric]
SEARCH_STATE_UNSPECIFIED: SearchState
SEARCH_STATE_CREATED: SearchState
SEARCH_STATE_RUNNING: SearchState
SEARCH_STATE_STOPPING: SearchState
SEARCH_STATE_STOPPED: SearchState
SEARCH_STATE_FINISHED: SearchState
SEARCH_STATE_FAILED: SearchState
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_GENERATING: RoundState
ROUND_STATE_TRAINING: RoundState
ROUND_STATE_TUNING: RoundState
ROUND_STATE_FINISHED: RoundState
CANDIDATE_ORIGIN_UNSPECIFIED: CandidateOrigin
CANDIDATE_ORIGIN_SEED: CandidateOrigin
CANDIDATE_ORIGIN_LANGUAGE_MODEL: CandidateOrigin
CANDIDATE_ORIGIN_MUTATION: CandidateOrigin
CANDIDATE_STATE_UNSPECIFIED: CandidateState
CANDIDATE_STATE_PENDING: CandidateState
CANDIDATE_STATE_SCORED: CandidateState
CANDIDATE_STATE_DUPLICATE: CandidateState
CANDIDATE_STATE_FAILED: CandidateState
CANDIDATE_STATE_FILTERED: CandidateState
ERROR_METRIC_UNSPECIFIED: ErrorMetric
ERROR_METRIC_VAL: ErrorMetric
ERROR_METRIC_TEST: ErrorMetric

class Search(_message.Message):
    __slots__ = ("id", "name", "task", "method", "config_json", "state", "message", "client_token", "created_at", "updated_at", "num_candidates", "num_rounds", "best_fitness")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    BEST_FITNESS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    task: str
    method: str
    config_json: str
    state: SearchState
    message: str
    client_token: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    num_candidates: int
    num_rounds: int
    best_fitness: float
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., task: _Optional[str] = ..., method: _Optional[str] = ..., config_json: _Optional[str] = ..., state: _Optional[_Union[SearchState, str]] = ..., message: _Optional[str] = ..., client_token: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_candidates: _Optional[int] = ..., num_rounds: _Optional[int] = ..., best_fitness: _Optional[float] = ...) -> None: ...

class CreateSearchRequest(_message.Message):
    __slots__ = ("name", "task", "method", "config_json", "client_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    method: str
    config_json: str
    client_token: str
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., method: _Optional[str] = ..., config_json: _Optional[str] = ..., client_token: _Optional[str] = ...) -> None: ...

class CreateSearchResponse(_message.Message):
    __slots__ = ("search", "created")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    search: Search
    created: bool
    def __init__(self, search: _Optional[_Union[Search, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetSearchRequest(_message.Message):
    __slots__ = ("search_id",)
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    def __init__(self, search_id: _Optional[int] = ...) -> None: ...

class ListSearchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSearchesResponse(_message.Message):
    __slots__ = ("searches", "next_page_token")
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[Search]
    next_page_token: str
    def __init__(self, searches: _Optional[_Iterable[_Union[Search, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSearchStateRequest(_message.Message):
    __slots__ = ("search_id", "state", "message")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    state: SearchState
    message: str
    def __init__(self, search_id: _Optional[int] = ..., state: _Optional[_Union[SearchState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Round(_message.Message):
    __slots__ = ("search_id", "round_index", "state", "adapter_id", "tuning_loss", "started_at", "finished_at")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    TUNING_LOSS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    round_index: int
    state: RoundState
    adapter_id: str
    tuning_loss: float
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., state: _Optional[_Union[RoundState, str]] = ..., adapter_id: _Optional[str] = ..., tuning_loss: _Optional[float] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordRoundRequest(_message.Message):
    __slots__ = ("search_id", "round_index", "state", "adapter_id", "tuning_loss")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    TUNING_LOSS_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    round_index: int
    state: RoundState
    adapter_id: str
    tuning_loss: float
    def __init__(self, search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., state: _Optional[_Union[RoundState, str]] = ..., adapter_id: _Optional[str] = ..., tuning_loss: _Optional[float] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("search_id",)
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    def __init__(self, search_id: _Optional[int] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[Round]
    def __init__(self, rounds: _Optional[_Iterable[_Union[Round, _Mapping]]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("id", "search_id", "round_index", "prompt_index", "text", "parent_ids", "temperature", "target_json", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    search_id: int
    round_index: int
    prompt_index: int
    text: str
    parent_ids: _containers.RepeatedScalarFieldContainer[int]
    temperature: float
    target_json: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., prompt_index: _Optional[int] = ..., text: _Optional[str] = ..., parent_ids: _Optional[_Iterable[int]] = ..., temperature: _Optional[float] = ..., target_json: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordPromptRequest(_message.Message):
    __slots__ = ("search_id", "round_index", "prompt_index", "text", "parent_ids", "temperature", "target_json")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_JSON_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    round_index: int
    prompt_index: int
    text: str
    parent_ids: _containers.RepeatedScalarFieldContainer[int]
    temperature: float
    target_json: str
    def __init__(self, search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., prompt_index: _Optional[int] = ..., text: _Optional[str] = ..., parent_ids: _Optional[_Iterable[int]] = ..., temperature: _Optional[float] = ..., target_json: _Optional[str] = ...) -> None: ...

class RecordPromptResponse(_message.Message):
    __slots__ = ("prompt", "created")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    created: bool
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetPromptRequest(_message.Message):
    __slots__ = ("prompt_id",)
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    prompt_id: int
    def __init__(self, prompt_id: _Optional[int] = ...) -> None: ...

class ProposerSettings(_message.Message):
    __slots__ = ("backend", "model_id", "sampling")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model_id: str
    sampling: _common_pb2.SamplingParams
    def __init__(self, backend: _Optional[str] = ..., model_id: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("status", "message", "metrics", "log_tail", "sandbox_backend", "trainer_id", "task", "budget_steps", "budget_seed", "wall_seconds", "created_at")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BUDGET_STEPS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SEED_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.EvalStatus
    message: str
    metrics: _common_pb2.Metrics
    log_tail: str
    sandbox_backend: str
    trainer_id: str
    task: str
    budget_steps: int
    budget_seed: int
    wall_seconds: float
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[_common_pb2.EvalStatus, str]] = ..., message: _Optional[str] = ..., metrics: _Optional[_Union[_common_pb2.Metrics, _Mapping]] = ..., log_tail: _Optional[str] = ..., sandbox_backend: _Optional[str] = ..., trainer_id: _Optional[str] = ..., task: _Optional[str] = ..., budget_steps: _Optional[int] = ..., budget_seed: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "search_id", "round_index", "origin", "prompt_id", "sample_index", "parent_ids", "name", "code", "code_hash", "normalized_hash", "state", "reason", "duplicate_of_id", "proposer", "adapter_id", "raw_completion", "prompt_tokens", "completion_tokens", "generation_seconds", "created_at", "evaluation", "fitness")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_HASH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_ID_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    id: int
    search_id: int
    round_index: int
    origin: CandidateOrigin
    prompt_id: int
    sample_index: int
    parent_ids: _containers.RepeatedScalarFieldContainer[int]
    name: str
    code: str
    code_hash: str
    normalized_hash: str
    state: CandidateState
    reason: str
    duplicate_of_id: int
    proposer: ProposerSettings
    adapter_id: str
    raw_completion: str
    prompt_tokens: int
    completion_tokens: int
    generation_seconds: float
    created_at: _timestamp_pb2.Timestamp
    evaluation: Evaluation
    fitness: float
    def __init__(self, id: _Optional[int] = ..., search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., origin: _Optional[_Union[CandidateOrigin, str]] = ..., prompt_id: _Optional[int] = ..., sample_index: _Optional[int] = ..., parent_ids: _Optional[_Iterable[int]] = ..., name: _Optional[str] = ..., code: _Optional[str] = ..., code_hash: _Optional[str] = ..., normalized_hash: _Optional[str] = ..., state: _Optional[_Union[CandidateState, str]] = ..., reason: _Optional[str] = ..., duplicate_of_id: _Optional[int] = ..., proposer: _Optional[_Union[ProposerSettings, _Mapping]] = ..., adapter_id: _Optional[str] = ..., raw_completion: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., generation_seconds: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., fitness: _Optional[float] = ...) -> None: ...

class RecordCandidateRequest(_message.Message):
    __slots__ = ("search_id", "round_index", "origin", "prompt_id", "sample_index", "parent_ids", "name", "code", "raw_completion", "proposer", "adapter_id", "prompt_tokens", "completion_tokens", "generation_seconds", "state", "reason")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RAW_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    round_index: int
    origin: CandidateOrigin
    prompt_id: int
    sample_index: int
    parent_ids: _containers.RepeatedScalarFieldContainer[int]
    name: str
    code: str
    raw_completion: str
    proposer: ProposerSettings
    adapter_id: str
    prompt_tokens: int
    completion_tokens: int
    generation_seconds: float
    state: CandidateState
    reason: str
    def __init__(self, search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., origin: _Optional[_Union[CandidateOrigin, str]] = ..., prompt_id: _Optional[int] = ..., sample_index: _Optional[int] = ..., parent_ids: _Optional[_Iterable[int]] = ..., name: _Optional[str] = ..., code: _Optional[str] = ..., raw_completion: _Optional[str] = ..., proposer: _Optional[_Union[ProposerSettings, _Mapping]] = ..., adapter_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., generation_seconds: _Optional[float] = ..., state: _Optional[_Union[CandidateState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordCandidateResponse(_message.Message):
    __slots__ = ("candidate", "created")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    created: bool
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RecordEvaluationRequest(_message.Message):
    __slots__ = ("candidate_id", "evaluation", "state", "reason", "fitness")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: int
    evaluation: Evaluation
    state: CandidateState
    reason: str
    fitness: float
    def __init__(self, candidate_id: _Optional[int] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., state: _Optional[_Union[CandidateState, str]] = ..., reason: _Optional[str] = ..., fitness: _Optional[float] = ...) -> None: ...

class RecordEvaluationResponse(_message.Message):
    __slots__ = ("candidate", "created")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    created: bool
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetCandidateRequest(_message.Message):
    __slots__ = ("candidate_id",)
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    candidate_id: int
    def __init__(self, candidate_id: _Optional[int] = ...) -> None: ...

class ListCandidatesRequest(_message.Message):
    __slots__ = ("search_id", "round_index", "states", "page_size", "page_token", "include_code")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CODE_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    round_index: int
    states: _containers.RepeatedScalarFieldContainer[CandidateState]
    page_size: int
    page_token: str
    include_code: bool
    def __init__(self, search_id: _Optional[int] = ..., round_index: _Optional[int] = ..., states: _Optional[_Iterable[_Union[CandidateState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_code: _Optional[bool] = ...) -> None: ...

class ListCandidatesResponse(_message.Message):
    __slots__ = ("candidates", "next_page_token")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    next_page_token: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPopulationRequest(_message.Message):
    __slots__ = ("search_id", "k")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    k: int
    def __init__(self, search_id: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class GetPopulationResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("candidate_id", "max_depth")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    candidate_id: int
    max_depth: int
    def __init__(self, candidate_id: _Optional[int] = ..., max_depth: _Optional[int] = ...) -> None: ...

class LineageEntry(_message.Message):
    __slots__ = ("candidate", "depth")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    depth: int
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., depth: _Optional[int] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LineageEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LineageEntry, _Mapping]]] = ...) -> None: ...

class GetParetoFrontRequest(_message.Message):
    __slots__ = ("search_id", "error_metric")
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_METRIC_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    error_metric: ErrorMetric
    def __init__(self, search_id: _Optional[int] = ..., error_metric: _Optional[_Union[ErrorMetric, str]] = ...) -> None: ...

class ParetoPoint(_message.Message):
    __slots__ = ("candidate", "num_params", "error")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    num_params: int
    error: float
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., num_params: _Optional[int] = ..., error: _Optional[float] = ...) -> None: ...

class GetParetoFrontResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[ParetoPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[ParetoPoint, _Mapping]]] = ...) -> None: ...

class GetRoundStatsRequest(_message.Message):
    __slots__ = ("search_id",)
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    search_id: int
    def __init__(self, search_id: _Optional[int] = ...) -> None: ...

class RoundStats(_message.Message):
    __slots__ = ("round_index", "candidates", "pending", "scored", "duplicate", "failed", "filtered", "best_fitness", "best_fitness_so_far", "min_params", "best_val_error", "prompt_tokens", "completion_tokens")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    BEST_FITNESS_FIELD_NUMBER: _ClassVar[int]
    BEST_FITNESS_SO_FAR_FIELD_NUMBER: _ClassVar[int]
    MIN_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    candidates: int
    pending: int
    scored: int
    duplicate: int
    failed: int
    filtered: int
    best_fitness: float
    best_fitness_so_far: float
    min_params: int
    best_val_error: float
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, round_index: _Optional[int] = ..., candidates: _Optional[int] = ..., pending: _Optional[int] = ..., scored: _Optional[int] = ..., duplicate: _Optional[int] = ..., failed: _Optional[int] = ..., filtered: _Optional[int] = ..., best_fitness: _Optional[float] = ..., best_fitness_so_far: _Optional[float] = ..., min_params: _Optional[int] = ..., best_val_error: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GetRoundStatsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStats]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundStats, _Mapping]]] = ...) -> None: ...
